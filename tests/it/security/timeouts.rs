//! Slow and silent sockets: trickled request heads and half-open connections are cut by the
//! timeouts.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_and_silent_sockets_are_cut_by_the_timeouts() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&[
            "--handshake-timeout",
            "2s",
            "--ping-interval",
            "1s",
            "--idle-timeout",
            "20s",
        ]),
    )
    .await;
    // Headers trickled one byte a second: cut once the handshake timeout passes.
    let mut slow = TcpStream::connect(edge.address()).await.unwrap();
    let started = std::time::Instant::now();
    let mut cut = false;
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa".iter() {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        let mut buffer = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => {
                // hyper may answer 408 before closing.
            }
            Err(_) => {}
        }
    }
    assert!(cut, "a trickling client was never cut");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut after {:?}",
        started.elapsed()
    );

    // A WebSocket client that stops answering pings is closed after two intervals.
    let mut silent = WsClient::connect(&edge.ws_url("/v1/ws?channel=c")).await;
    assert_eq!(silent.next_json(SOON).await["type"], "subscribed");
    // Not reading is not answering pings (the client answers them as it reads).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut ended = false;
    let deadline = tokio::time::Instant::now() + SOON;
    while tokio::time::Instant::now() < deadline {
        match silent.next_event(Duration::from_secs(1)).await {
            WsEvent::Close(_) | WsEvent::Ended => {
                ended = true;
                break;
            }
            _ => {}
        }
    }
    assert!(ended, "a silent WebSocket client was never closed");

    // Every client socket carries keepalive probes, so a peer that vanished without a FIN
    // (a half-open socket) is dropped by the kernel within the idle timeout.
    let _held = TcpStream::connect(edge.address()).await.unwrap();
    let port = edge.address().port().to_string();
    let output = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established", "sport", "=", &format!(":{port}")])
        .output()
        .unwrap_or_else(|_| panic!("ss not found; install it with: scripts/test --install-only (apt-get install -y iproute2)"));
    let sockets = String::from_utf8_lossy(&output.stdout);
    assert!(
        sockets.contains("timer:(keepalive"),
        "no keepalive timer on the server's sockets:\n{sockets}"
    );
}
