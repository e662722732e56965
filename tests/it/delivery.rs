//! NOTIFY from any session reaches WebSocket and SSE subscribers of that channel, and no one else.

use std::time::Duration;

use pgpush_tests::{Edge, SseClient, TestPostgres, WsClient, http, ws::encode};
use serde_json::json;

use crate::SOON;

/// Payloads whose bytes must survive exactly: key order, whitespace, float digits.
const JSON_PAYLOADS: &[&str] = &[
    r#"{"z": 1, "a": [1.10, 2e5, -0.0], "s": "x\"y"}"#,
    "{\n  \"pretty\" : true\n}",
    "3.14159265358979323846264338327950288",
    "[]",
];

/// Extracts the raw JSON text of `"data":` from an envelope, to compare bytes, not values.
fn raw_data(envelope: &str) -> &str {
    let start = envelope.find(r#""data":"#).expect("data field") + r#""data":"#.len();
    let end = envelope.rfind('}').expect("closing brace");
    let rest = &envelope[start..end];
    // A cursor would follow the data; ephemeral messages have none.
    rest.strip_suffix(r#","cursor":"#).unwrap_or(rest)
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_reaches_websocket_and_sse_subscribers_of_that_channel_only() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let mut ws_a = WsClient::connect(&edge.ws_url("/v1/ws?channel=news")).await;
    let subscribed = ws_a.next_json(SOON).await;
    assert_eq!(
        (&subscribed["type"], &subscribed["channels"]),
        (&json!("subscribed"), &json!(["news"]))
    );
    // The node serves once its durable reader has started: the connection's cursor is there.
    assert!(subscribed["cursor"].is_string(), "{subscribed}");
    let mut ws_b = WsClient::connect(&edge.ws_url("/v1/ws")).await;
    ws_b.subscribe(&["other"]).await;
    let mut sse = SseClient::connect(edge.address(), "/v1/sse?channel=news", &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    let subscribed = sse.next_event(SOON).await.expect("subscribed event");
    assert_eq!(subscribed.event, "subscribed");
    assert_eq!(subscribed.json()["channels"], json!(["news"]));

    let mut expected: Vec<String> = JSON_PAYLOADS.iter().map(|p| p.to_string()).collect();
    expected.push(r#""not json: {""#.into());
    expected.push(r#""""#.into());
    for payload in JSON_PAYLOADS.iter().copied().chain(["not json: {", ""]) {
        pg.notify("news", payload).await;
    }
    pg.notify("other", "marker").await;

    for want in &expected {
        let frame = ws_a.next_message(SOON).await;
        assert_eq!(frame["channel"], "news");
        assert!(
            frame.get("cursor").is_none(),
            "ephemeral messages carry no cursor: {frame}"
        );
        let (id, data) = sse.next_message(SOON).await;
        assert_eq!(id, None);
        assert_eq!(data["channel"], "news");
        assert_eq!(
            data,
            json!({"channel": "news", "data": serde_json::from_str::<serde_json::Value>(want).unwrap()})
        );
    }
    // `other` got its marker and nothing of `news`.
    let frame = ws_b.next_message(SOON).await;
    assert_eq!(
        frame,
        json!({"type": "message", "channel": "other", "data": "marker"})
    );
    ws_b.expect_silence(Duration::from_millis(300)).await;
    ws_a.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_payloads_arrive_byte_for_byte() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    // Read raw frames to compare bytes, not parsed values.
    let (mut raw, _) = tokio_tungstenite::connect_async(edge.ws_url("/v1/ws?channel=bytes"))
        .await
        .unwrap();
    use futures_util::StreamExt;
    let mut sse = SseClient::connect(edge.address(), "/v1/sse?channel=bytes", &[]).await;
    sse.next_event(SOON).await.expect("subscribed");
    // Wait for the WebSocket subscription too.
    let subscribed = raw.next().await.unwrap().unwrap();
    assert!(subscribed.to_text().unwrap().contains("subscribed"));

    for payload in JSON_PAYLOADS {
        pg.notify("bytes", payload).await;
    }
    for payload in JSON_PAYLOADS {
        let frame = tokio::time::timeout(SOON, raw.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let text = frame.to_text().unwrap().to_owned();
        assert_eq!(raw_data(&text), *payload, "websocket frame {text}");
        let event = sse.next_event(SOON).await.expect("sse event");
        assert_eq!(raw_data(&event.data), *payload, "sse data {:?}", event.data);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_names_keep_case_spaces_quotes_and_non_ascii() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let names = [
        "Foo",
        "foo",
        "with space",
        "quo\"te",
        "semi;colon -- x",
        "caf\u{e9} \u{2615}",
        &"x".repeat(63),
    ];
    let mut clients = Vec::new();
    for name in names {
        let mut client =
            WsClient::connect(&edge.ws_url(&format!("/v1/ws?channel={}", encode(name)))).await;
        let reply = client.next_json(SOON).await;
        assert_eq!(reply["type"], "subscribed", "{name}: {reply}");
        assert_eq!(reply["channels"], json!([name]));
        clients.push(client);
    }
    for name in names {
        pg.notify(name, &format!("to {name}")).await;
    }
    for (name, client) in names.iter().zip(clients.iter_mut()) {
        let frame = client.next_message(SOON).await;
        assert_eq!(frame["channel"], *name);
        assert_eq!(frame["data"], format!("to {name}"));
        client.expect_silence(Duration::from_millis(100)).await;
    }
    assert_eq!(edge.stats().await.channels_listened, names.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_channel_names_are_rejected_with_bad_channel() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let too_long = "x".repeat(64);
    // 62 ASCII bytes and one two-byte character: 63 characters but 64 bytes.
    let too_long_utf8 = format!("{}\u{e9}", "x".repeat(62));
    for name in [too_long.as_str(), too_long_utf8.as_str(), "", "nul\0byte"] {
        let response =
            http::get(edge.address(), &format!("/v1/sse?channel={}", encode(name))).await;
        assert_eq!(response.status, 400, "{name:?}");
        assert_eq!(response.json()["error"], "bad_channel", "{name:?}");
        let response = http::post(
            edge.address(),
            &format!("/v1/publish/{}?mode=ephemeral", encode(name)),
            "x",
        )
        .await;
        assert_eq!(response.status, 400, "{name:?}");
        assert_eq!(response.json()["error"], "bad_channel", "{name:?}");
        let mut client = WsClient::connect(&edge.ws_url("/v1/ws")).await;
        client
            .send_json(json!({"op": "subscribe", "channels": [name], "ref": "r"}))
            .await;
        let reply = client.next_json(SOON).await;
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["code"], "bad_channel", "{name:?}: {reply}");
        assert_eq!(reply["ref"], "r");
    }
    assert_eq!(edge.stats().await.channels_listened, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn own_publish_reaches_every_subscriber_exactly_once() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let url = edge.ws_url("/v1/ws?channel=room");
    let mut publisher = WsClient::connect(&url).await;
    let mut publisher_second_tab = WsClient::connect(&url).await;
    let mut other = WsClient::connect(&url).await;
    for client in [&mut publisher, &mut publisher_second_tab, &mut other] {
        assert_eq!(client.next_json(SOON).await["type"], "subscribed");
    }
    let mut sse = SseClient::connect(edge.address(), "/v1/sse?channel=room", &[]).await;
    sse.next_event(SOON).await.expect("subscribed");

    // Publish 1 over the WebSocket and wait for its ack, so the publishes are ordered.
    publisher
        .send_json(json!({"op": "publish", "channel": "room", "data": {"n": 1}, "mode": "ephemeral", "ref": "p1"}))
        .await;
    let mut seen = Vec::new();
    loop {
        let frame = publisher.next_json(SOON).await;
        match frame["type"].as_str() {
            Some("ack") => {
                assert_eq!(frame, json!({"type": "ack", "ref": "p1"}));
                break;
            }
            Some("message") => seen.push(frame["data"]["n"].as_i64().unwrap()),
            _ => panic!("unexpected {frame}"),
        }
    }
    let response = http::post(
        edge.address(),
        "/v1/publish/room?mode=ephemeral",
        r#"{"n": 2}"#,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({"channel": "room", "mode": "ephemeral"})
    );
    pg.notify("room", r#"{"n": 3}"#).await;
    while seen.len() < 3 {
        seen.push(
            publisher.next_message(SOON).await["data"]["n"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(seen, [1, 2, 3]);
    for client in [&mut publisher_second_tab, &mut other] {
        for n in 1..=3 {
            assert_eq!(client.next_message(SOON).await["data"]["n"], n);
        }
    }
    for n in 1..=3 {
        assert_eq!(sse.next_message(SOON).await.1["data"]["n"], n);
    }
    for client in [&mut publisher, &mut publisher_second_tab, &mut other] {
        client.expect_silence(Duration::from_millis(300)).await;
    }
    assert!(sse.next_event(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_stats() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    assert_eq!(http::get(edge.address(), "/healthz").await.status, 200);
    pgpush_tests::wait_until(SOON, "ready", || async { edge.ready_status().await == 200 }).await;
    let mut client = WsClient::connect(&edge.ws_url("/v1/ws?channel=a&channel=b")).await;
    client.next_json(SOON).await;
    pg.notify("a", "1").await;
    client.next_message(SOON).await;
    let stats = edge.stats().await;
    assert_eq!(stats.listener, "up");
    assert_eq!(stats.connections.websocket, 1);
    assert_eq!(stats.subscriptions, 2);
    assert_eq!(stats.channels_listened, 2);
    assert_eq!(stats.messages_in, 1);
    assert_eq!(stats.messages_out, 1);
    drop(client);
    pgpush_tests::wait_until(SOON, "gauges back to zero", || async {
        let stats = edge.stats().await;
        stats.connections.total == 0 && stats.subscriptions == 0 && stats.channels_listened == 0
    })
    .await;
}
