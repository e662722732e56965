//! `pgpush up`: the README's main command brings up nodes, nginx and a database, serves, and on
//! Ctrl-C stops every process it started and removes its files.

use std::time::Duration;

use pgpush_tests::{WsClient, edge::pgpush_binary, http, up::Up};
use serde_json::json;
use tokio::process::Command;

use crate::SOON;

/// Command lines of running processes that mention `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_the_demo_serves_through_nginx_and_stops_everything_on_ctrl_c() {
    let mut up = Up::start(&["--nodes", "3", "--mode", "http", "--demo", "--people", "5"]).await;
    let (listen, printed) = (up.listen, up.printed.clone());
    let pid = up.process.id().unwrap();
    let field = |name: &str| up.field(name);
    assert!(
        printed[0].starts_with(&format!(
            "pgpush is up: 3 nodes behind nginx (http mode) on http://{listen}"
        )),
        "{printed:#?}"
    );
    let files = field("files");
    let database = field("database");
    assert_eq!(
        field("shell"),
        format!("export DATABASE_URL='{database}'"),
        "psql \"$DATABASE_URL\" works after pasting it"
    );
    let database_port = database
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();

    // The printed URLs work.
    let stats = http::get(listen, "/v1/stats").await;
    assert_eq!(stats.status, 200);
    assert_eq!(http::get(listen, "/_hippie/stats").await.status, 200);
    let mut client = WsClient::connect(&format!("ws://{listen}/v1/ws?channel=up")).await;
    assert_eq!(client.next_json(SOON).await["type"], "subscribed");
    let published = http::post(listen, "/v1/publish/up", r#"{"hello":"world"}"#).await;
    assert_eq!(published.status, 200, "{}", published.text());
    assert_eq!(
        client.next_message(SOON).await["data"],
        json!({"hello": "world"})
    );
    // The location demo: set up, served by every node, and moving.
    assert!(field("map").starts_with(&format!("http://{listen}/demo/map")));
    pgpush_tests::wait_until(SOON, "the simulator placed 5 people", || async {
        let people = http::get(listen, "/demo/people").await;
        people.status == 200 && people.json().as_array().is_some_and(|p| p.len() == 5)
    })
    .await;
    let mut watcher =
        WsClient::connect(&format!("ws://{listen}/v1/ws?channel=person_updated")).await;
    assert_eq!(watcher.next_json(SOON).await["type"], "subscribed");
    let moved = watcher.next_message(SOON).await;
    assert_eq!(moved["data"]["loc"]["type"], "Point", "{moved}");
    assert!(moved["cursor"].is_string(), "moves are durable: {moved}");
    let nodes = format!("@{pid}");
    assert_eq!(
        processes_mentioning(&nodes).len(),
        3,
        "three node processes"
    );
    assert!(
        !processes_mentioning(&files).is_empty(),
        "nginx runs from the files directory"
    );

    // Ctrl-C: everything stops and disappears.
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), up.process.wait())
        .await
        .expect("exit within 60 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        processes_mentioning(&nodes),
        Vec::<String>::new(),
        "nodes left running"
    );
    assert_eq!(
        processes_mentioning(&files),
        Vec::<String>::new(),
        "nginx left running"
    );
    assert_eq!(
        processes_mentioning(&format!("-p {database_port}")),
        Vec::<String>::new(),
        "PostgreSQL left running"
    );
    assert!(
        !std::path::Path::new(&files).exists(),
        "{files} was not removed"
    );
    assert!(
        tokio::net::TcpStream::connect(listen).await.is_err(),
        "still listening"
    );
}

/// The `pgpush-up-*` folders in the temp directory.
fn up_folders() -> std::collections::BTreeSet<String> {
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("pgpush-up-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn up_on_a_taken_port_fails_at_once_naming_it_and_leaves_nothing_behind() {
    let pg = pgpush_tests::TestPostgres::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let before = up_folders();
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(pgpush_binary())
            .args(["up", "--nodes", "2", "--listen", &address])
            .env("DATABASE_URL", pg.url())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("pgpush up gave up within seconds")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&address), "{stderr}");
    assert!(stderr.contains("Address already in use"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("pgpush is up"),
        "it never said it was up"
    );
    let left: Vec<_> = up_folders().difference(&before).cloned().collect();
    assert!(left.is_empty(), "folders left behind: {left:?}");
    let database = pg.url();
    assert!(
        processes_mentioning(&database).is_empty(),
        "processes left behind: {:?}",
        processes_mentioning(&database)
    );
}
