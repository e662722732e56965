//! The location demo's SQL and simulator, and cache invalidation with `pgpush.watch_table`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use pgpush_demo::cache::InvalidatingCache;
use pgpush_tests::{
    Edge, EdgeOptions, TestPostgres, WsClient, edge::pgpush_binary, http, postgres::db_error,
};
use serde_json::{Value, json};
use tokio::process::Command;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::SOON;

async fn pgpush(args: &[&str]) -> std::process::Output {
    Command::new(pgpush_binary())
        .args(args)
        .output()
        .await
        .expect("run pgpush")
}

async fn demo_setup(postgres: &TestPostgres, extra: &[&str]) {
    let url = postgres.url();
    let mut args = vec!["demo", "setup", "--database-url", &url];
    args.extend_from_slice(extra);
    let output = pgpush(&args).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn person_trigger_publishes_geojson_durably_or_with_plain_notify() {
    let postgres = TestPostgres::start();
    demo_setup(&postgres, &[]).await;
    let edge = Edge::start_with(&postgres.url(), EdgeOptions::args(&["--demo"])).await;
    let mut client = WsClient::connect(&edge.ws_url("/v1/ws?channel=person_updated")).await;
    assert_eq!(client.next_json(SOON).await["type"], "subscribed");
    let db = postgres.client().await;
    db.batch_execute(
        "INSERT INTO person (name, loc) VALUES ('O''Brien \"the\" walker', NULL);
         UPDATE person SET loc = 'POINT(4.89 52.37)' WHERE id = 1;",
    )
    .await
    .unwrap();
    let inserted = client.next_message(SOON).await;
    assert_eq!(
        inserted["data"],
        json!({"id": 1, "name": "O'Brien \"the\" walker", "loc": null}),
        "a NULL location is null, and the name stays valid JSON"
    );
    assert!(inserted["cursor"].is_string(), "durable: {inserted}");
    let moved = client.next_message(SOON).await;
    assert_eq!(
        moved["data"],
        json!({"id": 1, "name": "O'Brien \"the\" walker",
               "loc": {"type": "Point", "coordinates": [4.89, 52.37]}})
    );
    // The snapshot the map starts from has the same shape.
    let people = http::get(edge.address(), "/demo/people").await;
    assert_eq!(people.json(), json!([moved["data"]]));

    // The original's variant: plain pg_notify, no cursor.
    demo_setup(&postgres, &["--notify"]).await;
    db.execute("UPDATE person SET loc = NULL WHERE id = 1", &[])
        .await
        .unwrap();
    let notified = client.next_message(SOON).await;
    assert_eq!(
        notified,
        json!({"type": "message", "channel": "person_updated",
               "data": {"id": 1, "name": "O'Brien \"the\" walker", "loc": null}})
    );
    client.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn simulator_moves_people_around_the_area_with_updates() {
    let postgres = TestPostgres::start();
    demo_setup(&postgres, &[]).await;
    let edge = Edge::start(&postgres.url()).await;
    let mut client = WsClient::connect(&edge.ws_url("/v1/ws?channel=person_updated")).await;
    assert_eq!(client.next_json(SOON).await["type"], "subscribed");
    let url = postgres.url();
    let output = pgpush(&[
        "demo",
        "simulate",
        "--people",
        "3",
        "--rate",
        "40",
        "--speedup",
        "50",
        "--moves",
        "30",
        "--database-url",
        &url,
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "pgpush demo: 30 moves"
    );
    let mut moves_of = [0; 3];
    let mut last_position = [None::<(f64, f64)>; 3];
    let mut cursors = Vec::new();
    // Three inserts, then thirty moves, round robin.
    for index in 0..33 {
        let message = client.next_message(SOON).await;
        cursors.push(message["cursor"].as_str().unwrap().to_owned());
        let id = message["data"]["id"].as_u64().unwrap() as usize;
        let coordinates = &message["data"]["loc"]["coordinates"];
        let (longitude, latitude) = (
            coordinates[0].as_f64().unwrap(),
            coordinates[1].as_f64().unwrap(),
        );
        // Within the demo area: 2 km around Dam Square, with a step's slack.
        let north = (latitude - 52.3731) * 111_320.0;
        let east = (longitude - 4.8926) * 111_320.0 * 52.3731f64.to_radians().cos();
        assert!((north * north + east * east).sqrt() < 2_500.0, "{message}");
        if index >= 3 {
            moves_of[id - 1] += 1;
            assert_ne!(
                last_position[id - 1],
                Some((longitude, latitude)),
                "a move moves"
            );
        }
        last_position[id - 1] = Some((longitude, latitude));
    }
    assert_eq!(moves_of, [10, 10, 10]);
    cursors.dedup();
    assert_eq!(cursors.len(), 33, "every move is its own durable event");
    let count: i64 = postgres
        .client()
        .await
        .query_one("SELECT count(*) FROM person", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_table_publishes_row_changes_and_refuses_bad_arguments() {
    let postgres = TestPostgres::start();
    let edge = Edge::start(&postgres.url()).await;
    let db = postgres.client().await;
    db.batch_execute(
        "CREATE TABLE item (id int PRIMARY KEY, name text);
         CREATE TABLE pair (a int, b text, PRIMARY KEY (b, a));
         CREATE TABLE keyless (x int);
         SELECT pgpush.watch_table('item', 'item_changed');
         SELECT pgpush.watch_table('pair', 'pair_changed');",
    )
    .await
    .unwrap();
    let mut client =
        WsClient::connect(&edge.ws_url("/v1/ws?channel=item_changed&channel=pair_changed")).await;
    assert_eq!(client.next_json(SOON).await["type"], "subscribed");
    db.batch_execute(
        "INSERT INTO item VALUES (1, 'a'), (2, 'b');
         UPDATE item SET name = 'c' WHERE id = 1;
         UPDATE item SET id = 3 WHERE id = 2;
         DELETE FROM item WHERE id = 1;
         INSERT INTO pair VALUES (7, 'x');
         TRUNCATE item;",
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..8 {
        let message = client.next_message(SOON).await;
        seen.push((message["channel"].clone(), message["data"].clone()));
    }
    let item = |op: &str, key: Value| {
        (
            json!("item_changed"),
            json!({"op": op, "table": "public.item", "key": key}),
        )
    };
    assert_eq!(
        seen,
        vec![
            item("insert", json!(1)),
            item("insert", json!(2)),
            item("update", json!(1)),
            item("delete", json!(2)),
            item("insert", json!(3)),
            item("delete", json!(1)),
            (
                json!("pair_changed"),
                json!({"op": "insert", "table": "public.pair", "key": ["x", 7]})
            ),
            item("truncate", Value::Null),
        ]
    );
    let refusal = sql_error(&db, "SELECT pgpush.watch_table('keyless', 'x')").await;
    assert!(refusal.contains("has no primary key"), "{refusal}");
    let refusal = sql_error(&db, "SELECT pgpush.watch_table('item', '')").await;
    assert!(refusal.contains("1 to 63 bytes"), "{refusal}");
    // Table names are quoted wherever they reach SQL text: a hostile one is just a name.
    db.batch_execute(
        r#"CREATE TABLE "we""ird; DROP TABLE item; --" (id int PRIMARY KEY);
           SELECT pgpush.watch_table('"we""ird; DROP TABLE item; --"', 'weird');"#,
    )
    .await
    .unwrap();
    client.subscribe(&["weird"]).await;
    db.execute(
        r#"INSERT INTO "we""ird; DROP TABLE item; --" VALUES (5)"#,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        client.next_message(SOON).await["data"],
        json!({"op": "insert", "table": "public.we\"ird; DROP TABLE item; --", "key": 5})
    );
    let refusal = sql_error(
        &db,
        "SELECT pgpush.watch_table('item; DROP TABLE item', 'x')",
    )
    .await;
    assert!(refusal.contains("invalid name syntax"), "{refusal}");
    db.execute("SELECT pgpush.unwatch_table('item')", &[])
        .await
        .unwrap();
    db.execute("INSERT INTO item VALUES (9, 'quiet')", &[])
        .await
        .unwrap();
    client.expect_silence(Duration::from_millis(500)).await;
}

/// The message of the error `sql` fails with.
async fn sql_error(db: &Client, sql: &str) -> String {
    db_error(db, sql).await.message().to_owned()
}

/// Loads product names through `cache`, counting database reads.
async fn product(
    cache: &InvalidatingCache<String>,
    db: &Client,
    loads: &AtomicUsize,
    id: i32,
) -> Option<String> {
    cache
        .get(&json!(id), || async {
            loads.fetch_add(1, Ordering::SeqCst);
            let row = db
                .query_opt("SELECT name FROM product WHERE id = $1", &[&id])
                .await?;
            Ok::<_, tokio_postgres::Error>(row.map(|row| row.get::<_, String>(0)))
        })
        .await
        .unwrap()
        .map(|name| (*name).clone())
}

async fn wait_evicted(cache: &InvalidatingCache<String>, id: i32, within: Duration) {
    let started = Instant::now();
    while cache.cached(&json!(id)).is_some() {
        assert!(
            started.elapsed() < within,
            "row {id} still cached after {within:?} ({} invalidations so far, live: {})",
            cache.invalidations(),
            cache.is_live()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_drops_an_updated_row_within_a_second_and_stays_coherent_across_a_node_restart() {
    let postgres = TestPostgres::start();
    let mut edge = Edge::start(&postgres.url()).await;
    let db = postgres.client().await;
    db.batch_execute(
        "CREATE TABLE product (id int PRIMARY KEY, name text);
         INSERT INTO product VALUES (1, 'teapot'), (2, 'kettle'), (3, 'cup');
         SELECT pgpush.watch_table('product', 'product_changed');",
    )
    .await
    .unwrap();
    let cache = InvalidatingCache::<String>::new();
    let stop = CancellationToken::new();
    let follower = cache.follow(
        &format!("ws://{}", edge.address()),
        "product_changed",
        stop.clone(),
    );
    assert!(cache.wait_live(SOON).await, "the cache subscribed");
    let loads = Arc::new(AtomicUsize::new(0));

    assert_eq!(
        product(&cache, &db, &loads, 1).await.as_deref(),
        Some("teapot")
    );
    assert_eq!(
        product(&cache, &db, &loads, 1).await.as_deref(),
        Some("teapot")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1, "the second read is a hit");

    db.execute("UPDATE product SET name = 'big teapot' WHERE id = 1", &[])
        .await
        .unwrap();
    wait_evicted(&cache, 1, Duration::from_secs(1)).await;
    assert_eq!(
        product(&cache, &db, &loads, 1).await.as_deref(),
        Some("big teapot")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    db.execute("DELETE FROM product WHERE id = 1", &[])
        .await
        .unwrap();
    wait_evicted(&cache, 1, Duration::from_secs(1)).await;
    assert_eq!(product(&cache, &db, &loads, 1).await, None);

    // The node goes away; a change made meanwhile is never served stale: reads bypass the
    // cache while the stream is down, and the change is replayed after the cursor on return.
    assert_eq!(
        product(&cache, &db, &loads, 2).await.as_deref(),
        Some("kettle")
    );
    let address = edge.address();
    edge.kill().await;
    db.execute("UPDATE product SET name = 'steel kettle' WHERE id = 2", &[])
        .await
        .unwrap();
    pgpush_tests::wait_until(SOON, "the cache notices the lost stream", || async {
        !cache.is_live()
    })
    .await;
    assert_eq!(
        product(&cache, &db, &loads, 2).await.as_deref(),
        Some("steel kettle")
    );
    let restarted = Edge::start_with(
        &postgres.url(),
        EdgeOptions {
            listen: Some(address),
            ..EdgeOptions::default()
        },
    )
    .await;
    assert!(cache.wait_live(SOON).await, "the cache resubscribed");
    assert_eq!(
        cache.cached(&json!(2)),
        None,
        "the missed update was replayed"
    );
    assert_eq!(
        product(&cache, &db, &loads, 2).await.as_deref(),
        Some("steel kettle")
    );
    assert_eq!(
        product(&cache, &db, &loads, 3).await.as_deref(),
        Some("cup")
    );

    // TRUNCATE drops every row.
    db.execute("TRUNCATE product", &[]).await.unwrap();
    wait_evicted(&cache, 2, Duration::from_secs(1)).await;
    wait_evicted(&cache, 3, Duration::from_secs(1)).await;
    stop.cancel();
    follower.await.unwrap();
    drop(restarted);
}
