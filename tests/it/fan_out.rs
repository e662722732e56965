//! Durable fan-out from the sequencer's notifications: a batch larger than one NOTIFY, events
//! larger than any, a lost wake-up, a node that joins mid-stream and a lagging hot standby each
//! still deliver every event once, in order, and the steady state sends no query per batch.

use std::{net::SocketAddr, time::Duration};

use futures_util::StreamExt;
use pgpush_tests::{
    Edge, EdgeOptions, TestPostgres,
    durable::{ResumingSubscriber, Writer, assert_positioned_once, position_of, stored},
    wait_until,
};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::SOON;

/// Subscribers on every node, connected and subscribed.
async fn subscribers_on(addresses: &[SocketAddr], channel: &str) -> Vec<ResumingSubscriber> {
    let mut subscribers = Vec::new();
    for first in 0..addresses.len() {
        let mut subscriber = ResumingSubscriber::new(addresses.to_vec(), first, &[channel]);
        subscriber.connect().await;
        subscribers.push(subscriber);
    }
    subscribers
}

/// Receives until each subscriber holds every stored event of `channel` from its first one
/// on, and asserts it got exactly those, in order; returns the subscribers.
async fn assert_each_got_the_rest(
    pg: &TestPostgres,
    channel: &str,
    subscribers: Vec<ResumingSubscriber>,
) -> Vec<ResumingSubscriber> {
    let client = pg.client().await;
    wait_until(SOON, "every event is positioned", || async {
        let row = client
            .query_one(
                "SELECT count(*) FROM pgpush.events WHERE position IS NULL",
                &[],
            )
            .await
            .expect("count");
        row.get::<_, i64>(0) == 0
    })
    .await;
    let expected = stored(pg, channel).await;
    let mut done = Vec::new();
    for mut subscriber in subscribers {
        // From its first message, or after the cursor it subscribed with.
        let owed: Vec<&(i64, Value)> = match subscriber.received.first() {
            Some(first) => {
                let first = first.position;
                expected.iter().filter(|(p, _)| *p >= first).collect()
            }
            None => {
                let after = position_of(subscriber.cursor.as_deref().expect("subscribed"));
                expected.iter().filter(|(p, _)| *p > after).collect()
            }
        };
        subscriber
            .receive_until(owed.len(), Duration::from_secs(60))
            .await;
        subscriber.assert_in_order_once();
        let got: Vec<(i64, &Value)> = subscriber
            .received
            .iter()
            .map(|r| (r.position, &r.data))
            .collect();
        let owed: Vec<(i64, &Value)> = owed.iter().map(|(p, v)| (*p, v)).collect();
        assert_eq!(
            got, owed,
            "every stored event from the first, once, in order"
        );
        done.push(subscriber);
    }
    done
}

/// The `pgpush_wake` notifications heard from now on, as JSON (bare wake-ups as strings),
/// while the returned connection lives.
async fn hear_wake_notifications(
    pg: &TestPostgres,
) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<Value>) {
    let (client, mut connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let (sender, heard) = mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let value = serde_json::from_str(n.payload())
                    .unwrap_or_else(|_| Value::String(n.payload().to_owned()));
                if sender.send(value).is_err() {
                    return;
                }
            }
        }
    });
    client
        .batch_execute("LISTEN pgpush_wake")
        .await
        .expect("LISTEN");
    (client, heard)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_larger_than_a_notification_with_events_larger_than_any_arrives_once_in_order() {
    let pg = TestPostgres::start();
    let nodes = [Edge::start(&pg.url()).await, Edge::start(&pg.url()).await];
    let addresses: Vec<SocketAddr> = nodes.iter().map(Edge::address).collect();
    let subscribers = subscribers_on(&addresses, "big").await;
    let (_listening, mut heard) = hear_wake_notifications(&pg).await;
    let client = pg.client().await;
    // One transaction, so one batch: 600 events (about 80 KB of notifications), every 100th of
    // them 20 KB, more than any notification holds.
    client
        .batch_execute(
            "BEGIN;
             SELECT pgpush.publish('big', json_build_object(
                 'n', n, 'pad', repeat('x', CASE WHEN n % 100 = 50 THEN 20000 ELSE 100 END))::text)
             FROM generate_series(1, 600) n;
             COMMIT;",
        )
        .await
        .expect("publish a batch");
    let subscribers = assert_each_got_the_rest(&pg, "big", subscribers).await;
    assert_eq!(subscribers[0].received.len(), 600);
    assert_positioned_once(&pg).await;

    // The batch's notifications tile its positions: each starts where the one before ended.
    let positions: Vec<i64> = stored(&pg, "big").await.iter().map(|(p, _)| *p).collect();
    let (first, last) = (positions[0], positions[599]);
    let mut at = first - 1;
    let (mut carried, mut fetched, mut notifications) = (0, 0, 0);
    while at < last {
        let notice = tokio::time::timeout(SOON, heard.recv())
            .await
            .expect("the batch's notifications")
            .expect("listening");
        let Some(after) = notice["after"].as_i64() else {
            continue;
        };
        assert_eq!(
            after, at,
            "a notification continues the one before: {notice}"
        );
        notifications += 1;
        let upto = notice["upto"].as_i64().expect("upto");
        match notice["events"].as_array() {
            Some(events) => {
                assert_eq!(
                    events.len() as i64,
                    upto - after,
                    "every event of the range"
                );
                carried += events.len();
            }
            None => {
                assert_eq!(notice["fetch"], true, "{notice}");
                assert_eq!(upto - after, 1, "only the large event is left to the table");
                fetched += 1;
            }
        }
        at = upto;
    }
    assert_eq!((carried, fetched), (594, 6));
    assert!(
        notifications > 12,
        "the batch needed many notifications ({notifications})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_batches_cost_no_query_each_and_a_lost_wake_up_or_a_late_node_loses_nothing() {
    let pg = TestPostgres::start();
    let mut nodes = vec![Edge::start(&pg.url()).await, Edge::start(&pg.url()).await];
    let addresses: Vec<SocketAddr> = nodes.iter().map(Edge::address).collect();
    let subscribers = subscribers_on(&addresses, "stream").await;
    let queries_before: Vec<u64> = {
        let mut counts = Vec::new();
        for node in &nodes {
            counts.push(node.stats().await.durable_queries);
        }
        counts
    };
    let writer = Writer::start(pg.url(), "stream", 200);
    wait_until(SOON, "a few hundred events", || async {
        stored(&pg, "stream").await.len() >= 400
    })
    .await;
    // Steady state: a batch every few milliseconds, and the nodes read the table only when
    // their timer or a fetch says so, not per batch.
    let events = stored(&pg, "stream").await.len() as u64;
    for (node, before) in nodes.iter().zip(&queries_before) {
        let queries = node.stats().await.durable_queries - before;
        assert!(
            queries < events / 10,
            "{queries} reader queries for {events} events, each about a batch of its own"
        );
    }

    // A lost wake-up: the LISTEN connections are cut between batches; what was published
    // meanwhile is read from the table when the next batch shows the gap.
    for _ in 0..3 {
        let cut = pg.terminate_sessions_named("pgpush-listener").await;
        assert_eq!(cut, 2, "both nodes' LISTEN connections");
        wait_until(SOON, "both LISTEN connections are back", || async {
            pg.sessions_named("pgpush-listener").await == 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A node that joins mid-stream, with a subscriber from the cursor of one on node 0.
    nodes.push(Edge::start(&pg.url()).await);
    let late_address = nodes[2].address();
    let mut late = ResumingSubscriber::new(vec![late_address], 0, &["stream"]);
    late.cursor = subscribers[0].cursor.clone();
    late.connect().await;
    let mut live = ResumingSubscriber::new(vec![late_address], 0, &["stream"]);
    live.connect().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    writer.stop().await;

    let mut everyone = subscribers;
    everyone.push(late);
    everyone.push(live);
    let everyone = assert_each_got_the_rest(&pg, "stream", everyone).await;
    assert!(
        everyone[2].received.len() > 100,
        "the late node's subscriber got the stream after its cursor"
    );
    assert_positioned_once(&pg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_standby_never_makes_a_node_skip_or_reorder_and_a_current_one_serves_reads() {
    let primary = TestPostgres::start();
    let standby = primary.standby();
    let node = Edge::start_with(
        &primary.url(),
        EdgeOptions::args(&[
            "--standby-database-url",
            &standby.url(),
            "--replay-cache-messages",
            "1",
        ]),
    )
    .await;
    let addresses = [node.address()];
    let standby_client = standby.client().await;
    // Events too large for a notification make the node read the table, each time.
    let publish_large = |from: i32| {
        let primary = &primary;
        async move {
            primary
                .client()
                .await
                .execute(
                    "SELECT pgpush.publish('lag', json_build_object('n', n, 'pad', repeat('y', 9000))::text)
                     FROM generate_series($1::int, $1 + 19) n",
                    &[&from],
                )
                .await
                .expect("publish");
        }
    };
    let subscribers = subscribers_on(&addresses, "lag").await;
    standby_client
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause the standby's replay");
    for from in [1, 21, 41] {
        publish_large(from).await;
    }
    let subscribers = assert_each_got_the_rest(&primary, "lag", subscribers).await;
    assert_eq!(subscribers[0].received.len(), 60);
    // A resume from an old cursor needs the table (the memory holds one message): the
    // standby is behind, so the primary answers.
    let mut resumed = ResumingSubscriber::new(addresses.to_vec(), 0, &["lag"]);
    resumed.cursor = Some(subscribers[0].received[9].cursor.clone());
    resumed.connect().await;
    resumed.receive_until(50, SOON).await;
    resumed.assert_in_order_once();
    assert_eq!(
        resumed.received[0].position,
        subscribers[0].received[10].position
    );
    assert_eq!(
        node.stats().await.durable_standby_queries,
        0,
        "a standby that has not replayed a batch answers nothing"
    );

    // Replaying again, the standby catches up and takes the reads it can.
    standby_client
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume the standby's replay");
    let mut later = subscribers_on(&addresses, "lag").await;
    later.push(resumed);
    for from in [61, 81] {
        publish_large(from).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut resumed_again = ResumingSubscriber::new(addresses.to_vec(), 0, &["lag"]);
    resumed_again.cursor = Some(subscribers[0].received[0].cursor.clone());
    resumed_again.connect().await;
    later.push(resumed_again);
    let later = assert_each_got_the_rest(&primary, "lag", later).await;
    assert_eq!(
        later[2].received.len(),
        99,
        "the second resume got everything after its cursor"
    );
    assert!(
        node.stats().await.durable_standby_queries > 0,
        "the current standby answered reads"
    );
}
