//! Durable channels: one global order across nodes, exactly once, transactions respected, any
//! payload size, idempotent publishing, and the SQL API.

use std::{collections::HashMap, time::Duration};

use pgpush_tests::{
    Edge, EdgeOptions, SseClient, TestPostgres, WsClient,
    durable::{ResumingSubscriber, position_of},
    http,
    postgres::db_error,
    wait_until,
};
use serde_json::{Value, json};

use crate::SOON;

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_one_global_order_for_twenty_thousand_events_from_four_writers() {
    let pg = TestPostgres::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Edge::start(&pg.url()).await);
    }
    let addresses: Vec<_> = nodes.iter().map(|n| n.address()).collect();
    const CHANNELS: usize = 10;
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 5_000;
    // 300 subscribers: 100 per node, spread over the channels.
    let mut subscribers = Vec::new();
    for i in 0..300 {
        let channel = format!("orders-{}", i % CHANNELS);
        let mut subscriber = ResumingSubscriber::new(addresses.clone(), i % 3, &[&channel]);
        subscriber.connect().await;
        subscribers.push((channel, subscriber));
    }
    // Four writers, each in its own session, publishing numbered events in small transactions.
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let url = pg.url();
        writers.push(tokio::spawn(async move {
            let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            for batch in 0..PER_WRITER / 10 {
                let transaction = client.transaction().await.unwrap();
                for k in 0..10 {
                    let n = batch * 10 + k;
                    let channel = format!("orders-{}", (writer * PER_WRITER + n) % CHANNELS);
                    let payload = format!(r#"{{"w":{writer},"n":{n}}}"#);
                    transaction
                        .execute("SELECT pgpush.publish($1, $2)", &[&channel, &payload])
                        .await
                        .unwrap();
                }
                transaction.commit().await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let per_channel = WRITERS * PER_WRITER / CHANNELS;
    let mut order_by_channel: HashMap<String, Vec<Value>> = HashMap::new();
    for (channel, subscriber) in &mut subscribers {
        subscriber
            .receive_until(per_channel, Duration::from_secs(120))
            .await;
        subscriber.assert_in_order_once();
        let order: Vec<Value> = subscriber.received.iter().map(|r| r.data.clone()).collect();
        // Every event of the channel, once.
        let mut distinct: Vec<String> = order.iter().map(|v| v.to_string()).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            per_channel,
            "{channel}: duplicates or missing events"
        );
        match order_by_channel.get(channel) {
            None => {
                order_by_channel.insert(channel.clone(), order);
            }
            Some(first) => assert_eq!(
                first, &order,
                "{channel}: two subscribers saw different orders"
            ),
        }
    }
    // Each writer's own events keep their order (commits of one session are sequential).
    for order in order_by_channel.values() {
        let mut last: HashMap<i64, i64> = HashMap::new();
        for event in order {
            let (w, n) = (event["w"].as_i64().unwrap(), event["n"].as_i64().unwrap());
            assert!(
                last.get(&w).is_none_or(|prev| *prev < n),
                "writer {w} reordered at {n}"
            );
            last.insert(w, n);
        }
    }
    // Exactly one node sequenced at a time, and every event got exactly one position.
    let client = pg.client().await;
    let row = client
        .query_one("SELECT count(*), count(position), count(DISTINCT position), min(position), max(position) FROM pgpush.events", &[])
        .await
        .unwrap();
    let (count, positioned, distinct, min, max): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(count, (WRITERS * PER_WRITER) as i64);
    assert_eq!((positioned, distinct), (count, count));
    assert_eq!(
        (min, max),
        (1, count),
        "positions are 1..=count without holes"
    );
    let mut leaders = 0;
    for node in &nodes {
        if node.stats().await.sequencer {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "exactly one sequencer");
}

/// The sequencer's cost does not grow with the table: its poll reads the queue of waiting events,
/// never the positioned rows, even with statistics taken while 20,000 events waited (every row
/// unpositioned: the statistics under which a plain EXISTS is planned as a sequential scan that
/// then reads every row on every poll).
#[tokio::test(flavor = "multi_thread")]
async fn the_sequencer_polls_without_reading_positioned_events_whatever_the_statistics() {
    let pg = TestPostgres::start();
    let waiting = Edge::start_with(&pg.url(), EdgeOptions::args(&["--no-sequencer"])).await;
    let client = pg.client().await;
    client
        .batch_execute(
            "SELECT pgpush.publish('probe', n::text) FROM generate_series(1, 20000) n;
             ANALYZE pgpush.events;",
        )
        .await
        .unwrap();
    drop(waiting);
    // No backlog sampling during the test: only the sequencer and the reader touch the table.
    let _edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--metrics-sample-interval", "1h"]),
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "every event positioned",
        || async {
            let last: i64 = client
                .query_one("SELECT last_position FROM pgpush.sequencer_state", &[])
                .await
                .unwrap()
                .get(0);
            last == 20_000
        },
    )
    .await;
    // A backend that goes idle publishes its statistics within 10 s (PGSTAT_IDLE_INTERVAL):
    // let the readers' catch-up of the 20,000 events land before the window opens.
    let rows_read = || async {
        client
            .query_one(
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
                 FROM pg_stat_user_tables WHERE relid = 'pgpush.events'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = rows_read().await;
    // About 600 polls (one every 5 ms); one full read would be 20,000 rows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rows_read().await;
    assert!(
        after - before < 1_000,
        "the idle sequencer read {} event rows in 3 s",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rolled_back_publishes_vanish_and_a_long_transaction_blocks_nobody() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let mut subscriber = ResumingSubscriber::new(vec![edge.address()], 0, &["tx"]);
    subscriber.connect().await;

    let mut client = pg.client().await;
    let rolled_back = client.transaction().await.unwrap();
    rolled_back
        .execute("SELECT pgpush.publish('tx', 'never')", &[])
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();

    // A transaction holds a publish open for 10 s while others publish and are delivered.
    let (mut holder, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let held = holder.transaction().await.unwrap();
    held.execute("SELECT pgpush.publish('tx', '\"held\"')", &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    for n in 1..=20 {
        client
            .execute("SELECT pgpush.publish('tx', $1::text)", &[&n.to_string()])
            .await
            .unwrap();
        subscriber.receive_until(n, Duration::from_secs(3)).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "the transaction was held the whole time"
    );
    assert_eq!(
        subscriber.received.len(),
        20,
        "delivered while the transaction was open"
    );
    held.commit().await.unwrap();
    subscriber.receive_until(21, SOON).await;
    subscriber.assert_in_order_once();
    let data: Vec<Value> = subscriber.received.iter().map(|r| r.data.clone()).collect();
    let mut expected: Vec<Value> = (1..=20).map(|n| json!(n)).collect();
    expected.push(json!("held"));
    assert_eq!(
        data, expected,
        "the rolled-back event never appears; the held one comes after"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_megabyte_payload_arrives_intact_over_websocket_sse_and_poll() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let mut ws = WsClient::connect(&edge.ws_url("/v1/ws?channel=big")).await;
    assert_eq!(ws.next_json(SOON).await["type"], "subscribed");
    let mut sse = SseClient::connect(edge.address(), "/v1/sse?channel=big", &[]).await;
    assert_eq!(sse.next_event(SOON).await.unwrap().event, "subscribed");
    let start = http::get(edge.address(), "/v1/poll?channel=big")
        .await
        .json();
    let cursor = start["cursor"].as_str().unwrap().to_owned();

    let text: String = (0..512 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let payload = json!({"blob": text}).to_string();
    assert!(payload.len() > 500 * 1024);
    let published = http::post(edge.address(), "/v1/publish/big", payload.clone()).await;
    assert_eq!(published.status, 200, "{}", published.text());

    let frame = ws.next_message(SOON).await;
    assert_eq!(frame["data"]["blob"].as_str().unwrap(), text);
    let (id, data) = sse.next_message(SOON).await;
    assert_eq!(data["data"]["blob"].as_str().unwrap(), text);
    assert_eq!(id.as_deref(), frame["cursor"].as_str());
    let polled = http::get(
        edge.address(),
        &format!("/v1/poll?channel=big&cursor={cursor}&wait=5"),
    )
    .await
    .json();
    assert_eq!(
        polled["messages"][0]["data"]["blob"].as_str().unwrap(),
        text
    );
    // Above the cap: refused.
    let too_big = "x".repeat((1 << 20) + 1);
    let refused = http::post(edge.address(), "/v1/publish/big", too_big).await;
    assert_eq!(refused.status, 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_retried_five_times_publishes_once() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let mut subscriber = ResumingSubscriber::new(vec![edge.address()], 0, &["pay"]);
    subscriber.connect().await;
    let mut cursors = Vec::new();
    for _ in 0..5 {
        let response = http::request(
            edge.address(),
            "POST".parse().unwrap(),
            "/v1/publish/pay",
            &[("idempotency-key", "order-42")],
            r#"{"amount":10}"#,
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.text());
        cursors.push(response.json()["cursor"].as_str().unwrap().to_owned());
    }
    // Five concurrent retries of another key.
    let mut concurrent = Vec::new();
    for _ in 0..5 {
        let address = edge.address();
        concurrent.push(tokio::spawn(async move {
            http::request(
                address,
                "POST".parse().unwrap(),
                "/v1/publish/pay",
                &[("idempotency-key", "order-43")],
                r#"{"amount":20}"#,
            )
            .await
            .json()["cursor"]
                .as_str()
                .unwrap()
                .to_owned()
        }));
    }
    let mut concurrent_cursors = Vec::new();
    for task in concurrent {
        concurrent_cursors.push(task.await.unwrap());
    }
    assert!(cursors.windows(2).all(|w| w[0] == w[1]), "{cursors:?}");
    assert!(
        concurrent_cursors.windows(2).all(|w| w[0] == w[1]),
        "{concurrent_cursors:?}"
    );
    subscriber.receive_until(2, SOON).await;
    subscriber.assert_in_order_once();
    let events: i64 = pg
        .client()
        .await
        .query_one("SELECT count(*) FROM pgpush.events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 2);
    // A different key publishes again.
    let response = http::request(
        edge.address(),
        "POST".parse().unwrap(),
        "/v1/publish/pay",
        &[("idempotency-key", "order-44")],
        r#"{"amount":10}"#,
    )
    .await;
    assert_ne!(response.json()["cursor"].as_str().unwrap(), cursors[0]);
    subscriber.receive_until(3, SOON).await;
    assert_eq!(subscriber.received.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sql_api_works_in_any_transaction_and_trigger() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let mut subscriber = ResumingSubscriber::new(vec![edge.address()], 0, &["c", "people"]);
    subscriber.connect().await;
    let client = pg.client().await;
    // An untyped literal resolves (no ambiguous overload); json and jsonb values work too.
    client
        .batch_execute(
            r#"SELECT pgpush.publish('c', '{"n": 1}');
               SELECT pgpush.publish('c', '{"n": 2}'::jsonb);
               SELECT pgpush.publish('c', '{"n": 3}'::json);
               SELECT pgpush.publish('c', 'plain text', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
               CREATE TABLE person (id serial PRIMARY KEY, name text);
               CREATE FUNCTION person_changed() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                   PERFORM pgpush.publish('people', json_build_object('id', NEW.id, 'name', NEW.name));
                   RETURN NEW;
               END $$;
               CREATE TRIGGER person_changed AFTER INSERT OR UPDATE ON person FOR EACH ROW EXECUTE FUNCTION person_changed();
               INSERT INTO person (name) VALUES ('Ann');"#,
        )
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO person (name) VALUES ('Rolled Back'); ROLLBACK;")
        .await
        .unwrap();
    client
        .batch_execute("UPDATE person SET name = 'Anne' WHERE id = 1")
        .await
        .unwrap();
    subscriber.receive_until(6, SOON).await;
    let data: Vec<Value> = subscriber.received.iter().map(|r| r.data.clone()).collect();
    assert_eq!(
        data,
        vec![
            json!({"n": 1}),
            json!({"n": 2}),
            json!({"n": 3}),
            json!("plain text"),
            json!({"id": 1, "name": "Ann"}),
            json!({"id": 1, "name": "Anne"}),
        ]
    );
    // Raw bytes of a text payload are kept (the untyped literal is stored as given).
    let stored: String = client
        .query_one(
            "SELECT payload FROM pgpush.events ORDER BY position LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, r#"{"n": 1}"#);
    let error = client
        .query_one("SELECT pgpush.publish('', 'x')", &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("db error") || error.as_db_error().is_some());
    // `pgpush migrate` again is a no-op.
    let output = tokio::process::Command::new(pgpush_tests::edge::pgpush_binary())
        .args(["migrate", "--database-url", &pg.url()])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("up to date"));
    let versions: i64 = client
        .query_one("SELECT count(*) FROM pgpush.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        versions,
        i64::from(pgpush_pg::SCHEMA_VERSION),
        "each migration applied once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_publishes_over_the_limits_are_refused_by_name_and_a_lowered_cap_holds_at_the_node() {
    use tokio_postgres::error::SqlState;

    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let client = pg.client().await;
    let refusal = |sql: &'static str| {
        let client = &client;
        async move {
            let error = db_error(client, sql).await;
            (error.code().clone(), error.constraint().map(str::to_owned))
        }
    };
    let check = |constraint: &str| (SqlState::CHECK_VIOLATION, Some(constraint.to_owned()));
    for (sql, constraint) in [
        (
            "SELECT pgpush.publish(repeat('c', 64), 'x')",
            "events_channel_name",
        ),
        ("SELECT pgpush.publish('', 'x')", "events_channel_name"),
        (
            "SELECT pgpush.publish('c', repeat('x', 1048577))",
            "events_payload_size",
        ),
    ] {
        assert_eq!(refusal(sql).await, check(constraint), "{sql}");
    }
    // The operator lowers the cap to 1,000 bytes with the procedure of migration 1.
    client
        .batch_execute(
            "ALTER TABLE pgpush.events DROP CONSTRAINT events_payload_size,
                 ADD CONSTRAINT events_payload_size CHECK (octet_length(payload) <= 1000) NOT VALID",
        )
        .await
        .unwrap();
    let too_big = "SELECT pgpush.publish('capped', repeat('x', 1001))";
    assert_eq!(refusal(too_big).await, check("events_payload_size"));
    client
        .query_one("SELECT pgpush.publish('capped', repeat('x', 1000))", &[])
        .await
        .unwrap();
    // The node, whose own cap is still 1 MiB, reports the database's as too_large, and keeps
    // serving.
    let body = json!({"blob": "x".repeat(1000)}).to_string();
    let refused = http::post(edge.address(), "/v1/publish/capped", body).await;
    assert_eq!(refused.status, 413, "{}", refused.text());
    assert_eq!(refused.json()["error"], "too_large");
    let accepted = http::post(edge.address(), "/v1/publish/capped", r#"{"ok":1}"#).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    let stored: Vec<i32> = client
        .query(
            "SELECT octet_length(payload) FROM pgpush.events WHERE channel = 'capped' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(stored, [1000, 8]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ephemeral_notify_keeps_working_beside_durable_on_the_same_channel() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let mut ws = WsClient::connect(&edge.ws_url("/v1/ws?channel=mixed")).await;
    assert_eq!(ws.next_json(SOON).await["type"], "subscribed");
    pg.notify("mixed", "ephemeral").await;
    let frame = ws.next_message(SOON).await;
    assert_eq!(frame["data"], "ephemeral");
    assert!(frame.get("cursor").is_none());
    pg.client()
        .await
        .execute("SELECT pgpush.publish('mixed', 'durable')", &[])
        .await
        .unwrap();
    let frame = ws.next_message(SOON).await;
    assert_eq!(frame["data"], "durable");
    assert!(position_of(frame["cursor"].as_str().unwrap()) > 0);
    // Reserved channels stay out of reach, and the node's own wake-ups are not messages.
    ws.expect_silence(Duration::from_millis(300)).await;
    let stats = edge.stats().await;
    assert_eq!(
        stats.channels_listened, 1,
        "pgpush_wake is not counted as a client channel"
    );
    wait_until(SOON, "durable head", || async {
        edge.stats().await.durable_head.is_some_and(|h| h >= 1)
    })
    .await;
}
