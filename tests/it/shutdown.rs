//! SIGTERM: clients are told to reconnect (WebSocket 1012, SSE `retry:`), the process exits 0.

use std::time::{Duration, Instant};

use pgpush_tests::{Edge, EdgeOptions, SseClient, TestPostgres, WsClient};

use crate::SOON;

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_tells_clients_and_exits_zero() {
    let pg = TestPostgres::start();
    let mut edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--shutdown-timeout", "5s", "--drain-window", "0s"]),
    )
    .await;
    let mut ws = WsClient::connect(&edge.ws_url("/v1/ws?channel=a")).await;
    assert_eq!(ws.next_json(SOON).await["type"], "subscribed");
    let mut sse = SseClient::connect(edge.address(), "/v1/sse?channel=a", &[]).await;
    sse.next_event(SOON).await.expect("subscribed");

    let started = Instant::now();
    edge.signal("TERM");
    assert_eq!(ws.expect_close(SOON).await, 1012);
    let last = sse.next_event(SOON).await.expect("a last event with retry");
    assert!(last.retry.is_some(), "{last:?}");
    assert!(sse.next_event(SOON).await.is_none());
    assert!(sse.ended(), "the SSE stream ended");
    let status = edge.wait_exit(Duration::from_secs(8)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    // Nothing accepts connections any more.
    assert!(
        tokio::net::TcpStream::connect(edge.address())
            .await
            .is_err()
    );
}
