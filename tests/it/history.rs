//! History: the last durable messages of a channel over HTTP, on any node, oldest first, paged
//! back with `before`, and followed live from its cursor without a gap or a duplicate.

use pgpush_tests::{
    Edge, SseClient, TestPostgres, WsClient,
    durable::{Writer, position_of, publish_numbers},
    http, wait_until,
};
use serde_json::Value;

use crate::SOON;

fn numbers(reply: &Value) -> Vec<i64> {
    reply["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["data"].as_i64().expect("a number"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_over_http_pages_back_and_continues_live_without_a_gap() {
    let pg = TestPostgres::start();
    let a = Edge::start(&pg.url()).await;
    let b = Edge::start(&pg.url()).await;
    publish_numbers(&pg, "room", 1..=120).await;
    publish_numbers(&pg, "elsewhere", 1..=5).await;
    wait_until(SOON, "node B caught up", || async {
        b.stats().await.durable_head == a.stats().await.durable_head
            && http::get(b.address(), "/v1/history?channel=room&limit=1000")
                .await
                .json()["messages"]
                .as_array()
                .is_some_and(|m| m.len() == 120)
    })
    .await;

    // The last 50 by default, oldest first, each as on the WebSocket.
    let latest = http::get(b.address(), "/v1/history?channel=room").await;
    assert_eq!(latest.status, 200);
    let latest = latest.json();
    assert_eq!(numbers(&latest), (71..=120).collect::<Vec<_>>());
    let first = &latest["messages"][0];
    assert_eq!(first["type"], "message");
    assert_eq!(first["channel"], "room");
    // Paged back with the oldest one's cursor.
    let before = first["cursor"].as_str().unwrap();
    let older = http::get(
        a.address(),
        &format!("/v1/history?channel=room&limit=30&before={before}"),
    )
    .await
    .json();
    assert_eq!(numbers(&older), (41..=70).collect::<Vec<_>>());

    // From the answer's cursor, live: nothing missed, nothing twice, while publishing goes on.
    let writer = Writer::start(pg.url(), "room", 100);
    let cursor = latest["cursor"].as_str().unwrap().to_owned();
    assert!(
        position_of(&cursor) >= position_of(latest["messages"][49]["cursor"].as_str().unwrap())
    );
    let mut ws = WsClient::connect(&a.ws_url(&format!("/v1/ws?channel=room&since={cursor}"))).await;
    let mut next = 121;
    while next < 200 {
        let frame = ws.next_json(SOON).await;
        if frame["type"] == "subscribed" {
            continue;
        }
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["data"]["n"].as_i64().map(|n| n + 120), Some(next));
        next += 1;
    }
    writer.stop().await;

    // Bad input gets its documented code.
    for (query, code) in [
        ("channel=room&limit=0", "bad_request"),
        ("channel=room&limit=1001", "bad_request"),
        ("channel=room&channel=elsewhere", "bad_request"),
        ("limit=5", "bad_request"),
        ("channel=room&before=forged", "bad_cursor"),
        ("channel=pgpush_wake", "forbidden"),
    ] {
        let reply = http::get(a.address(), &format!("/v1/history?{query}")).await;
        assert_eq!(reply.json()["error"], code, "{query}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn history_on_subscribe_then_live_on_every_transport() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    publish_numbers(&pg, "room", 1..=30).await;
    publish_numbers(&pg, "other", 1..=3).await;
    wait_until(SOON, "the node caught up", || async {
        http::get(edge.address(), "/v1/history?channel=room&limit=1000")
            .await
            .json()["messages"]
            .as_array()
            .is_some_and(|m| m.len() == 30)
    })
    .await;

    // WebSocket: the subscribe frame's `history`, and `history=` at connect.
    let mut framed = WsClient::connect(&edge.ws_url("/v1/ws")).await;
    framed
        .send_json(serde_json::json!({"op":"subscribe","channels":["room"],"history":10}))
        .await;
    let mut at_connect = WsClient::connect(&edge.ws_url("/v1/ws?channel=room&history=5")).await;
    // SSE and the first poll.
    let mut sse = SseClient::connect(edge.address(), "/v1/sse?channel=room&history=10", &[]).await;
    assert_eq!(sse.status, 200);
    let first_poll = http::get(edge.address(), "/v1/poll?channel=room&history=10")
        .await
        .json();
    assert_eq!(numbers(&first_poll), (21..=30).collect::<Vec<_>>());

    for (client, from) in [(&mut framed, 21), (&mut at_connect, 26)] {
        for n in from..=30 {
            assert_eq!(client.next_message(SOON).await["data"], n);
        }
        assert_eq!(client.next_json(SOON).await["type"], "subscribed");
    }
    for n in 21..=30 {
        assert_eq!(sse.next_message(SOON).await.1["data"], n);
    }
    assert_eq!(sse.next_event(SOON).await.unwrap().event, "subscribed");

    // Then live, right after the history: nothing missed, nothing twice.
    publish_numbers(&pg, "room", 31..=33).await;
    for client in [&mut framed, &mut at_connect] {
        for n in 31..=33 {
            assert_eq!(client.next_message(SOON).await["data"], n);
        }
    }
    for n in 31..=33 {
        assert_eq!(sse.next_message(SOON).await.1["data"], n);
    }
    let cursor = first_poll["cursor"].as_str().unwrap();
    let next_poll = http::get(
        edge.address(),
        &format!("/v1/poll?channel=room&cursor={cursor}"),
    )
    .await
    .json();
    assert_eq!(numbers(&next_poll), vec![31, 32, 33]);

    // Out of range: a documented error, and the connection goes on.
    let refused = http::get(edge.address(), "/v1/sse?channel=room&history=1001").await;
    assert_eq!(refused.json()["error"], "bad_request");
    framed
        .send_json(serde_json::json!({"op":"subscribe","channels":["other"],"history":-1}))
        .await;
    let error = framed.next_json(SOON).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("bad_frame"))
    );
    publish_numbers(&pg, "room", 34..=34).await;
    assert_eq!(framed.next_message(SOON).await["data"], 34);
}
