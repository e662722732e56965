//! One LISTEN connection per node, LISTEN once per channel, UNLISTEN when its last subscriber leaves.

use std::collections::HashMap;

use pgpush_pg::throwaway::ThrowawayOptions;
use pgpush_tests::{Edge, EdgeOptions, TestPostgres, WsClient, wait_until};

use crate::SOON;

/// Statements the listener session ran, read from the server log (`log_statement = all`).
/// A batch of statements is logged as one entry spanning several lines.
fn listener_statements(pg: &TestPostgres) -> Vec<String> {
    let log = std::fs::read_to_string(pg.log_path()).expect("server log");
    let mut statements = Vec::new();
    let mut in_listener_entry = false;
    for line in log.lines() {
        let text = if let Some(rest) = line.strip_prefix("[pgpush-listener] ") {
            in_listener_entry = true;
            match rest.split_once("statement: ") {
                Some((_, sql)) => sql,
                None => continue,
            }
        } else if line.starts_with('[') {
            in_listener_entry = false;
            continue;
        } else if in_listener_entry {
            line
        } else {
            continue;
        };
        statements.extend(
            text.split(';')
                .map(str::trim)
                .filter(|s| s.starts_with("LISTEN") || s.starts_with("UNLISTEN"))
                // The node's own channels (wake-up, presence, control) are LISTENed always;
                // clients can never name a channel starting with pgpush.
                .filter(|s| !s.contains("\"pgpush_"))
                .map(str::to_owned),
        );
    }
    statements
}

fn count(statements: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for statement in statements {
        *counts.entry(statement.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_subscribers_on_fifty_channels_share_one_listen_connection() {
    let pg = TestPostgres::start_with(ThrowawayOptions {
        settings: vec![
            ("log_statement".into(), "all".into()),
            ("log_line_prefix".into(), "[%a] ".into()),
        ],
        ..ThrowawayOptions::default()
    });
    // UNLISTEN as soon as the last subscriber leaves (the default waits a few seconds).
    let edge = Edge::start_with(&pg.url(), EdgeOptions::args(&["--unlisten-delay", "0"])).await;
    let mut clients = Vec::new();
    for i in 0..1000 {
        let channel = format!("ch-{}", i % 50);
        let mut client =
            WsClient::connect(&edge.ws_url(&format!("/v1/ws?channel={channel}"))).await;
        assert_eq!(client.next_json(SOON).await["type"], "subscribed");
        clients.push((channel, client));
    }
    assert_eq!(
        pg.sessions_named("pgpush-listener").await,
        1,
        "exactly one LISTEN connection"
    );
    let stats = edge.stats().await;
    assert_eq!(stats.connections.websocket, 1000);
    assert_eq!(stats.subscriptions, 1000);
    assert_eq!(stats.channels_listened, 50);
    let statements = count(&listener_statements(&pg));
    for i in 0..50 {
        assert_eq!(
            statements.get(&format!("LISTEN \"ch-{i}\"")),
            Some(&1),
            "LISTEN ch-{i} once: {statements:?}"
        );
    }
    assert_eq!(statements.len(), 50, "only LISTENs so far: {statements:?}");

    // Every subscriber of one channel hears it.
    pg.notify("ch-7", "hello").await;
    for (channel, client) in clients.iter_mut().filter(|(c, _)| c == "ch-7") {
        let frame = client.next_message(SOON).await;
        assert_eq!(frame["channel"], channel.as_str());
    }

    // Channel ch-0 loses its subscribers one by one; UNLISTEN only after the last.
    let (leaving, staying): (Vec<_>, Vec<_>) = clients.into_iter().partition(|(c, _)| c == "ch-0");
    let mut leaving = leaving;
    while leaving.len() > 1 {
        drop(leaving.pop());
    }
    wait_until(SOON, "19 subscribers of ch-0 gone", || async {
        edge.stats().await.subscriptions == 981
    })
    .await;
    assert_eq!(edge.stats().await.channels_listened, 50);
    assert!(
        !listener_statements(&pg)
            .iter()
            .any(|s| s.starts_with("UNLISTEN"))
    );
    drop(leaving);
    wait_until(SOON, "UNLISTEN ch-0", || async {
        listener_statements(&pg)
            .iter()
            .any(|s| s == "UNLISTEN \"ch-0\"")
    })
    .await;
    assert_eq!(edge.stats().await.channels_listened, 49);
    let statements = count(&listener_statements(&pg));
    assert_eq!(statements.get("UNLISTEN \"ch-0\""), Some(&1));
    assert_eq!(
        statements
            .keys()
            .filter(|s| s.starts_with("UNLISTEN"))
            .count(),
        1,
        "{statements:?}"
    );

    drop(staying);
    wait_until(SOON, "everything UNLISTENed", || async {
        let stats = edge.stats().await;
        stats.channels_listened == 0 && stats.subscriptions == 0 && stats.connections.total == 0
    })
    .await;
    wait_until(SOON, "50 UNLISTENs in the log", || async {
        listener_statements(&pg)
            .iter()
            .filter(|s| s.starts_with("UNLISTEN"))
            .count()
            == 50
    })
    .await;
    assert_eq!(pg.sessions_named("pgpush-listener").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_stays_listened_for_the_unlisten_delay_then_goes() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(&pg.url(), EdgeOptions::args(&["--unlisten-delay", "2s"])).await;
    let mut client = WsClient::connect(&edge.ws_url("/v1/ws?channel=blink")).await;
    assert_eq!(client.next_json(SOON).await["type"], "subscribed");
    drop(client);
    wait_until(SOON, "subscriber gone", || async {
        edge.stats().await.subscriptions == 0
    })
    .await;
    let left = std::time::Instant::now();
    // A client coming back within the delay finds the channel still LISTENed.
    let mut again = WsClient::connect(&edge.ws_url("/v1/ws?channel=blink")).await;
    assert_eq!(again.next_json(SOON).await["type"], "subscribed");
    assert_eq!(edge.stats().await.channels_listened, 1);
    drop(again);
    wait_until(SOON, "UNLISTEN after the delay", || async {
        edge.stats().await.channels_listened == 0
    })
    .await;
    assert!(
        left.elapsed() >= std::time::Duration::from_secs(2),
        "UNLISTENed after {:?}",
        left.elapsed()
    );
}
