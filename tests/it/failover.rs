//! Durable delivery across a PostgreSQL failover, for real: a primary and a streaming standby
//! made with `pg_basebackup -R` from the installed binaries, nodes given both hosts with
//! `target_session_attrs=read-write`, the primary SIGKILLed and the standby promoted. With an
//! asynchronous standby that lacks the end of the history (its walsender SIGSTOPped), every
//! client is told `reset` once and then gets every event of the survivor's history, on every
//! transport and every node; with a synchronous standby nobody is reset and nothing is lost or
//! repeated, even with the sequencer's node SIGKILLed at the same moment.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use pgpush_tests::{
    Edge, MxhrClient, SseClient, TestPostgres, WsClient,
    durable::{ResumingSubscriber, Writer, assert_positioned_once, position_of, stored},
    edge::the_sequencer,
    http, wait_until,
    ws::WsEvent,
};
use serde_json::Value;

use crate::SOON;

const CHANNEL: &str = "orders";

/// A primary and its streaming standby.
struct Pair {
    primary: TestPostgres,
    standby: TestPostgres,
}

impl Pair {
    fn start() -> Pair {
        let primary = TestPostgres::start();
        let standby = primary.standby();
        Pair { primary, standby }
    }

    /// What an operator gives the nodes: both hosts, the writable one chosen at each connect.
    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
            self.primary.port(),
            self.standby.port()
        )
    }

    /// Makes every commit on the primary wait for the standby's flush.
    async fn make_synchronous(&self) {
        let client = self.primary.client().await;
        for statement in [
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "SELECT pg_reload_conf()",
        ] {
            client.batch_execute(statement).await.expect(statement);
        }
        wait_until(SOON, "the standby is synchronous", || async {
            let row = client
                .query_opt("SELECT sync_state FROM pg_stat_replication", &[])
                .await
                .expect("pg_stat_replication");
            row.is_some_and(|row| row.get::<_, &str>(0) == "sync")
        })
        .await;
    }

    /// SIGSTOPs the primary's walsender: from now on the standby falls behind.
    async fn stop_replication(&self) {
        let pid: i32 = self
            .primary
            .client()
            .await
            .query_one("SELECT pid FROM pg_stat_replication", &[])
            .await
            .expect("a walsender")
            .get(0);
        let status = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill -STOP");
        assert!(status.success(), "SIGSTOP of the walsender");
    }

    /// SIGKILLs the primary (all its processes) and promotes the standby; returns when the
    /// primary died.
    async fn fail_over(&self) -> Instant {
        self.primary.kill().await;
        let died = Instant::now();
        self.standby.promote().await;
        died
    }
}

/// The survivor's epochs after one failover: exactly two, and the last position the second
/// inherited from the first.
async fn fork_point(survivor: &TestPostgres) -> i64 {
    let rows = survivor
        .client()
        .await
        .query("SELECT forked_after FROM pgpush.epochs ORDER BY seq", &[])
        .await
        .expect("epochs");
    assert_eq!(rows.len(), 2, "one new epoch began at the failover");
    rows[1].get(0)
}

/// One thing a client saw.
#[derive(Debug, Clone)]
enum Seen {
    Message {
        data: Value,
        cursor: Option<String>,
        at: Instant,
    },
    Reset {
        reason: String,
    },
}

/// A client on one transport of one node, recording what it sees until dropped.
struct Follower {
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    fn spawn<F, Fut>(name: String, follow: F) -> Follower
    where
        F: FnOnce(Arc<Mutex<Vec<Seen>>>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(follow(seen.clone()));
        Follower { name, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn messages(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| matches!(s, Seen::Message { .. }))
            .count()
    }

    /// The native WebSocket.
    fn websocket(node: &Edge) -> Follower {
        let url = node.ws_url(&format!("/v1/ws?channel={CHANNEL}"));
        Follower::spawn(
            format!("websocket on {}", node.address()),
            |seen| async move {
                let mut client = WsClient::connect(&url).await;
                loop {
                    match client.next_event(Duration::from_secs(60)).await {
                        WsEvent::Json(frame) => match frame["type"].as_str() {
                            Some("message") => {
                                record(&seen, &frame["data"], frame["cursor"].as_str())
                            }
                            Some("reset") => record_reset(&seen, &frame["reason"]),
                            _ => {}
                        },
                        WsEvent::TimedOut => {}
                        _ => return,
                    }
                }
            },
        )
    }

    /// Server-Sent Events.
    fn sse(node: &Edge) -> Follower {
        let address = node.address();
        Follower::spawn(format!("sse on {address}"), move |seen| async move {
            let path = format!("/v1/sse?channel={CHANNEL}");
            let mut client = SseClient::connect(address, &path, &[]).await;
            while !client.ended() {
                let Some(event) = client.next_event(Duration::from_secs(60)).await else {
                    continue;
                };
                match event.event.as_str() {
                    "message" => record(&seen, &event.json()["data"], event.id.as_deref()),
                    "reset" => record_reset(&seen, &event.json()["reason"]),
                    _ => {}
                }
            }
        })
    }

    /// Long polling with the cursor of each answer.
    fn long_poll(node: &Edge) -> Follower {
        let address = node.address();
        Follower::spawn(format!("long poll on {address}"), move |seen| async move {
            let mut cursor: Option<String> = None;
            loop {
                let mut path = format!("/v1/poll?channel={CHANNEL}&wait=5");
                if let Some(cursor) = &cursor {
                    path.push_str(&format!("&cursor={cursor}"));
                }
                let response = http::get(address, &path).await;
                if response.status != 200 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let body = response.json();
                if body["reset"] == true {
                    record_reset(&seen, &body["reason"]);
                }
                for message in body["messages"].as_array().expect("messages") {
                    record(&seen, &message["data"], message["cursor"].as_str());
                }
                cursor = body["cursor"].as_str().map(str::to_owned);
            }
        })
    }

    /// A Hippie MXHR stream of the original browser client (no cursor: its queue's position
    /// is kept by the node and PostgreSQL).
    fn hippie_mxhr(node: &Edge, client_id: &str) -> Follower {
        let address = node.address();
        let path = format!("/_hippie/mxhr/{CHANNEL}?client_id={client_id}");
        Follower::spawn(
            format!("hippie mxhr on {address}"),
            move |seen| async move {
                let mut client = MxhrClient::open(address, &path).await;
                while let Some(part) = client.next_json(Duration::from_secs(60)).await {
                    match part["type"].as_str() {
                        Some("hippie.error") if part["code"] == "reset" => {
                            record_reset(&seen, &part["code"])
                        }
                        Some(kind) if kind.starts_with("hippie.") => {}
                        _ => record(&seen, &part, None),
                    }
                }
            },
        )
    }
}

fn record(seen: &Mutex<Vec<Seen>>, data: &Value, cursor: Option<&str>) {
    seen.lock().unwrap().push(Seen::Message {
        data: data.clone(),
        cursor: cursor.map(str::to_owned),
        at: Instant::now(),
    });
}

fn record_reset(seen: &Mutex<Vec<Seen>>, reason: &Value) {
    seen.lock().unwrap().push(Seen::Reset {
        reason: reason.as_str().unwrap_or_default().to_owned(),
    });
}

/// The followers of every transport on `node`.
fn followers_on(node: &Edge, index: usize) -> Vec<Follower> {
    vec![
        Follower::websocket(node),
        Follower::sse(node),
        Follower::long_poll(node),
        Follower::hippie_mxhr(node, &format!("mxhr{index}")),
    ]
}

/// The resets a follower saw, and the payloads after the last one.
fn after_reset(seen: &[Seen]) -> (Vec<String>, Vec<Value>) {
    let mut resets = Vec::new();
    let mut after = Vec::new();
    for item in seen {
        match item {
            Seen::Reset { reason } => {
                resets.push(reason.clone());
                after.clear();
            }
            Seen::Message { data, .. } => after.push(data.clone()),
        }
    }
    (resets, after)
}

/// A WebSocket subscribe with `since`: the frames up to `subscribed`.
async fn resume_frames(address: SocketAddr, since: &str) -> Vec<Value> {
    let url = format!("ws://{address}/v1/ws?channel={CHANNEL}&since={since}");
    let mut client = WsClient::connect(&url).await;
    let mut frames = Vec::new();
    loop {
        let frame = client.next_json(SOON).await;
        let done = frame["type"] == "subscribed";
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn asynchronous_failover_resets_every_client_once_then_delivers_the_survivors_history() {
    let pair = Pair::start();
    let url = pair.url();
    let nodes = [Edge::start(&url).await, Edge::start(&url).await];
    let followers: Vec<Follower> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, node)| followers_on(node, i))
        .collect();
    let writer = Writer::start(url.clone(), CHANNEL, 50);
    let everyone_has = |count: usize| {
        let followers = &followers;
        move || async move { followers.iter().all(|f| f.messages() >= count) }
    };
    wait_until(
        Duration::from_secs(30),
        "every client follows",
        everyone_has(20),
    )
    .await;

    // The standby stops receiving; the nodes go on delivering what only the primary has.
    pair.stop_replication().await;
    let replicated = writer.committed();
    wait_until(
        Duration::from_secs(30),
        "every client received events the standby lacks",
        everyone_has(20 + 100),
    )
    .await;
    let died = pair.fail_over().await;
    let promoted = Instant::now();
    let (committed_before, committed) = publish_through(writer, 100).await;

    let survivor = &pair.standby;
    let fork = fork_point(survivor).await;
    let history = stored(survivor, CHANNEL).await;
    let expected: Vec<Value> = history
        .iter()
        .filter(|(position, _)| *position > fork)
        .map(|(_, payload)| payload.clone())
        .collect();
    assert!(
        expected.len() as u64 + 1 >= committed - committed_before,
        "the survivor has every event acknowledged after the failover (but one in flight)"
    );
    for follower in &followers {
        wait_until(
            Duration::from_secs(30),
            &format!("{} received the survivor's history", follower.name),
            || async { after_reset(&follower.seen()).1.len() >= expected.len() },
        )
        .await;
    }
    let mut first_after = None::<Instant>;
    for follower in &followers {
        let seen = follower.seen();
        let (resets, after) = after_reset(&seen);
        assert_eq!(
            resets.len(),
            1,
            "{}: one reset, got {resets:?}",
            follower.name
        );
        assert!(
            resets[0] == "history changed" || resets[0] == "reset",
            "{}: {resets:?}",
            follower.name
        );
        assert_eq!(
            after, expected,
            "{}: every event of the survivor after the fork, once, in order",
            follower.name
        );
        let reset_at = seen
            .iter()
            .position(|s| matches!(s, Seen::Reset { .. }))
            .unwrap();
        if let Some(Seen::Message { at, .. }) = seen.get(reset_at + 1) {
            first_after = Some(first_after.map_or(*at, |t| t.min(*at)));
        }
    }
    let lost = committed_before as i64 - history.iter().filter(|(p, _)| *p <= fork).count() as i64;
    assert!(
        lost >= 90,
        "the standby lacked the events of the stopped replication: {lost}"
    );
    let first_after = first_after.expect("a post-failover event was delivered");
    eprintln!(
        "asynchronous failover: {lost} committed events lost with the primary (replicated before \
         the walsender stopped: {replicated}); first post-failover event delivered {:.2} s after \
         the primary died ({:.2} s after promotion returned)",
        first_after.duration_since(died).as_secs_f64(),
        first_after.duration_since(promoted).as_secs_f64()
    );

    // Cursors from before the failover, on every node (a new one too): past the fork, a reset
    // and then live; at or before it, the exact rest of the history.
    let cursors: Vec<(i64, String)> = followers[0]
        .seen()
        .iter()
        .filter_map(|s| match s {
            Seen::Message {
                cursor: Some(c), ..
            } => Some((position_of(c), c.clone())),
            _ => None,
        })
        .collect();
    let (_, late) = cursors
        .iter()
        .rfind(|(p, _)| *p > fork && *p < fork + 1000)
        .expect("a cursor past the fork");
    let (early_position, early) = cursors
        .iter()
        .rfind(|(p, _)| *p <= fork - 5)
        .expect("a cursor before the fork");
    let late_node = Edge::start(&url).await;
    let addresses = [nodes[0].address(), nodes[1].address(), late_node.address()];
    for address in addresses {
        let frames = resume_frames(address, late).await;
        assert_eq!(frames[0]["type"], "reset", "{address}: {frames:?}");
        assert_eq!(frames[0]["reason"], "history changed");
        assert_eq!(
            frames.len(),
            2,
            "{address}: reset, then subscribed: {frames:?}"
        );
        let poll = http::get(
            address,
            &format!("/v1/poll?channel={CHANNEL}&cursor={late}&wait=0"),
        )
        .await;
        assert_eq!(poll.json()["reset"], true, "{address}: {}", poll.text());
        assert_eq!(poll.json()["reason"], "history changed");
        let sse_path = format!("/v1/sse?channel={CHANNEL}&since={late}");
        let mut sse = SseClient::connect(address, &sse_path, &[]).await;
        assert_eq!(sse.next_event(SOON).await.expect("an event").event, "reset");

        let frames = resume_frames(address, early).await;
        let replayed: Vec<Value> = frames
            .iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["data"].clone())
            .collect();
        let rest: Vec<Value> = history
            .iter()
            .filter(|(p, _)| p > early_position)
            .map(|(_, payload)| payload.clone())
            .collect();
        assert!(
            frames.iter().all(|f| f["type"] != "reset"),
            "{address}: a cursor the survivor holds is not reset"
        );
        assert_eq!(replayed, rest, "{address}: the exact rest of the history");
    }
    // A Hippie client has no cursor; its position is stored by the node that served it. One
    // stored past the fork (a node may write it to the new primary before it read the new
    // epoch) is refused like a cursor when the client comes back elsewhere.
    survivor
        .client()
        .await
        .execute(
            "INSERT INTO pgpush.hippie_clients (channel, client_id, position) VALUES ($1, 'ghost', $2)",
            &[&CHANNEL, &position_of(late)],
        )
        .await
        .unwrap();
    let path = format!("/_hippie/mxhr/{CHANNEL}?client_id=ghost");
    let mut ghost = MxhrClient::open(late_node.address(), &path).await;
    assert_eq!(
        ghost.next_json(SOON).await.unwrap()["type"],
        "hippie.pipe.set_client_id"
    );
    let notice = ghost.next_json(SOON).await.unwrap();
    assert_eq!(notice["type"], "hippie.error", "{notice}");
    assert_eq!(notice["code"], "reset", "{notice}");

    // ... and after the reset, live.
    let url_late = late_node.ws_url(&format!("/v1/ws?channel={CHANNEL}&since={late}"));
    let mut live = WsClient::connect(&url_late).await;
    assert_eq!(live.next_json(SOON).await["type"], "reset");
    assert_eq!(live.next_json(SOON).await["type"], "subscribed");
    survivor
        .client()
        .await
        .execute(
            "SELECT pgpush.publish($1, '{\"after\":\"reset\"}')",
            &[&CHANNEL],
        )
        .await
        .unwrap();
    assert_eq!(live.next_message(SOON).await["data"]["after"], "reset");

    for node in &nodes {
        let metrics = node.metrics().await;
        assert_eq!(metrics.value("pgpush_durable_history_forks", &[]), 1.0);
        let resets = metrics.value("pgpush_durable_resets", &[("reason", "history_changed")]);
        assert!(
            resets >= 4.0,
            "every connection of the node was reset: {resets}"
        );
        let stats = node.stats().await;
        assert_eq!(stats.durable_epoch, late_node.stats().await.durable_epoch);
    }
    assert!(nodes[0].log().contains("PostgreSQL lost durable events"));
}

#[tokio::test(flavor = "multi_thread")]
async fn synchronous_failover_with_the_sequencers_node_killed_loses_repeats_and_resets_nothing() {
    let pair = Pair::start();
    pair.make_synchronous().await;
    let url = pair.url();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Edge::start(&url).await);
    }
    let sequencer = the_sequencer(&nodes).await;
    let addresses: Vec<_> = nodes.iter().map(|n| n.address()).collect();
    let mut subscribers = Vec::new();
    for i in 0..30 {
        let mut subscriber = ResumingSubscriber::new(addresses.clone(), i % 3, &[CHANNEL]);
        subscriber.connect().await;
        subscribers.push(subscriber);
    }
    let writer = Writer::start(url.clone(), CHANNEL, 50);
    let subscribers = receive_all(subscribers, 50).await;
    // The primary's machine and the sequencer's node die at the same moment.
    nodes[sequencer].kill().await;
    pair.fail_over().await;
    let (_, committed) = publish_through(writer, 100).await;

    let survivor = &pair.standby;
    let history = stored(survivor, CHANNEL).await;
    let expected: Vec<Value> = history.iter().map(|(_, p)| p.clone()).collect();
    assert!(
        expected.len() as u64 >= committed,
        "every acknowledged publish survived the failover"
    );
    let subscribers = receive_all(subscribers, expected.len()).await;
    for subscriber in &subscribers {
        subscriber.assert_in_order_once();
        assert_eq!(subscriber.resets, 0, "nobody is reset");
        let data: Vec<Value> = subscriber.received.iter().map(|r| r.data.clone()).collect();
        assert_eq!(
            data, expected,
            "a subscriber lost, repeated or reordered events"
        );
    }
    assert!(
        subscribers.iter().filter(|s| s.reconnects > 0).count() >= 10,
        "the killed node's clients resumed on the others"
    );
    assert_positioned_once(survivor).await;

    // Any cursor resumes exactly, on any surviving node.
    let received = &subscribers[0].received;
    let survivors: Vec<_> = (0..3).filter(|i| *i != sequencer).collect();
    for (k, index) in [
        0,
        received.len() / 3,
        2 * received.len() / 3,
        received.len() - 1,
    ]
    .into_iter()
    .enumerate()
    {
        let address = addresses[survivors[k % survivors.len()]];
        let cursor = &received[index].cursor;
        let poll = http::get(
            address,
            &format!("/v1/poll?channel={CHANNEL}&cursor={cursor}&wait=0"),
        )
        .await;
        let body = poll.json();
        assert_eq!(body.get("reset"), None, "{}", poll.text());
        let data: Vec<Value> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["data"].clone())
            .collect();
        assert_eq!(data, expected[index + 1..], "resume after message {index}");
    }
    for i in survivors {
        let metrics = nodes[i].metrics().await;
        assert_eq!(metrics.value("pgpush_durable_history_forks", &[]), 0.0);
        assert_eq!(metrics.value("pgpush_durable_epoch_changes", &[]), 1.0);
    }
}

/// Lets `writer` publish `count` more events after the primary died, then stops it. Returns the
/// publishes acknowledged when it died (one may have been acknowledged on the way) and in all.
async fn publish_through(writer: Writer, count: u64) -> (u64, u64) {
    let before = writer.committed();
    wait_until(
        Duration::from_secs(60),
        "events published after the failover",
        || async { writer.committed() >= before + count },
    )
    .await;
    (before, writer.stop().await)
}

/// Lets every subscriber receive `count` messages (reconnecting as needed), concurrently.
async fn receive_all(
    subscribers: Vec<ResumingSubscriber>,
    count: usize,
) -> Vec<ResumingSubscriber> {
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut subscriber| {
            tokio::spawn(async move {
                subscriber
                    .receive_until(count, Duration::from_secs(90))
                    .await;
                subscriber
            })
        })
        .collect();
    let mut done = Vec::new();
    for reader in readers {
        done.push(reader.await.expect("subscriber task"));
    }
    done
}
