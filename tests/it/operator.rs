//! What an operator gets wrong in the first hour, through the real binary: no `DATABASE_URL`, a
//! wrong password or database name, a taken port, a node started before the migration Job ran,
//! a node that wants plain NOTIFY only. Each is refused or reported loudly, once, and a node
//! recovers by itself once the cause is gone.

use std::{net::TcpListener, time::Duration};

use pgpush_tests::{
    Edge, EdgeOptions, MxhrClient, SseClient, TestPostgres, WsClient, edge::pgpush_binary, http,
    wait_until,
};
use serde_json::json;
use tokio::process::Command;

use crate::SOON;

/// Runs `pgpush serve` with `args` (and `env`) and returns its exit code and standard error;
/// panics if it is still running after 20 s.
async fn serve_fails(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(pgpush_binary());
    command
        .arg("serve")
        .args(args)
        .env_remove("DATABASE_URL")
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("pgpush serve should have exited")
        .expect("run pgpush");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_without_a_database_refuses_unless_a_throwaway_one_is_asked_for() {
    let (code, stderr) = serve_fails(&["--listen", "127.0.0.1:0"], &[]).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(stderr.contains("--throwaway-database"), "{stderr}");

    // Asked for explicitly, it runs on a private database of its own.
    let mut command = Command::new(pgpush_binary());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--throwaway-database"])
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let address = tokio::time::timeout(Duration::from_secs(60), async {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(address) = line.strip_prefix("pgpush listening on http://") {
                return address.parse::<std::net::SocketAddr>().unwrap();
            }
        }
        panic!("no address printed");
    })
    .await
    .expect("the throwaway node starts");
    let ready = http::get(address, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_refuses_the_node_ends_it_at_start_with_the_cause_said_once() {
    let pg = TestPostgres::start();
    let client = pg.client().await;
    client
        .batch_execute("CREATE ROLE app LOGIN SUPERUSER PASSWORD 'right'")
        .await
        .unwrap();
    pg.hba_first("host all app 127.0.0.1/32 scram-sha-256")
        .await;
    let port = pg.port();
    let wrong = format!("postgres://app:wrong@127.0.0.1:{port}/postgres");
    let missing = format!("postgres://postgres@127.0.0.1:{port}/no_such_database");
    for (url, cause) in [
        (wrong.as_str(), "password authentication failed"),
        (missing.as_str(), "\"no_such_database\" does not exist"),
    ] {
        let (code, stderr) =
            serve_fails(&["--listen", "127.0.0.1:0", "--database-url", url], &[]).await;
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
        assert_eq!(stderr.matches(cause).count(), 1, "the cause once: {stderr}");
    }
    // A taken port: named, with its cause, once.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (code, stderr) =
        serve_fails(&["--listen", &address, "--database-url", &pg.url()], &[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&address), "{stderr}");
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );

    // A node that started fine and is refused later answers `unavailable`, not `internal`.
    let good = format!("postgres://app:right@127.0.0.1:{port}/postgres");
    let edge = Edge::start(&good).await;
    let published = http::post(edge.address(), "/v1/publish/orders", "{}").await;
    assert_eq!(published.status, 200, "{}", published.text());
    client
        .batch_execute("ALTER ROLE app PASSWORD 'changed'")
        .await
        .unwrap();
    pg.terminate_sessions_named("pgpush-pool").await;
    let refused = http::post(edge.address(), "/v1/publish/orders", "{}").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"], "unavailable");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_before_the_migration_is_not_ready_says_why_once_and_becomes_ready_by_itself() {
    let pg = TestPostgres::start();
    let options = EdgeOptions {
        without_migrate: true,
        ..EdgeOptions::default()
    };
    let edge = Edge::start_with(&pg.url(), options).await;
    // The schema check runs once the LISTEN connection is up; until then the reason is that.
    wait_until(SOON, "not ready because of the missing schema", || async {
        let ready = http::get(edge.address(), "/readyz").await;
        ready.status == 503
            && ready.json()["reason"]
                .as_str()
                .is_some_and(|reason| reason.contains("pgpush migrate"))
    })
    .await;

    // Plain NOTIFY works meanwhile, on the native and the Hippie routes, without delay: a
    // NOTIFY 300 ms after the MXHR request reaches it.
    let mut sse = SseClient::connect(edge.address(), "/v1/sse?channel=news", &[]).await;
    assert_eq!(sse.next_event(SOON).await.unwrap().event, "subscribed");
    let address = edge.address();
    let mxhr = tokio::spawn(async move {
        let mut mxhr = MxhrClient::open(address, "/_hippie/mxhr/news?client_id=early").await;
        let first = mxhr.next_json(SOON).await.unwrap();
        (first, mxhr.next_json(SOON).await)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.notify("news", "{\"n\":1}").await;
    let (first, second) = mxhr.await.unwrap();
    assert_eq!(first["type"], "hippie.pipe.set_client_id");
    assert_eq!(second, Some(json!({"n": 1})));
    assert_eq!(sse.next_message(SOON).await.1["data"], json!({"n": 1}));
    let poll = http::get(edge.address(), "/v1/poll?channel=news&wait=0").await;
    assert_eq!(
        poll.status,
        200,
        "a poll without a cursor is answered: {}",
        poll.text()
    );
    let durable = http::post(edge.address(), "/v1/publish/news", "{}").await;
    assert_eq!(durable.status, 503, "{}", durable.text());

    // Said once, not twice a second; the sequencer waits quietly.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = edge.log();
    assert_eq!(log.matches("pgpush schema is missing").count(), 1, "{log}");
    assert!(!log.contains("this node is now the sequencer"), "{log}");
    assert!(!log.contains("sequencer connection lost"), "{log}");

    // The migration Job runs; the node becomes ready and durable without a restart.
    let status = Command::new(pgpush_binary())
        .args(["migrate", "--database-url", &pg.url()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    wait_until(Duration::from_secs(15), "the node is ready", || async {
        http::get(edge.address(), "/readyz").await.status == 200
    })
    .await;
    let mut ws = WsClient::connect(&edge.ws_url("/v1/ws?channel=orders")).await;
    assert_eq!(ws.next_json(SOON).await["type"], "subscribed");
    let published = http::post(edge.address(), "/v1/publish/orders", "{\"id\":7}").await;
    assert_eq!(published.status, 200, "{}", published.text());
    let message = ws.next_message(SOON).await;
    assert_eq!(message["data"], json!({"id": 7}));
    assert!(message["cursor"].is_string(), "durable now: {message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_durable_channels_needs_no_schema_and_serves_notify_everywhere() {
    let pg = TestPostgres::start();
    let options = EdgeOptions {
        without_migrate: true,
        env: vec![("PGPUSH_NO_DURABLE".to_owned(), "1".to_owned())],
        ..EdgeOptions::default()
    };
    let edge = Edge::start_with(&pg.url(), options).await;
    // Ready once its LISTEN connection is up, with no schema at all.
    wait_until(SOON, "the node is ready", || async {
        http::get(edge.address(), "/readyz").await.status == 200
    })
    .await;

    let mut ws = WsClient::connect(&edge.ws_url("/v1/ws?channel=news")).await;
    assert_eq!(ws.next_json(SOON).await["type"], "subscribed");
    let mut hippie_ws = WsClient::connect(&edge.ws_url("/_hippie/ws/news?client_id=h1")).await;
    assert_eq!(
        hippie_ws.next_json(SOON).await["type"],
        "hippie.pipe.set_client_id"
    );
    let mut mxhr = MxhrClient::open(edge.address(), "/_hippie/mxhr/news?client_id=h2").await;
    mxhr.next_json(SOON).await.unwrap();
    let mut sse = SseClient::connect(edge.address(), "/v1/sse?channel=news", &[]).await;
    assert_eq!(sse.next_event(SOON).await.unwrap().event, "subscribed");
    // A long poll without a cursor is held until a message arrives.
    let address = edge.address();
    let poll =
        tokio::spawn(async move { http::get(address, "/v1/poll?channel=news&wait=10").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = http::post(
        edge.address(),
        "/v1/publish/news?mode=ephemeral",
        "{\"n\":2}",
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.text());
    assert_eq!(ws.next_message(SOON).await["data"], json!({"n": 2}));
    assert_eq!(hippie_ws.next_json(SOON).await, json!({"n": 2}));
    assert_eq!(mxhr.next_json(SOON).await.unwrap(), json!({"n": 2}));
    assert_eq!(sse.next_message(SOON).await.1["data"], json!({"n": 2}));
    let polled = poll.await.unwrap().json();
    assert_eq!(polled["messages"][0]["data"], json!({"n": 2}), "{polled}");

    let durable = http::post(edge.address(), "/v1/publish/news", "{}").await;
    assert_eq!(durable.status, 501, "{}", durable.text());
    assert_eq!(durable.json()["error"], "not_implemented");
    let since = http::get(
        edge.address(),
        "/v1/poll?channel=news&cursor=1.0000000000000000",
    )
    .await;
    assert_eq!(since.json()["error"], "not_implemented", "{}", since.text());
    let exists: bool = pg
        .client()
        .await
        .query_one("SELECT to_regnamespace('pgpush') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "nothing created the schema");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_small_things_a_new_user_meets_first() {
    let run = |args: &'static [&'static str]| async move {
        let output = Command::new(pgpush_binary())
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text)
    };
    let (code, help) = run(&["--help"]).await;
    assert_eq!(code, 0);
    let first = help.lines().next().unwrap_or_default();
    assert!(
        first.contains("PostgreSQL") && !first.contains("crate"),
        "{first}"
    );
    let (code, said) = run(&["up", "--nodes", "0"]).await;
    assert_eq!(code, 64, "{said}");
    assert!(said.contains("--nodes"), "{said}");
    let (_, help) = run(&["serve", "--help"]).await;
    assert!(
        help.contains("--max-durable-payload-bytes"),
        "the flag the docs name"
    );

    // The old spelling of that flag still starts a node.
    let pg = TestPostgres::start();
    let _old_spelling = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--max-payload-bytes", "4096"]),
    )
    .await;
    // `--listen localhost:<port>` is a listen address like any other.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = Command::new(pgpush_binary())
        .args(["serve", "--listen", &format!("localhost:{port}")])
        .args(["--database-url", &pg.url(), "--migrate"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(SOON, "the node on localhost listens", || async {
        tokio::net::TcpStream::connect(address).await.is_ok()
    })
    .await;
    // Errors are JSON everywhere: a malformed cursor on a poll too.
    let poll = http::get(address, "/v1/poll?channel=a&cursor=garbage").await;
    assert_eq!(poll.status, 400);
    assert_eq!(poll.json()["error"], "bad_cursor", "{}", poll.text());
    let _ = serve.kill().await;

    // The licence the packages declare is in the repository.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    for file in ["LICENSE-MIT", "LICENSE-APACHE"] {
        assert!(root.join(file).is_file(), "{file}");
    }
}
