//! The load tests: k6 scripts and the Rust generator run the same scenarios, and the CI smoke
//! run — `pgpush up` with 3 nodes behind nginx, 2,000 mixed clients for 30 s — loses and
//! repeats nothing; sixteen SQL writers (the throughput benchmark's shape) lose nothing either.

use std::{path::PathBuf, process::Stdio, time::Duration};

use pgpush_tests::{
    edge::{Edge, loadgen_binary},
    postgres::TestPostgres,
    up::Up,
};
use serde_json::Value;
use tokio::process::Command;

fn loadtest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("loadtest")
}

#[test]
fn every_scenario_has_a_k6_script_that_node_accepts() {
    let output = std::process::Command::new(loadgen_binary())
        .arg("scenarios")
        .output()
        .unwrap();
    let manifest: Value = serde_json::from_slice(&output.stdout).expect("scenarios JSON");
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(loadtest_dir().join("scenarios.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest, on_disk,
        "the generator embeds loadtest/scenarios.json"
    );
    let names: Vec<&String> = manifest.as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 6);
    for name in names {
        let script = loadtest_dir().join(format!("{name}.js"));
        let text =
            std::fs::read_to_string(&script).unwrap_or_else(|_| panic!("no k6 script for {name}"));
        assert!(
            text.contains(&format!("const NAME = '{name}';")),
            "{name}.js runs another scenario"
        );
        assert!(
            text.contains("scenarioOptions(NAME)"),
            "{name}.js must take its options from the manifest"
        );
        let check = std::process::Command::new("node")
            .arg("--check")
            .arg(&script)
            .output()
            .unwrap_or_else(|_| panic!("node not found; install it with: scripts/test --install-only (apt-get install -y nodejs)"));
        assert!(
            check.status.success(),
            "{name}.js: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let common = std::process::Command::new("node")
        .arg("--check")
        .arg(loadtest_dir().join("lib/common.js"))
        .status()
        .unwrap();
    assert!(common.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn smoke_two_thousand_mixed_clients_through_a_cluster_lose_nothing() {
    let mut up = Up::start(&["--nodes", "3", "--mode", "stream"]).await;
    let listen = up.listen;
    // No threshold on times in CI: loss, duplicates, order and connect failures only.
    let listen_url = format!("http://{listen}");
    let summary = run_loadgen(&[
        "run",
        "cluster",
        "--url",
        &listen_url,
        "--connections",
        "2000",
        "--duration",
        "30s",
        "--processes",
        "2",
        "--source-addresses",
        "4",
        "--max-p99-ms",
        "0",
        "--max-connect-failure-ratio",
        "0",
    ])
    .await;
    assert_eq!(summary["connected"], 2000);
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["duplicates"], 0);
    assert!(
        summary["delivered"].as_u64().unwrap() > 100_000,
        "{summary:#}"
    );
    std::process::Command::new("kill")
        .args(["-INT", &up.process.id().unwrap().to_string()])
        .status()
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(60), up.process.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
}

/// The durable throughput benchmark's writers: sixteen connections, each publishing with
/// `pgpush.publish` in a transaction that also inserts a row of its own. Every event reaches its
/// subscriber once and in order, and every published event's row committed with it.
#[tokio::test(flavor = "multi_thread")]
async fn sixteen_sql_writers_publishing_beside_their_own_rows_lose_nothing() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let (url, database_url) = (format!("http://{}", edge.address()), pg.url());
    let summary = run_loadgen(&[
        "run",
        "sse",
        "--url",
        &url,
        "--database-url",
        &database_url,
        "--publish-via",
        "sql-durable",
        "--connections",
        "16",
        "--channels",
        "16",
        "--writers",
        "16",
        "--write-row",
        "--rate",
        "0",
        "--window",
        "1000",
        "--duration",
        "5s",
        "--max-p99-ms",
        "0",
    ])
    .await;
    assert_eq!(summary["connected"], 16);
    assert_eq!(
        (
            &summary["lost"],
            &summary["duplicates"],
            &summary["reordered"]
        ),
        (&Value::from(0), &Value::from(0), &Value::from(0)),
        "{summary:#}"
    );
    let published = summary["published"].as_u64().unwrap() as i64;
    assert!(published >= 100, "{summary:#}");
    let client = pg.client().await;
    let rows = client
        .query_one(
            "SELECT (SELECT count(*) FROM pgpush_loadgen_writes),
                    (SELECT count(DISTINCT channel) FROM pgpush_loadgen_writes),
                    (SELECT count(*) FROM pgpush.events WHERE channel LIKE 'lg-%')",
            &[],
        )
        .await
        .unwrap();
    let (written, writers, events): (i64, i64, i64) = (rows.get(0), rows.get(1), rows.get(2));
    assert_eq!((written, writers, events), (published, 16, published));
}

/// Runs the load generator with `args` and `--json`, and returns its summary once its
/// thresholds held.
async fn run_loadgen(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let summary_path = dir.path().join("summary.json");
    let status = Command::new(loadgen_binary())
        .args(args)
        .arg("--json")
        .arg(&summary_path)
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert!(status.success(), "thresholds failed: {summary:#}");
    summary
}
