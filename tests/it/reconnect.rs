//! The LISTEN connection comes back after a PostgreSQL restart or a killed backend; clients stay.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use pgpush_tests::{Edge, SseClient, TestPostgres, WsClient};

use crate::SOON;

/// NOTIFYs `seq` numbers on `channel` every 20 ms until stopped, reconnecting on failure.
fn spawn_notifier(url: String, channel: &'static str, stop: Arc<AtomicBool>) -> Arc<AtomicU64> {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if let Ok((client, connection)) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            {
                tokio::spawn(connection);
                while !stop.load(Ordering::Relaxed) {
                    if client
                        .execute(
                            "SELECT pg_notify($1, $2)",
                            &[&channel, &(seq + 1).to_string()],
                        )
                        .await
                        .is_err()
                    {
                        break;
                    }
                    seq += 1;
                    counter.store(seq, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    sent
}

/// Reads sequence numbers until one above `after` arrives; asserts they only increase.
async fn receive_past_ws(client: &mut WsClient, last: &mut u64, after: u64) {
    while *last <= after {
        let frame = client.next_message(SOON).await;
        let seq: u64 = frame["data"].as_u64().expect("number payload");
        assert!(
            seq > *last,
            "sequence went backwards or repeated: {seq} after {last}"
        );
        *last = seq;
    }
}

async fn receive_past_sse(client: &mut SseClient, last: &mut u64, after: u64) {
    while *last <= after {
        let (_, data) = client.next_message(SOON).await;
        let seq: u64 = data["data"].as_u64().expect("number payload");
        assert!(
            seq > *last,
            "sequence went backwards or repeated: {seq} after {last}"
        );
        *last = seq;
    }
}

async fn survive(fault: &str) {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let mut ws = WsClient::connect(&edge.ws_url("/v1/ws?channel=tick")).await;
    assert_eq!(ws.next_json(SOON).await["type"], "subscribed");
    let mut sse = SseClient::connect(edge.address(), "/v1/sse?channel=tick", &[]).await;
    sse.next_event(SOON).await.expect("subscribed");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = spawn_notifier(pg.url(), "tick", stop.clone());
    let (mut last_ws, mut last_sse) = (0, 0);
    receive_past_ws(&mut ws, &mut last_ws, 5).await;
    receive_past_sse(&mut sse, &mut last_sse, 5).await;

    // Watch readiness while the fault happens.
    let saw_unready = Arc::new(AtomicBool::new(false));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (saw_unready, watching, address) =
            (saw_unready.clone(), watching.clone(), edge.address());
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                if pgpush_tests::http::get(address, "/readyz").await.status == 503 {
                    saw_unready.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let before = edge.stats().await;
    assert_eq!(before.listener, "up");
    match fault {
        "restart" => pg.restart_fast().await,
        "terminate" => assert_eq!(pg.terminate_sessions_named("pgpush-listener").await, 1),
        _ => unreachable!(),
    }
    let back = Instant::now();
    pgpush_tests::wait_until(
        Duration::from_secs(5),
        "listener reconnected within 5 s",
        || async {
            let stats = edge.stats().await;
            stats.listener == "up"
                && stats.listener_connections > before.listener_connections
                && edge.ready_status().await == 200
        },
    )
    .await;
    let reconnect_time = back.elapsed();
    watching.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    assert!(
        saw_unready.load(Ordering::Relaxed),
        "/readyz never reported 503 during the outage"
    );
    eprintln!("{fault}: ready again {reconnect_time:?} after PostgreSQL was back");

    // Delivery resumes on the same connections: messages sent after the reconnect arrive.
    let resume_from = sent.load(Ordering::Relaxed) + 3;
    receive_past_ws(&mut ws, &mut last_ws, resume_from).await;
    receive_past_sse(&mut sse, &mut last_sse, resume_from).await;
    stop.store(true, Ordering::Relaxed);
    let stats = edge.stats().await;
    assert_eq!(
        stats.connections.websocket, 1,
        "the WebSocket client stayed connected"
    );
    assert_eq!(stats.connections.sse, 1, "the SSE client stayed connected");
    assert_eq!(pg.sessions_named("pgpush-listener").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_fast_restart_under_a_notify_stream() {
    survive("restart").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_listen_backend_under_a_notify_stream() {
    survive("terminate").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_listen_backend_is_noticed_within_fifteen_seconds() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let mut ws = WsClient::connect(&edge.ws_url("/v1/ws?channel=tick")).await;
    assert_eq!(ws.next_json(SOON).await["type"], "subscribed");
    let pid: i32 = pg
        .client()
        .await
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgpush-listener'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A stopped backend keeps its TCP connection open (the kernel still answers keepalives):
    // only the application heartbeat can tell it is dead.
    let status = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let frozen = Instant::now();
    pgpush_tests::wait_until(
        Duration::from_secs(15),
        "listener replaced within 15 s",
        || async {
            let stats = edge.stats().await;
            stats.listener_connections >= 2 && stats.listener == "up"
        },
    )
    .await;
    eprintln!(
        "frozen backend noticed and replaced after {:?}",
        frozen.elapsed()
    );
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    pg.notify("tick", "after").await;
    assert_eq!(ws.next_message(SOON).await["data"], "after");
}
