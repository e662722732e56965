//! Resuming with a cursor: from memory, from the events table, on SSE with Last-Event-ID, by
//! polling; cursors older than retention get `reset`, forged or malformed ones `bad_cursor`.

use std::time::Duration;

use pgpush_tests::{
    Edge, EdgeOptions, SseClient, TestPostgres, WsClient,
    durable::{ResumingSubscriber, position_of, publish_numbers},
    http, wait_until,
};
use serde_json::json;

use crate::SOON;

async fn resume_after_a_disconnect(options: EdgeOptions) {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(&pg.url(), options).await;
    let mut subscriber = ResumingSubscriber::new(vec![edge.address()], 0, &["feed"]);
    subscriber.connect().await;
    publish_numbers(&pg, "feed", 1..=5).await;
    subscriber.receive_until(5, SOON).await;
    let cursor = subscriber.cursor.clone().unwrap();
    drop(subscriber);
    publish_numbers(&pg, "feed", 6..=40).await;
    publish_numbers(&pg, "other", 1..=5).await;
    wait_until(SOON, "node caught up", || async {
        edge.stats().await.durable_head == Some(45)
    })
    .await;

    // WebSocket with `since`.
    let mut ws =
        WsClient::connect(&edge.ws_url(&format!("/v1/ws?channel=feed&since={cursor}"))).await;
    for n in 6..=40 {
        assert_eq!(ws.next_message(SOON).await["data"], n);
    }
    let subscribed = ws.next_json(SOON).await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(position_of(subscribed["cursor"].as_str().unwrap()), 45);
    // SSE with Last-Event-ID (a reconnecting browser).
    let mut sse = SseClient::connect(
        edge.address(),
        "/v1/sse?channel=feed",
        &[("last-event-id", &cursor)],
    )
    .await;
    assert_eq!(sse.status, 200);
    for n in 6..=40 {
        let (id, data) = sse.next_message(SOON).await;
        assert_eq!(data["data"], n);
        assert!(id.is_some());
    }
    assert_eq!(sse.next_event(SOON).await.unwrap().event, "subscribed");
    // Live messages follow the replay without a gap or a repeat.
    publish_numbers(&pg, "feed", 41..=42).await;
    assert_eq!(ws.next_message(SOON).await["data"], 41);
    assert_eq!(ws.next_message(SOON).await["data"], 42);
    assert_eq!(sse.next_message(SOON).await.1["data"], 41);
    assert_eq!(sse.next_message(SOON).await.1["data"], 42);
    ws.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_from_the_memory_cache() {
    resume_after_a_disconnect(EdgeOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_from_the_events_table_when_the_cache_is_too_small() {
    resume_after_a_disconnect(EdgeOptions::args(&["--replay-cache-messages", "3"])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_and_interval_polling_with_a_cursor() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--replay-cache-messages", "10"]),
    )
    .await;
    let address = edge.address();
    // Without a cursor: the current one, at once.
    let first = http::get(address, "/v1/poll?channel=p").await.json();
    assert_eq!(first["messages"], json!([]));
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();
    publish_numbers(&pg, "p", 1..=2500).await;
    // Long replays come in pages of 1,000 (from the table: the cache holds only 10).
    let mut got = Vec::new();
    while got.len() < 2500 {
        let page = http::get(
            address,
            &format!("/v1/poll?channel=p&cursor={cursor}&wait=0"),
        )
        .await
        .json();
        let messages = page["messages"].as_array().unwrap();
        assert!(!messages.is_empty() && messages.len() <= 1000);
        got.extend(messages.iter().map(|m| m["data"].as_i64().unwrap()));
        cursor = page["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(got, (1..=2500).collect::<Vec<_>>());
    // Interval poll with nothing new: at once, empty, same cursor.
    let empty = http::get(
        address,
        &format!("/v1/poll?channel=p&cursor={cursor}&wait=0"),
    )
    .await
    .json();
    assert_eq!(empty, json!({"messages": [], "cursor": cursor}));
    // Long poll: held until the next event.
    let waiting = tokio::spawn({
        let cursor = cursor.clone();
        async move {
            http::get(
                address,
                &format!("/v1/poll?channel=p&cursor={cursor}&wait=20"),
            )
            .await
            .json()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_numbers(&pg, "p", 2501..=2501).await;
    let answer = waiting.await.unwrap();
    assert_eq!(answer["messages"][0]["data"], 2501);
    assert_eq!(answer["cursor"], answer["messages"][0]["cursor"]);
    let bad_wait = http::get(
        address,
        &format!("/v1/poll?channel=p&cursor={cursor}&wait=soon"),
    )
    .await;
    assert_eq!(bad_wait.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_older_than_retention_gets_reset_and_a_forged_one_bad_cursor() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&[
            "--retention-count",
            "10",
            "--retention-interval",
            "100ms",
            "--replay-cache-messages",
            "5",
        ]),
    )
    .await;
    let address = edge.address();
    let mut subscriber = ResumingSubscriber::new(vec![address], 0, &["r"]);
    subscriber.connect().await;
    publish_numbers(&pg, "r", 1..=3).await;
    subscriber.receive_until(3, SOON).await;
    let old = subscriber.received[0].cursor.clone();
    publish_numbers(&pg, "r", 4..=60).await;
    wait_until(SOON, "retention ran", || async {
        let floor: i64 = pg
            .client()
            .await
            .query_one("SELECT retention_floor FROM pgpush.sequencer_state", &[])
            .await
            .unwrap()
            .get(0);
        floor >= 50
    })
    .await;

    let mut ws = WsClient::connect(&edge.ws_url(&format!("/v1/ws?channel=r&since={old}"))).await;
    assert_eq!(
        ws.next_json(SOON).await,
        json!({"type": "reset", "reason": "cursor expired"})
    );
    let subscribed = ws.next_json(SOON).await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(position_of(subscribed["cursor"].as_str().unwrap()), 60);
    publish_numbers(&pg, "r", 61..=61).await;
    assert_eq!(
        ws.next_message(SOON).await["data"],
        61,
        "live delivery continues after the reset"
    );

    let mut sse =
        SseClient::connect(address, "/v1/sse?channel=r", &[("last-event-id", &old)]).await;
    let reset = sse.next_event(SOON).await.unwrap();
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.json()["reason"], "cursor expired");
    let polled = http::get(address, &format!("/v1/poll?channel=r&cursor={old}&wait=0"))
        .await
        .json();
    assert_eq!(polled["reset"], true);

    // Forged and malformed cursors.
    let (position, signature) = old.split_once('.').unwrap();
    let forged = format!("{}.{signature}", position.parse::<i64>().unwrap() + 1);
    for bad in [forged.as_str(), "garbage", "12", "-1.0000000000000000"] {
        let response = http::get(
            address,
            &format!("/v1/sse?channel=r&since={}", pgpush_tests::ws::encode(bad)),
        )
        .await;
        assert_eq!(response.status, 400, "{bad}");
        assert_eq!(response.json()["error"], "bad_cursor", "{bad}");
        let response = http::get(
            address,
            &format!(
                "/v1/poll?channel=r&cursor={}",
                pgpush_tests::ws::encode(bad)
            ),
        )
        .await;
        assert_eq!(response.json()["error"], "bad_cursor", "{bad}");
        let response = http::get(
            address,
            &format!("/v1/ws?channel=r&since={}", pgpush_tests::ws::encode(bad)),
        )
        .await;
        assert_eq!(response.status, 400, "{bad}");
        let mut client = WsClient::connect(&edge.ws_url("/v1/ws")).await;
        client
            .send_json(json!({"op": "subscribe", "channels": ["r"], "since": bad, "ref": 1}))
            .await;
        let reply = client.next_json(SOON).await;
        assert_eq!(
            (reply["code"].as_str(), reply["ref"].as_i64()),
            (Some("bad_cursor"), Some(1)),
            "{bad}: {reply}"
        );
    }
}
