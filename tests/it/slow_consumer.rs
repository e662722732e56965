//! A client that reads nothing is cut off with 1013 once its queue bound is hit; others are unaffected.

use std::time::Duration;

use pgpush_tests::{Edge, EdgeOptions, TestPostgres, WsClient, wait_until};

use crate::SOON;

#[tokio::test(flavor = "multi_thread")]
async fn slow_consumer_is_cut_off_and_others_get_everything() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--max-queue-messages", "200"]),
    )
    .await;
    let url = edge.ws_url("/v1/ws?channel=firehose");
    let mut slow = WsClient::connect(&url).await;
    assert_eq!(slow.next_json(SOON).await["type"], "subscribed");
    let mut fast = WsClient::connect(&url).await;
    assert_eq!(fast.next_json(SOON).await["type"], "subscribed");
    let rss_before = edge.rss_bytes();

    // 3,000 messages of ~4 KB: 12 MB, far more than socket buffers plus a 200-message queue.
    // Published in rounds of 100 that the fast client reads before the next round, so only the
    // client that reads nothing falls behind, however loaded the machine is.
    const COUNT: u64 = 3000;
    let filler = "f".repeat(4000);
    let (publisher, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for round in 0..COUNT / 100 {
        for seq in round * 100 + 1..=(round + 1) * 100 {
            let payload = format!(r#"{{"seq":{seq},"filler":"{filler}"}}"#);
            publisher
                .execute("SELECT pg_notify('firehose', $1)", &[&payload])
                .await
                .unwrap();
        }
        for seq in round * 100 + 1..=(round + 1) * 100 {
            let frame = fast.next_message(SOON).await;
            assert_eq!(frame["data"]["seq"], seq);
        }
    }
    wait_until(SOON, "slow consumer counted", || async {
        edge.stats().await.slow_consumers == 1
    })
    .await;

    // The slow client finds what fitted in the buffers, then close 1013.
    let code = slow.expect_close(Duration::from_secs(30)).await;
    assert_eq!(code, 1013);
    wait_until(SOON, "slow consumer gone", || async {
        edge.stats().await.connections.websocket == 1
    })
    .await;
    let rss_after = edge.rss_bytes();
    assert!(
        rss_after < rss_before + 64 * 1024 * 1024,
        "memory grew from {rss_before} to {rss_after} bytes"
    );
    // The fast client is still served.
    pg.notify("firehose", r#"{"seq":0}"#).await;
    assert_eq!(fast.next_message(SOON).await["data"]["seq"], 0);
}
