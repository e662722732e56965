//! Presence: who is in a channel, for the whole cluster whichever node answers; joins and leaves
//! delivered to the subscribers that asked, on WebSocket and SSE; a client leaves when it
//! disconnects, unsubscribes, or its node is SIGKILLed (within the documented 10 s).

use std::time::{Duration, Instant};

use pgpush_tests::{
    Edge, EdgeOptions, SseClient, TestPostgres, WsClient, http,
    tokens::{hs256, now},
    wait_until,
};
use serde_json::{Value, json};

use crate::SOON;

const SECRET: &str = "a presence test secret long enough for HS256";
/// What the documentation promises for a client whose node died.
const LEAVE_BOUND: Duration = Duration::from_secs(10);

fn token(user: &str, info: Value) -> String {
    hs256(
        SECRET,
        json!({"sub": user, "exp": now() + 3600, "subscribe": ["room*"], "info": info}),
    )
}

fn node_options() -> EdgeOptions {
    EdgeOptions::args(&["--jwt-secret", SECRET])
}

/// The users listed in `channel` by `node`, in the answer's order.
async fn present(node: &Edge, channel: &str, token: &str) -> Vec<String> {
    let reply = http::request(
        node.address(),
        ::http::Method::GET,
        &format!("/v1/presence?channel={channel}"),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = reply.json();
    assert_eq!(reply["channel"], channel);
    let clients = reply["clients"].as_array().expect("clients").clone();
    assert_eq!(reply["count"].as_u64(), Some(clients.len() as u64));
    clients
        .iter()
        .map(|c| c["user"].as_str().unwrap_or("-").to_owned())
        .collect()
}

/// The next join or leave frame (other frames skipped).
async fn next_change(ws: &mut WsClient) -> Value {
    loop {
        let frame = ws.next_json(SOON).await;
        if frame["type"] == "join" || frame["type"] == "leave" {
            return frame;
        }
    }
}

/// Subscribes to `room` with presence; returns the connection and its presence id.
async fn present_in_room(node: &Edge, token: &str) -> (WsClient, String) {
    let mut ws = WsClient::connect(&node.ws_url(&format!("/v1/ws?token={token}"))).await;
    ws.send_json(json!({"op": "subscribe", "channels": ["room"], "presence": true}))
        .await;
    let subscribed = ws.next_json(SOON).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let id = subscribed["presence_id"]
        .as_str()
        .expect("a presence id")
        .to_owned();
    (ws, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_is_cluster_wide_with_joins_and_leaves_and_a_killed_nodes_clients_leave() {
    let pg = TestPostgres::start();
    let a = Edge::start_with(&pg.url(), node_options()).await;
    let b = Edge::start_with(&pg.url(), node_options()).await;
    let mut c = Edge::start_with(&pg.url(), node_options()).await;
    let reader = token("reader", json!({}));

    // The watcher on B is told of its own join first.
    let (mut watcher, watcher_id) =
        present_in_room(&b, &token("wendy", json!({"name": "W"}))).await;
    let own = next_change(&mut watcher).await;
    assert_eq!(own["type"], "join");
    assert_eq!(own["channel"], "room");
    assert_eq!(own["client"]["id"], watcher_id.as_str());

    // Ann on A: B's watcher sees her join with her token's info; C lists both.
    let (ann, ann_id) = present_in_room(&a, &token("ann", json!({"name": "Ann"}))).await;
    let join = next_change(&mut watcher).await;
    assert_eq!(
        join,
        json!({"type": "join", "channel": "room",
               "client": {"id": ann_id, "user": "ann", "info": {"name": "Ann"}}})
    );
    assert_eq!(present(&c, "room", &reader).await, ["wendy", "ann"]);
    // A subscriber without presence is not listed and gets no joins.
    let mut quiet = WsClient::connect(&a.ws_url(&format!(
        "/v1/ws?channel=room&token={}",
        token("quiet", json!(null))
    )))
    .await;
    assert_eq!(quiet.next_json(SOON).await["type"], "subscribed");

    // Bob over SSE on C (presence=1): his stream has joins too, and everyone sees his.
    let mut bob = SseClient::connect(
        c.address(),
        &format!(
            "/v1/sse?channel=room&presence=1&token={}",
            token("bob", json!({"name": "Bob"}))
        ),
        &[],
    )
    .await;
    assert_eq!(bob.status, 200);
    let subscribed = bob.next_event(SOON).await.expect("subscribed");
    assert_eq!(subscribed.event, "subscribed");
    let bob_id = subscribed.json()["presence_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_join = bob.next_event(SOON).await.expect("bob's own join");
    assert_eq!(bob_join.event, "join");
    assert_eq!(bob_join.json()["client"]["id"], bob_id.as_str());
    let join = next_change(&mut watcher).await;
    assert_eq!(
        (join["type"].as_str(), join["client"]["user"].as_str()),
        (Some("join"), Some("bob"))
    );
    assert_eq!(present(&a, "room", &reader).await, ["wendy", "ann", "bob"]);

    // Ann disconnects: a leave everywhere, and gone from every node's list.
    drop(ann);
    let leave = next_change(&mut watcher).await;
    assert_eq!(
        (leave["type"].as_str(), leave["client"]["id"].as_str()),
        (Some("leave"), Some(ann_id.as_str()))
    );
    let bob_sees = bob.next_event(SOON).await.expect("bob sees ann leave");
    assert_eq!(bob_sees.event, "leave");
    assert_eq!(present(&b, "room", &reader).await, ["wendy", "bob"]);

    // Unsubscribing leaves too; subscribing again with presence joins again.
    let (mut carol, carol_id) = present_in_room(&a, &token("carol", json!({}))).await;
    assert_eq!(
        next_change(&mut watcher).await["client"]["id"],
        carol_id.as_str()
    );
    carol
        .send_json(json!({"op": "unsubscribe", "channels": ["room"]}))
        .await;
    let leave = next_change(&mut watcher).await;
    assert_eq!(
        (leave["type"].as_str(), leave["client"]["id"].as_str()),
        (Some("leave"), Some(carol_id.as_str()))
    );

    // C is SIGKILLed: bob leaves within the bound, from the lists and as a leave event.
    c.kill().await;
    let killed = Instant::now();
    let leave = next_change(&mut watcher).await;
    assert_eq!(
        (leave["type"].as_str(), leave["client"]["id"].as_str()),
        (Some("leave"), Some(bob_id.as_str()))
    );
    assert!(
        killed.elapsed() <= LEAVE_BOUND,
        "bob left after {:?}",
        killed.elapsed()
    );
    wait_until(LEAVE_BOUND, "bob unlisted on A", || async {
        present(&a, "room", &reader).await == ["wendy"]
    })
    .await;
    assert!(killed.elapsed() <= LEAVE_BOUND);
    // The subscriber without presence saw none of it.
    quiet.expect_silence(Duration::from_millis(200)).await;
    drop(carol);

    // Bad requests get their codes: no channel, two channels, poll with presence, a bad value.
    for (path, code) in [
        ("/v1/presence", "bad_request"),
        ("/v1/presence?channel=room&channel=room2", "bad_request"),
        ("/v1/presence?channel=other", "forbidden"),
        ("/v1/poll?channel=room&presence=1", "bad_request"),
        ("/v1/sse?channel=room&presence=yes", "bad_request"),
    ] {
        let reply = http::request(
            a.address(),
            ::http::Method::GET,
            path,
            &[("authorization", &format!("Bearer {reader}"))],
            "",
        )
        .await;
        assert_eq!(reply.json()["error"], code, "{path}: {}", reply.text());
    }
    let mut bad = WsClient::connect(&a.ws_url(&format!("/v1/ws?token={reader}"))).await;
    bad.send_json(json!({"op": "subscribe", "channels": ["room"], "presence": "yes"}))
        .await;
    assert_eq!(bad.next_json(SOON).await["code"], "bad_frame");
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_comes_back_after_postgresql_loses_it() {
    // The presence tables are unlogged: a crash empties them. Each node finds its row gone at its
    // next heartbeat and writes its connections again.
    let pg = TestPostgres::start();
    let a = Edge::start_with(&pg.url(), node_options()).await;
    let reader = token("reader", json!({}));
    let (_ann, _) = present_in_room(&a, &token("ann", json!({}))).await;
    wait_until(SOON, "ann listed", || async {
        present(&a, "room", &reader).await == ["ann"]
    })
    .await;
    let client = pg.client().await;
    client
        .batch_execute("TRUNCATE pgpush.presence, pgpush.presence_nodes")
        .await
        .unwrap();
    assert!(present(&a, "room", &reader).await.is_empty());
    wait_until(SOON, "ann listed again", || async {
        present(&a, "room", &reader).await == ["ann"]
    })
    .await;
}
