//! Bad input gets a documented error code, and the node keeps serving everyone else.

use std::time::Duration;

use pgpush_tests::{Edge, EdgeOptions, TestPostgres, WsClient, http, ws::WsEvent};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::SOON;

/// A bystander subscribed to `canary` still receives after whatever just happened.
async fn bystander_still_served(pg: &TestPostgres, bystander: &mut WsClient, n: u64) {
    pg.notify("canary", &n.to_string()).await;
    let frame = bystander.next_message(SOON).await;
    assert_eq!(frame["data"], n, "bystander after step {n}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_answered_and_others_keep_receiving() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--max-message-bytes", "65536"]),
    )
    .await;
    let mut bystander = WsClient::connect(&edge.ws_url("/v1/ws?channel=canary")).await;
    assert_eq!(bystander.next_json(SOON).await["type"], "subscribed");
    let address = edge.address();

    // Ephemeral payloads stop at NOTIFY's 7,999 bytes.
    let response = http::post(address, "/v1/publish/big?mode=ephemeral", "x".repeat(8000)).await;
    assert_eq!(response.status, 413);
    assert_eq!(response.json()["error"], "too_large");
    let response = http::post(address, "/v1/publish/big?mode=ephemeral", "x".repeat(7999)).await;
    assert_eq!(response.status, 200, "{}", response.text());
    // Above the body cap, refused before anything is read into memory.
    let response = http::post(
        address,
        "/v1/publish/big?mode=ephemeral",
        "x".repeat(70_000),
    )
    .await;
    assert_eq!(response.status, 413);
    assert_eq!(response.json()["error"], "too_large");
    let response = http::post(address, "/v1/publish/big?mode=loud", "x").await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"], "bad_request");
    let response = http::post(address, "/v1/publish/big?mode=ephemeral", vec![0xff, 0xfe]).await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"], "bad_payload");
    let response = http::post(address, "/v1/publish/pgpush_internal?mode=ephemeral", "x").await;
    assert_eq!(response.status, 403);
    assert_eq!(response.json()["error"], "forbidden");
    bystander_still_served(&pg, &mut bystander, 1).await;

    // Unknown routes and methods: JSON errors.
    for (method, path, status, code) in [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/v1/publish/x", 405, "method_not_allowed"),
        ("POST", "/v1/stats", 405, "method_not_allowed"),
        ("GET", "/v1/ws", 400, "bad_request"),
        ("GET", "/v1/sse", 400, "bad_request"),
    ] {
        let response = http::request(address, method.parse().unwrap(), path, &[], "").await;
        assert_eq!(response.status, status, "{method} {path}");
        assert_eq!(response.headers["content-type"], "application/json");
        assert_eq!(response.json()["error"], code, "{method} {path}");
        assert!(
            response.json()["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
    }
    bystander_still_served(&pg, &mut bystander, 2).await;

    // Malformed frames get an error frame and the connection survives.
    let mut client = WsClient::connect(&edge.ws_url("/v1/ws")).await;
    for (frame, code) in [
        ("not json", "bad_frame"),
        ("[1,2]", "bad_frame"),
        (r#"{"channels":["a"]}"#, "bad_frame"),
        (r#"{"op":"subscribe"}"#, "bad_frame"),
        (r#"{"op":"subscribe","channels":"a"}"#, "bad_frame"),
        (r#"{"op":"publish","channel":"a"}"#, "bad_frame"),
        (r#"{"op":"fly","ref":"x"}"#, "unknown_op"),
        (
            r#"{"op":"subscribe","channels":["pgpush_wake"]}"#,
            "forbidden",
        ),
        (
            r#"{"op":"publish","channel":"pgpush_wake","data":1}"#,
            "forbidden",
        ),
    ] {
        client.send(Message::text(frame)).await;
        let reply = client.next_json(SOON).await;
        assert_eq!(reply["type"], "error", "{frame}: {reply}");
        assert_eq!(reply["code"], code, "{frame}: {reply}");
    }
    client.send(Message::binary(vec![1, 2, 3])).await;
    let reply = client.next_json(SOON).await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("bad_frame"))
    );
    client.send_json(json!({"op": "ping", "ref": 9})).await;
    assert_eq!(
        client.next_json(SOON).await,
        json!({"type": "pong", "ref": 9})
    );
    let big = json!({"op": "publish", "channel": "c", "mode": "ephemeral", "data": "x".repeat(8000), "ref": "b"});
    client.send_json(big).await;
    let reply = client.next_json(SOON).await;
    assert_eq!(reply["code"], "too_large", "{reply}");
    bystander_still_served(&pg, &mut bystander, 3).await;

    // A frame above the cap closes the connection with 1009.
    client.send(Message::text("x".repeat(70_000))).await;
    match client.next_event(SOON).await {
        WsEvent::Close(Some((code, _))) => assert_eq!(code, 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    bystander_still_served(&pg, &mut bystander, 4).await;

    // A handshake without a key is refused as plain HTTP.
    let response = http::request(
        address,
        "GET".parse().unwrap(),
        "/v1/ws",
        &[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "13"),
        ],
        "",
    )
    .await;
    assert_eq!(response.status, 400);
    bystander_still_served(&pg, &mut bystander, 5).await;
    bystander.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_decode_strictly_on_every_route_and_a_non_ascii_last_event_id_is_a_bad_cursor() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let address = edge.address();
    let code = |response: &http::HttpResponse| response.json()["error"].clone();
    // Not UTF-8 after decoding, or a malformed escape: bad_channel, in a query and in a path.
    for path in [
        "/v1/sse?channel=%FF",
        "/v1/poll?channel=%FF",
        "/v1/poll?channel=a%ZZ",
        "/v1/ws?channel=%C3",
    ] {
        let response = http::get(address, path).await;
        assert_eq!(
            (response.status.as_u16(), code(&response)),
            (400, json!("bad_channel")),
            "{path}: {}",
            response.text()
        );
    }
    for path in ["/v1/publish/%FF", "/v1/publish/a%ZZ"] {
        let response = http::post(address, path, "{}").await;
        assert_eq!(
            (response.status.as_u16(), code(&response)),
            (400, json!("bad_channel")),
            "{path}: {}",
            response.text()
        );
    }
    // Another parameter that does not decode is a bad request, not silently something else.
    let response = http::get(address, "/v1/poll?channel=a&cursor=%FF").await;
    assert_eq!(
        (response.status.as_u16(), code(&response)),
        (400, json!("bad_request"))
    );
    // The Hippie routes answer the same status (in their plain-text form).
    for path in [
        "/_hippie/poll/%FF",
        "/_hippie/poll/a%ZZ",
        "/_hippie/poll/a?client_id=%ZZ",
    ] {
        let response = http::get(address, path).await;
        assert_eq!(response.status, 400, "{path}: {}", response.text());
    }
    let response = http::post(address, "/_hippie/pub/a", "message=%ZZ").await;
    assert_eq!(response.status, 400, "{}", response.text());
    // U+FFFD itself is a channel like any other; %FF never becomes it.
    let mut sse = pgpush_tests::SseClient::connect(address, "/v1/sse?channel=%EF%BF%BD", &[]).await;
    assert_eq!(sse.next_event(SOON).await.unwrap().event, "subscribed");
    let published = http::post(address, "/v1/publish/%EF%BF%BD?mode=ephemeral", "1").await;
    assert_eq!(published.status, 200, "{}", published.text());
    assert_eq!(sse.next_message(SOON).await.1["channel"], "\u{fffd}");

    // A Last-Event-ID that is not ASCII is no cursor: bad_cursor, not a stream without replay.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = "GET /v1/sse?channel=a&since=1.0000000000000000 HTTP/1.1\r\nHost: x\r\n\
                   Connection: close\r\nLast-Event-ID: caf\u{e9}\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(SOON, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"bad_cursor\""), "{answer}");
}
