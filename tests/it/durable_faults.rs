//! Durable delivery across faults injected for real: a node SIGKILLed (the sequencer or not)
//! while events stream, and PostgreSQL restarted. Zero lost, zero duplicated, order kept.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use pgpush_tests::{Edge, TestPostgres, durable::ResumingSubscriber, wait_until};
use serde_json::Value;

use crate::SOON;

/// Publishes `{"n":k}` on `channel` through `pgpush.publish` at ~`rate`/s until stopped,
/// reconnecting after failures. Returns the count of publishes known to have committed.
fn spawn_writer(
    url: String,
    channel: &'static str,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let committed = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        let mut n = 0u64;
        'outer: while !stop.load(Ordering::Relaxed) {
            let Ok((client, connection)) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(connection);
            while !stop.load(Ordering::Relaxed) {
                let payload = format!(r#"{{"n":{}}}"#, n + 1);
                if client
                    .execute("SELECT pgpush.publish($1, $2)", &[&channel, &payload])
                    .await
                    .is_err()
                {
                    continue 'outer;
                }
                n += 1;
                committed.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1000 / rate)).await;
            }
        }
        committed.load(Ordering::Relaxed)
    })
}

/// The payloads stored for `channel`, in position order: what every subscriber must get.
async fn stored(pg: &TestPostgres, channel: &str) -> Vec<Value> {
    pg.client()
        .await
        .query(
            "SELECT payload FROM pgpush.events WHERE channel = $1 ORDER BY position",
            &[&channel],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap())
        .collect()
}

async fn kill_a_node_mid_stream(kill_the_sequencer: bool) {
    let pg = TestPostgres::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Edge::start(&pg.url()).await);
    }
    wait_until(SOON, "a sequencer", || async {
        let mut leaders = 0;
        for node in &nodes {
            leaders += usize::from(node.stats().await.sequencer);
        }
        leaders == 1
    })
    .await;
    let mut sequencer = 0;
    for (i, node) in nodes.iter().enumerate() {
        if node.stats().await.sequencer {
            sequencer = i;
        }
    }
    let victim = if kill_the_sequencer {
        sequencer
    } else {
        (sequencer + 1) % 3
    };
    let addresses: Vec<_> = nodes.iter().map(|n| n.address()).collect();
    let mut subscribers = Vec::new();
    for i in 0..60 {
        let mut subscriber = ResumingSubscriber::new(addresses.clone(), i % 3, &["stream"]);
        subscriber.connect().await;
        subscribers.push(subscriber);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(pg.url(), "stream", 200, stop.clone());
    // Let the stream run, read some of it, then kill the node.
    let mut readers = Vec::new();
    for mut subscriber in subscribers {
        readers.push(tokio::spawn(async move {
            subscriber.receive_until(100, Duration::from_secs(60)).await;
            subscriber
        }));
    }
    let mut subscribers = Vec::new();
    for reader in readers {
        subscribers.push(reader.await.unwrap());
    }
    nodes[victim].kill().await;
    if kill_the_sequencer {
        wait_until(
            Duration::from_secs(10),
            "another node took over the sequencer",
            || async {
                let mut leaders = 0;
                for (i, node) in nodes.iter().enumerate() {
                    if i != victim {
                        leaders += usize::from(node.stats().await.sequencer);
                    }
                }
                leaders == 1
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let committed = writer.await.unwrap();
    let expected = stored(&pg, "stream").await;
    assert!(
        expected.len() as u64 >= committed,
        "every committed publish is stored"
    );
    let mut readers = Vec::new();
    for mut subscriber in subscribers {
        let count = expected.len();
        readers.push(tokio::spawn(async move {
            subscriber
                .receive_until(count, Duration::from_secs(60))
                .await;
            subscriber
        }));
    }
    let mut moved = 0;
    for reader in readers {
        let subscriber = reader.await.unwrap();
        subscriber.assert_in_order_once();
        let data: Vec<Value> = subscriber.received.iter().map(|r| r.data.clone()).collect();
        assert_eq!(
            data, expected,
            "a subscriber lost, repeated or reordered events"
        );
        moved += usize::from(subscriber.reconnects > 0);
    }
    assert_eq!(
        moved, 20,
        "the 20 clients of the killed node resumed on the others"
    );
    let row = pg
        .client()
        .await
        .query_one("SELECT count(*) FILTER (WHERE position IS NULL), count(DISTINCT position), count(*) FROM pgpush.events", &[])
        .await
        .unwrap();
    let (unpositioned, distinct, total): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(unpositioned, 0, "no event skipped by the sequencer");
    assert_eq!(distinct, total, "no event positioned twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_a_node_mid_stream_loses_and_repeats_nothing() {
    kill_a_node_mid_stream(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_sequencer_mid_stream_hands_over_without_a_gap() {
    kill_a_node_mid_stream(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_mid_stream_loses_and_repeats_nothing() {
    let pg = TestPostgres::start();
    let nodes = [Edge::start(&pg.url()).await, Edge::start(&pg.url()).await];
    let addresses: Vec<_> = nodes.iter().map(|n| n.address()).collect();
    let mut subscribers = Vec::new();
    for i in 0..20 {
        let mut subscriber = ResumingSubscriber::new(addresses.clone(), i % 2, &["stream"]);
        subscriber.connect().await;
        subscribers.push(subscriber);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(pg.url(), "stream", 100, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.restart_fast().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let expected = stored(&pg, "stream").await;
    assert!(expected.len() > 200);
    for subscriber in &mut subscribers {
        subscriber
            .receive_until(expected.len(), Duration::from_secs(60))
            .await;
        subscriber.assert_in_order_once();
        let data: Vec<Value> = subscriber.received.iter().map(|r| r.data.clone()).collect();
        assert_eq!(data, expected);
    }
}
