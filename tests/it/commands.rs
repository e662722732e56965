//! `pgpush listen` and `pgpush notify`: the original C listener's output, across reconnects,
//! and durable events beside it.

use std::{process::Stdio, time::Duration};

use pgpush_tests::{TestPostgres, edge::pgpush_binary};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::SOON;

#[tokio::test(flavor = "multi_thread")]
async fn listen_prints_notifications_and_survives_a_restart() {
    let pg = TestPostgres::start();
    let (_listen, mut stdout, mut stderr) = start_listen(&pg, &["Foo", "caf\u{e9}"]).await;
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

    let notify = |channel: &'static str, payload: &'static str| {
        let url = pg.url();
        async move {
            let status = Command::new(pgpush_binary())
                .args(["notify", channel, payload])
                .env("DATABASE_URL", url)
                .status()
                .await
                .unwrap();
            assert!(status.success());
        }
    };
    notify("Foo", "it's here").await;
    notify("foo", "lower case is another channel").await;
    notify("caf\u{e9}", "{\"a\": 1}").await;
    let line = tokio::time::timeout(SOON, stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let prefix = "NOTIFY of 'Foo' received from backend PID ";
    assert!(line.starts_with(prefix), "{line}");
    let (pid, payload) = line[prefix.len()..].split_once(": ").unwrap();
    assert!(pid.parse::<u32>().is_ok(), "{line}");
    assert_eq!(payload, "'it's here'");
    let line = tokio::time::timeout(SOON, stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        line.starts_with("NOTIFY of 'caf\u{e9}' received from backend PID "),
        "{line}"
    );
    assert!(line.ends_with(": '{\"a\": 1}'"), "{line}");

    pg.restart_fast().await;
    // Keep notifying until the listener is back (notifications sent while it is down are lost).
    let back = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            notify("Foo", "after restart").await;
            if let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_millis(500), stdout.next_line()).await
            {
                return line;
            }
        }
    })
    .await
    .expect("listen resumed after the restart");
    assert!(back.ends_with(": 'after restart'"), "{back}");
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_refuse_bad_configuration_with_exit_64() {
    for args in [&["notify", "x", "y"][..], &["listen", "x"][..]] {
        let status = Command::new(pgpush_binary())
            .args(args)
            .env_remove("DATABASE_URL")
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap();
        assert_eq!(status.code(), Some(64), "{args:?} without DATABASE_URL");
    }
    let too_long = "x".repeat(64);
    let status = Command::new(pgpush_binary())
        .args(["notify", &too_long, "y"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/x")
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(64));
    let status = Command::new(pgpush_binary())
        .args(["serve", "--listen", "not-an-address"])
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(64));
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;
type ErrLines = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// Starts `pgpush listen <channels>` and waits until it says it listens.
async fn start_listen(pg: &TestPostgres, channels: &[&str]) -> (Child, Lines, ErrLines) {
    let mut listen = Command::new(pgpush_binary())
        .arg("listen")
        .args(channels)
        .env("DATABASE_URL", pg.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = BufReader::new(listen.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(listen.stderr.take().unwrap()).lines();
    tokio::time::timeout(SOON, async {
        while let Ok(Some(line)) = stderr.next_line().await {
            if line.contains("listening on") {
                break;
            }
        }
    })
    .await
    .expect("listen started");
    (listen, stdout, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_shows_durable_events_too_and_ends_quietly_on_ctrl_c() {
    let pg = TestPostgres::start();
    // A node positions durable events (its sequencer); listen prints them as they come.
    let edge = pgpush_tests::Edge::start(&pg.url()).await;
    // Serving starts before the LISTEN connection is necessarily up (on a loaded machine it can
    // come a moment later); ready means both.
    pgpush_tests::wait_until(SOON, "the node is ready", || async {
        edge.ready_status().await == 200
    })
    .await;
    let (mut listen, mut stdout, mut stderr) = start_listen(&pg, &["orders"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.client()
        .await
        .batch_execute("SELECT pgpush.publish('orders', '{\"id\":1}'); NOTIFY orders, 'plain';")
        .await
        .unwrap();
    let mut lines = Vec::new();
    tokio::time::timeout(SOON, async {
        while lines.len() < 2 {
            lines.push(stdout.next_line().await.unwrap().unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("listen printed {lines:?}"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("durable event on 'orders' at position ")
                && l.ends_with(": '{\"id\":1}'")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("NOTIFY of 'orders'")),
        "{lines:?}"
    );
    let pid = listen.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(SOON, listen.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let mut rest = Vec::new();
    while let Ok(Some(line)) = stderr.next_line().await {
        rest.push(line);
    }
    assert!(
        !rest.iter().any(|l| l.contains("connection lost")),
        "{rest:?}"
    );
}
