//! Hippie's wire formats, byte for byte: MXHR over a raw socket, long poll, WebSocket, stats.

use std::time::{Duration, Instant};

use pgpush_tests::{
    Edge, EdgeOptions, TestPostgres, WsClient, http,
    raw::{MxhrClient, RawResponse},
};
use serde_json::{Value, json};

use crate::SOON;

#[tokio::test(flavor = "multi_thread")]
async fn mxhr_stream_bytes_over_a_raw_socket() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(&pg.url(), EdgeOptions::args(&["--hippie-keepalive", "0"])).await;
    let mut response =
        RawResponse::get(edge.address(), "/_hippie/mxhr/mychannel?client_id=c1", &[]).await;
    assert_eq!(response.status_line, "HTTP/1.1 200 OK");
    let content_type = response.header("Content-Type").unwrap().to_owned();
    let boundary = content_type
        .strip_prefix("multipart/mixed; boundary=\"")
        .and_then(|b| b.strip_suffix('"'))
        .unwrap_or_else(|| panic!("quoted boundary expected: {content_type}"))
        .to_owned();
    assert_eq!(boundary.len(), 8);
    assert!(
        boundary.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{boundary}"
    );
    assert_eq!(response.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(
        response.header("Cache-Control"),
        Some("no-cache, must-revalidate")
    );
    assert_eq!(response.header("Pragma"), Some("no-cache"));
    assert_eq!(
        response.header("Expires"),
        Some("Thu, 01 Jan 1970 00:00:00 GMT")
    );
    let last_modified = response.header("Last-Modified").expect("Last-Modified");
    assert!(
        last_modified.ends_with(" GMT") && last_modified.contains(','),
        "RFC 1123 date: {last_modified}"
    );

    // First chunk: the opening boundary alone.
    assert_eq!(
        response.next_chunk(SOON).await.unwrap(),
        format!("--{boundary}\n").into_bytes()
    );
    // Then one chunk per message, set_client_id first.
    let part = |json: &str| {
        format!("Content-Type: application/json\n\n{json}\n--{boundary}\n").into_bytes()
    };
    assert_eq!(
        response.next_chunk(SOON).await.unwrap(),
        part(r#"{"type":"hippie.pipe.set_client_id","client_id":"c1"}"#)
    );
    let payloads = [
        r#"{"type": "mychannel", "n": 1.50}"#,
        "[1, 2]",
        "\"a string\"",
    ];
    for payload in payloads {
        pg.notify("mychannel", payload).await;
        assert_eq!(response.next_chunk(SOON).await.unwrap(), part(payload));
    }
    pg.notify("mychannel", "plain\ntext").await;
    assert_eq!(
        response.next_chunk(SOON).await.unwrap(),
        part(r#""plain\ntext""#)
    );
    // The server never closes the stream, and no CR ever appears in the body.
    assert!(
        response
            .next_chunk(Duration::from_millis(500))
            .await
            .is_none()
    );
    assert!(!response.body_seen.contains(&b'\r'), "CR in the MXHR body");
}

#[tokio::test(flavor = "multi_thread")]
async fn long_poll_handshake_delivery_and_hold_timeout() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(&pg.url(), EdgeOptions::args(&["--hippie-poll-hold", "1s"])).await;
    let address = edge.address();

    // No client_id: 302 to the same path with a fresh, unguessable id; no queue yet.
    let response = http::get(address, "/_hippie/poll/news?_=12345").await;
    assert_eq!(response.status, 302);
    let location = response.headers["location"].to_str().unwrap().to_owned();
    let prefix = format!("http://{address}/_hippie/poll/news?client_id=");
    assert!(location.starts_with(&prefix), "{location}");
    let client_id = &location[prefix.len()..];
    assert_eq!(client_id.len(), 32);
    assert!(
        client_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{client_id}"
    );
    assert_eq!(
        edge.stats().await.hippie_queues,
        0,
        "the redirect creates no queue"
    );
    let second = http::get(address, "/_hippie/poll/news").await;
    assert_ne!(
        second.headers["location"], response.headers["location"],
        "ids are not reused"
    );

    // The first poll answers at once with set_client_id.
    let path = format!("/_hippie/poll/news?client_id={client_id}&_=1");
    let first = http::get(address, &path).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(first.headers["cache-control"], "no-cache, must-revalidate");
    assert_eq!(
        first.json(),
        json!([{"type": "hippie.pipe.set_client_id", "client_id": client_id}])
    );

    // A NOTIFY while no poll is pending is delivered by the next poll.
    pg.notify("news", r#"{"headline": "first"}"#).await;
    pg.notify("news", "second").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = http::get(address, &path).await;
    assert_eq!(next.body.as_ref(), br#"[{"headline": "first"},"second"]"#);

    // A pending poll is answered by the next NOTIFY.
    let waiting = tokio::spawn({
        let path = path.clone();
        async move { http::get(address, &path).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    pg.notify("news", "3").await;
    assert_eq!(waiting.await.unwrap().json(), json!([3]));

    // Nothing pending: [] after the hold timeout.
    let started = Instant::now();
    let empty = http::get(address, &path).await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.body.as_ref(), b"[]");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_frames_keepalive_pings_and_stats() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(&pg.url(), EdgeOptions::args(&["--hippie-keepalive", "1s"])).await;
    let mut ws = WsClient::connect(&edge.ws_url("/_hippie/ws/room?client_id=w1")).await;
    assert_eq!(
        ws.next_json(SOON).await,
        json!({"type": "hippie.pipe.set_client_id", "client_id": "w1"})
    );
    pg.notify("room", r#"{"type": "room", "x": 1}"#).await;
    let frame = next_non_ping(&mut ws).await;
    assert_eq!(frame, json!({"type": "room", "x": 1}));
    // Keepalive pings carry a float epoch time.
    let ping = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let frame = ws.next_json(SOON).await;
            if frame["type"] == "ping" {
                return frame;
            }
        }
    })
    .await
    .expect("a ping within 3 s");
    let time = ping["time"].as_f64().expect("float time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - time).abs() < 5.0, "{time} vs {now}");

    let mut mxhr = MxhrClient::open(edge.address(), "/_hippie/mxhr/room?client_id=m1").await;
    let ping = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let text = mxhr.next_text(SOON).await.expect("part");
            if text.contains(r#""type":"ping""#) {
                return text;
            }
        }
    })
    .await
    .expect("an MXHR ping within 3 s");
    assert!(ping.starts_with(r#"{"type":"ping","time":"#), "{ping}");

    let stats = http::get(edge.address(), "/_hippie/stats").await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        stats.text(),
        "current_subscribers: 2\ntotal_subscribers: 2\nevents_published: 0\n"
    );
}

async fn next_non_ping(ws: &mut WsClient) -> Value {
    tokio::time::timeout(SOON, async {
        loop {
            let frame = ws.next_json(SOON).await;
            if frame["type"] != "ping" {
                return frame;
            }
        }
    })
    .await
    .expect("a message within 10 s")
}

#[tokio::test(flavor = "multi_thread")]
async fn prefix_can_move_and_routes_can_be_turned_off() {
    let pg = TestPostgres::start();
    let moved =
        Edge::start_with(&pg.url(), EdgeOptions::args(&["--hippie-prefix", "/push/"])).await;
    let response = http::get(moved.address(), "/push/poll/a?client_id=x").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()[0]["type"], "hippie.pipe.set_client_id");
    assert_eq!(
        http::get(moved.address(), "/_hippie/poll/a?client_id=x")
            .await
            .status,
        404
    );

    let off = Edge::start_with(&pg.url(), EdgeOptions::args(&["--no-hippie"])).await;
    for path in [
        "/_hippie/poll/a?client_id=x",
        "/_hippie/stats",
        "/_hippie/mxhr/a",
    ] {
        let response = http::get(off.address(), path).await;
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.json()["error"], "not_found");
    }
    // The native protocol is unaffected.
    assert_eq!(http::get(off.address(), "/healthz").await.status, 200);
}
