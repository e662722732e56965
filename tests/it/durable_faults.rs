//! Durable delivery across faults injected for real: a node SIGKILLed (the sequencer or not)
//! while events stream, and PostgreSQL restarted. Zero lost, zero duplicated, order kept.

use std::time::Duration;

use pgpush_tests::{
    Edge, TestPostgres,
    durable::{ResumingSubscriber, Writer, assert_positioned_once, stored},
    edge::the_sequencer,
    wait_until,
};
use serde_json::Value;

async fn kill_a_node_mid_stream(kill_the_sequencer: bool) {
    let pg = TestPostgres::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Edge::start(&pg.url()).await);
    }
    let sequencer = the_sequencer(&nodes).await;
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
    let writer = Writer::start(pg.url(), "stream", 200);
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
    let committed = writer.stop().await;
    let expected = payloads(&pg, "stream").await;
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
    assert_positioned_once(&pg).await;
}

/// The payloads stored for `channel`, in position order.
async fn payloads(pg: &TestPostgres, channel: &str) -> Vec<Value> {
    stored(pg, channel)
        .await
        .into_iter()
        .map(|(_, p)| p)
        .collect()
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
    let writer = Writer::start(pg.url(), "stream", 100);
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.restart_fast().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    writer.stop().await;
    let expected = payloads(&pg, "stream").await;
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
