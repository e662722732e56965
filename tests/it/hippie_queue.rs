//! Hippie client queues: resume without loss inside the window, a fresh queue after it, one
//! reader at a time, bounded with reported overflow, and nothing left behind.

use std::time::Duration;

use pgpush_tests::{
    Edge, EdgeOptions, TestPostgres, WsClient, durable::publish_numbers, http, raw::MxhrClient,
    wait_until,
};
use serde_json::{Value, json};

use crate::SOON;

fn set_client_id(id: &str) -> Value {
    json!({"type": "hippie.pipe.set_client_id", "client_id": id})
}

#[tokio::test(flavor = "multi_thread")]
async fn mxhr_client_resumes_without_loss_inside_the_window_and_starts_fresh_after() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--hippie-keepalive", "0", "--hippie-window", "3s"]),
    )
    .await;
    let path = "/_hippie/mxhr/feed?client_id=resumer";
    let mut first = MxhrClient::open(edge.address(), path).await;
    assert_eq!(
        first.next_json(SOON).await.unwrap(),
        set_client_id("resumer")
    );
    pg.notify("feed", "0").await;
    assert_eq!(first.next_json(SOON).await.unwrap(), json!(0));
    drop(first);
    wait_until(SOON, "MXHR stream closed", || async {
        edge.stats().await.connections.mxhr == 0
    })
    .await;

    for n in 1..=20 {
        pg.notify("feed", &n.to_string()).await;
    }
    let mut back = MxhrClient::open(edge.address(), path).await;
    assert_eq!(
        back.next_json(SOON).await.unwrap(),
        set_client_id("resumer"),
        "set_client_id again on resume"
    );
    for n in 1..=20 {
        assert_eq!(back.next_json(SOON).await.unwrap(), json!(n));
    }
    drop(back);

    // After the window the queue is gone; the same id starts a fresh one.
    wait_until(Duration::from_secs(10), "queue reaped", || async {
        edge.stats().await.hippie_queues == 0
    })
    .await;
    assert_eq!(edge.stats().await.subscriptions, 0);
    // Published, and received by the node, while no queue exists (the channel is still
    // LISTENed for the unlisten delay): it must not reach the fresh queue.
    let heard = edge.stats().await.messages_in;
    pg.notify("feed", "lost while no queue existed").await;
    wait_until(SOON, "the node received the notification", || async {
        edge.stats().await.messages_in > heard
    })
    .await;
    let mut fresh = MxhrClient::open(edge.address(), path).await;
    assert_eq!(
        fresh.next_json(SOON).await.unwrap(),
        set_client_id("resumer")
    );
    pg.notify("feed", "new").await;
    assert_eq!(fresh.next_json(SOON).await.unwrap(), json!("new"));
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_client_resumes_within_its_shorter_window() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--hippie-keepalive", "0", "--hippie-ws-window", "2s"]),
    )
    .await;
    let url = edge.ws_url("/_hippie/ws/feed?client_id=wsr");
    let mut first = WsClient::connect(&url).await;
    assert_eq!(first.next_json(SOON).await, set_client_id("wsr"));
    drop(first);
    wait_until(SOON, "socket closed", || async {
        edge.stats().await.connections.websocket == 0
    })
    .await;
    for n in 1..=20 {
        pg.notify("feed", &n.to_string()).await;
    }
    let mut back = WsClient::connect(&url).await;
    assert_eq!(back.next_json(SOON).await, set_client_id("wsr"));
    for n in 1..=20 {
        assert_eq!(back.next_json(SOON).await, json!(n));
    }
    drop(back);
    wait_until(
        Duration::from_secs(10),
        "WebSocket-created queue reaped after 2 s",
        || async { edge.stats().await.hippie_queues == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_connections_on_one_client_id_never_duplicate() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--hippie-keepalive", "0", "--hippie-poll-hold", "1s"]),
    )
    .await;
    let mut ws = WsClient::connect(&edge.ws_url("/_hippie/ws/dup?client_id=twice")).await;
    assert_eq!(ws.next_json(SOON).await, set_client_id("twice"));
    // The original client opens an MXHR stream after a WebSocket error: the newer one takes over.
    let mut mxhr = MxhrClient::open(edge.address(), "/_hippie/mxhr/dup?client_id=twice").await;
    assert_eq!(mxhr.next_json(SOON).await.unwrap(), set_client_id("twice"));
    assert_eq!(
        ws.expect_close(SOON).await,
        1000,
        "the older connection is closed, not fed"
    );
    for n in 1..=10 {
        pg.notify("dup", &n.to_string()).await;
    }
    for n in 1..=10 {
        assert_eq!(mxhr.next_json(SOON).await.unwrap(), json!(n));
    }
    // A poll on the same id takes over from the stream; messages go to exactly one reader.
    let poll = http::get(edge.address(), "/_hippie/poll/dup?client_id=twice").await;
    assert_eq!(
        poll.body.as_ref(),
        b"[]",
        "nothing left for the poll: everything went to MXHR once"
    );
    assert!(
        mxhr.next_json(Duration::from_secs(2)).await.is_none(),
        "the MXHR stream ended when the poll took over"
    );
    assert_eq!(edge.stats().await.hippie_queues, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_reports_its_overflow_and_keeps_going() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--hippie-queue-messages", "5"]),
    )
    .await;
    let path = "/_hippie/poll/burst?client_id=slowpoke";
    assert_eq!(
        http::get(edge.address(), path).await.json(),
        json!([set_client_id("slowpoke")])
    );
    for n in 1..=12 {
        pg.notify("burst", &n.to_string()).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = http::get(edge.address(), path).await.json();
    let messages = response.as_array().unwrap();
    assert_eq!(
        &messages[..5],
        &[json!(1), json!(2), json!(3), json!(4), json!(5)]
    );
    assert_eq!(messages.len(), 6, "{response}");
    assert_eq!(messages[5]["type"], "hippie.error");
    assert_eq!(messages[5]["code"], "slow_consumer");
    assert!(
        messages[5]["reason"]
            .as_str()
            .unwrap()
            .starts_with("7 messages were dropped"),
        "{response}"
    );
    pg.notify("burst", "13").await;
    assert_eq!(http::get(edge.address(), path).await.json(), json!([13]));
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_made_up_client_ids_get_bounded_queues_and_leave_nothing_behind() {
    let pg = TestPostgres::start();
    // The window outlasts a round's flood even on a loaded machine (a round has taken 15 s
    // beside other tests on a slow day), so all 10,000 are alive at once when the 10,001st
    // arrives.
    let mut options = EdgeOptions::args(&[
        "--hippie-window",
        "30s",
        "--hippie-max-queues",
        "10000",
        "--hippie-max-queues-per-address",
        "10000",
    ]);
    // One malloc arena: with one per thread, how freed memory is reused depends on which
    // worker ran what, and RSS wanders by megabytes between identical rounds.
    options.env.push(("MALLOC_ARENA_MAX".into(), "1".into()));
    let edge = Edge::start_with(&pg.url(), options).await;
    let baseline_rss = edge.rss_bytes();
    // Three rounds: the allocator keeps freed pages (RSS plateaus after a round or two), so
    // "back to baseline" means later rounds reuse that memory instead of growing it.
    let mut after_rounds = Vec::new();
    for round in 0..3 {
        // Four keep-alive connections at once (fresh each round: an idle one is closed after
        // 10 s), 2,500 made-up ids each.
        let mut floods = Vec::new();
        for lane in 0..4 {
            let address = edge.address();
            floods.push(tokio::spawn(async move {
                let mut connection = http::HttpConnection::open(address).await;
                for i in (lane..10_000).step_by(4) {
                    let id = format!("made-up-{round}-{i}");
                    let response = connection
                        .get(&format!("/_hippie/poll/flood?client_id={id}"))
                        .await;
                    assert_eq!(response.status, 200, "id {id}");
                    assert_eq!(response.json()[0]["client_id"], id);
                }
            }));
        }
        for flood in floods {
            flood.await.unwrap();
        }
        let mut connection = http::HttpConnection::open(edge.address()).await;
        // One more is refused with a clear error, not queued without bound.
        let refused = connection
            .get("/_hippie/poll/flood?client_id=one-too-many")
            .await;
        assert_eq!(refused.status, 503);
        assert_eq!(refused.text(), "too many client queues on this node");
        let stats = edge.stats().await;
        assert_eq!(stats.hippie_queues, 10_000);
        assert_eq!(stats.channels_listened, 1, "one LISTEN for all of them");
        wait_until(Duration::from_secs(60), "every queue reaped", || async {
            edge.stats().await.hippie_queues == 0
        })
        .await;
        assert_eq!(edge.stats().await.subscriptions, 0);
        wait_until(SOON, "channel UNLISTENed after the delay", || async {
            edge.stats().await.channels_listened == 0
        })
        .await;
        let text = http::get(edge.address(), "/_hippie/stats").await.text();
        let total = 10_000 * (round + 1);
        assert!(
            text.starts_with(&format!(
                "current_subscribers: 0\ntotal_subscribers: {total}\n"
            )),
            "{text}"
        );
        after_rounds.push(edge.rss_bytes());
    }
    eprintln!("RSS baseline {baseline_rss}, after each round {after_rounds:?}");
    assert!(
        after_rounds[2] < after_rounds[1] + 4 * 1024 * 1024,
        "memory grew between identical rounds: {after_rounds:?} (baseline {baseline_rss})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hippie_clients_resume_durable_messages_on_another_node() {
    let pg = TestPostgres::start();
    let options = EdgeOptions::args(&["--hippie-keepalive", "0", "--hippie-poll-hold", "2s"]);
    let mut first = Edge::start_with(&pg.url(), options.clone()).await;
    let second = Edge::start_with(&pg.url(), options).await;

    // A long-poll client and an MXHR client on the first node.
    let poll = "/_hippie/poll/h?client_id=poller";
    assert_eq!(
        http::get(first.address(), poll).await.json(),
        json!([set_client_id("poller")])
    );
    let mut stream = MxhrClient::open(first.address(), "/_hippie/mxhr/h?client_id=streamer").await;
    assert_eq!(
        stream.next_json(SOON).await.unwrap(),
        set_client_id("streamer")
    );
    publish_numbers(&pg, "h", 1..=5).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        got.extend(
            http::get(first.address(), poll)
                .await
                .json()
                .as_array()
                .unwrap()
                .iter()
                .cloned(),
        );
    }
    assert_eq!(got, [json!(1), json!(2), json!(3), json!(4), json!(5)]);
    for n in 1..=5 {
        assert_eq!(stream.next_json(SOON).await.unwrap(), json!(n));
    }
    // Polling again acknowledges the previous answer; the stream acknowledges after a while.
    assert_eq!(http::get(first.address(), poll).await.json(), json!([]));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish_numbers(&pg, "h", 6..=8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill().await;
    publish_numbers(&pg, "h", 9..=10).await;

    // Both come back on the other node with their ids and lose nothing.
    let resumed = http::get(second.address(), poll).await.json();
    let mut resumed = resumed.as_array().unwrap().clone();
    assert_eq!(resumed.remove(0), set_client_id("poller"));
    while resumed.last() != Some(&json!(10)) {
        let more = http::get(second.address(), poll).await.json();
        assert!(
            !more.as_array().unwrap().is_empty(),
            "events stopped at {resumed:?}"
        );
        resumed.extend(more.as_array().unwrap().iter().cloned());
    }
    assert_eq!(
        resumed,
        [json!(6), json!(7), json!(8), json!(9), json!(10)],
        "exactly what the client had not acknowledged"
    );
    let mut stream = MxhrClient::open(second.address(), "/_hippie/mxhr/h?client_id=streamer").await;
    assert_eq!(
        stream.next_json(SOON).await.unwrap(),
        set_client_id("streamer")
    );
    let mut seen = Vec::new();
    while seen.last() != Some(&json!(10)) {
        seen.push(
            stream
                .next_json(SOON)
                .await
                .expect("durable messages after the resume"),
        );
    }
    // The stream may repeat what it was sent in its last second on the dead node (Hippie has no
    // cursor), but it never loses anything.
    let tail: Vec<Value> = (6..=10).map(|n| json!(n)).collect();
    assert!(seen.ends_with(&tail), "{seen:?}");
    assert!(
        seen.iter().all(|v| v.as_i64().is_some_and(|n| n >= 6)),
        "{seen:?}"
    );
}
