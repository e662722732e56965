//! Traces exported over OTLP link fan-out to the publisher; `/metrics` parses as OpenMetrics and
//! moves by exactly what a scripted scenario causes; logs switch to JSON.

use std::{collections::BTreeSet, time::Duration};

use http::{Method, StatusCode};
use pgpush_tests::{
    Edge, EdgeOptions, Metrics, OtlpReceiver, SseClient, TestPostgres, WsClient, http::request,
    wait_until,
};
use serde_json::json;

use crate::SOON;

/// Every span name the node exports (docs/observability.md).
const SPAN_NAMES: [&str; 8] = [
    "accept",
    "subscribe",
    "publish",
    "listener.reconnect",
    "sequencer.batch",
    "catch_up.query",
    "fan_out.batch",
    "drain",
];

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_link_fan_out_to_each_publisher_through_postgres() {
    let pg = TestPostgres::start();
    let receiver = OtlpReceiver::start().await;
    let mut edge = Edge::start_with(
        &pg.url(),
        EdgeOptions {
            args: vec!["--drain-window".into(), "0s".into()],
            env: vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()),
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
                ("OTEL_SERVICE_NAME".into(), "pgpush-traced".into()),
            ],
            ..EdgeOptions::default()
        },
    )
    .await;
    let mut subscriber = WsClient::connect(&edge.ws_url("/v1/ws?channel=traced")).await;
    assert_eq!(subscriber.next_json(SOON).await["type"], "subscribed");

    // An HTTP publish carrying the caller's trace context.
    let (trace_id, caller_span) = (random_hex(16), random_hex(8));
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let response = request(
        edge.address(),
        Method::POST,
        "/v1/publish/traced",
        &[("traceparent", &traceparent)],
        r#"{"n":1}"#,
    )
    .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(subscriber.next_message(SOON).await["data"]["n"], 1);

    // A SQL publish with a traceparent argument, as a trigger or an application would.
    let (sql_trace, sql_span) = (random_hex(16), random_hex(8));
    pg.client()
        .await
        .execute(
            "SELECT pgpush.publish('traced', '{\"n\": 2}', $1)",
            &[&format!("00-{sql_trace}-{sql_span}-01")],
        )
        .await
        .unwrap();
    assert_eq!(subscriber.next_message(SOON).await["data"]["n"], 2);

    // A WebSocket publish: the event carries the context of the node's publish span.
    let mut publisher = WsClient::connect(&edge.ws_url("/v1/ws")).await;
    publisher
        .send_json(json!({"op": "publish", "channel": "traced", "data": {"n": 3}, "ref": 1}))
        .await;
    assert_eq!(publisher.next_json(SOON).await["type"], "ack");
    assert_eq!(subscriber.next_message(SOON).await["data"]["n"], 3);

    // The publish span is a child of the caller's span, in the caller's trace.
    let publish = receiver
        .wait_for(SOON, "publish in the caller's trace", |s| {
            s.name == "publish" && s.trace_id == trace_id
        })
        .await;
    assert_eq!(publish.parent_span_id, caller_span);
    assert_eq!(publish.service, "pgpush-traced");
    assert_eq!(
        publish.attributes.get("channel").map(String::as_str),
        Some("traced")
    );

    // The fan-out that delivered it links to that publish: a link, not a child.
    let producer = (trace_id.clone(), publish.span_id.clone());
    let fan_out = receiver
        .wait_for(SOON, "fan_out.batch linked to the HTTP publish", |s| {
            s.name == "fan_out.batch" && s.links.contains(&producer)
        })
        .await;
    assert_ne!(
        fan_out.trace_id, trace_id,
        "fan-out must link, not join, the producer's trace"
    );
    receiver
        .wait_for(SOON, "fan_out.batch linked to the SQL publisher", |s| {
            s.name == "fan_out.batch" && s.links.contains(&(sql_trace.clone(), sql_span.clone()))
        })
        .await;
    let ws_publish = receiver
        .wait_for(SOON, "root publish span of the WebSocket publish", |s| {
            s.name == "publish" && s.parent_span_id.is_empty()
        })
        .await;
    let ws_producer = (ws_publish.trace_id.clone(), ws_publish.span_id.clone());
    receiver
        .wait_for(SOON, "fan_out.batch linked to the WebSocket publish", |s| {
            s.name == "fan_out.batch" && s.links.contains(&ws_producer)
        })
        .await;

    // The LISTEN connection dies and comes back: one listener.reconnect span.
    assert_eq!(pg.terminate_sessions_named("pgpush-listener").await, 1);
    receiver
        .wait_for(Duration::from_secs(30), "listener.reconnect", |s| {
            s.name == "listener.reconnect"
        })
        .await;

    // The drain is traced, and spans buffered at exit are flushed.
    edge.signal("TERM");
    assert!(edge.wait_exit(Duration::from_secs(30)).await.success());
    receiver
        .wait_for(SOON, "drain", |s| s.name == "drain")
        .await;

    let names: BTreeSet<String> = receiver.spans().into_iter().map(|s| s.name).collect();
    for expected in SPAN_NAMES {
        assert!(
            names.contains(expected),
            "no {expected} span among {names:?}"
        );
    }
    // Only the documented spans: nothing per client or per message.
    let unexpected: Vec<&String> = names
        .iter()
        .filter(|n| !SPAN_NAMES.contains(&n.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "undocumented spans: {unexpected:?}");
}

/// The metric families a node always exports (docs/observability.md; the dashboard and alerts
/// use them).
pub(crate) const METRIC_FAMILIES: [&str; 25] = [
    "pgpush_build_info",
    "pgpush_connections",
    "pgpush_subscriptions",
    "pgpush_channels_listened",
    "pgpush_messages_received",
    "pgpush_frames_sent",
    "pgpush_bytes_sent",
    "pgpush_publish_requests",
    "pgpush_durable_commit_to_send_seconds",
    "pgpush_slow_consumer_disconnects",
    "pgpush_listener_up",
    "pgpush_listener_connections",
    "pgpush_listener_reconnects",
    "pgpush_sequencer_leader",
    "pgpush_draining",
    "pgpush_hippie_queues",
    "pgpush_durable_queries",
    "pgpush_durable_epoch_changes",
    "pgpush_durable_history_forks",
    "pgpush_durable_resets",
    "pgpush_pool_connections",
    "pgpush_pool_max_connections",
    "pgpush_pool_waiting",
    "pgpush_database_sample_ok",
    "pgpush_notification_queue_usage_ratio",
];

/// Counter and gauge values compared before and after a step.
fn delta(before: &Metrics, after: &Metrics, family: &str, labels: &[(&str, &str)]) -> f64 {
    after.try_value(family, labels).unwrap_or(0.0) - before.try_value(family, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_by_exactly_what_clients_and_postgres_do() {
    let pg = TestPostgres::start();
    let mut edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&[
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-sample-interval",
            "200ms",
            "--max-queue-messages",
            "200",
            "--unlisten-delay",
            "0",
            "--drain-window",
            "3s",
        ]),
    )
    .await;
    // Metrics live on their own address; the client port does not expose them.
    assert!(edge.metrics_address().is_some());
    let on_client_port = request(edge.address(), Method::GET, "/metrics", &[], "").await;
    assert_eq!(on_client_port.status, StatusCode::NOT_FOUND);

    // The node takes the sequencer's lock on its own after it starts serving.
    wait_until(
        SOON,
        "first sample of PostgreSQL's side, and leadership",
        || async {
            let metrics = edge.metrics().await;
            metrics.value("pgpush_database_sample_ok", &[]) == 1.0
                && metrics.value("pgpush_sequencer_leader", &[]) == 1.0
        },
    )
    .await;
    let start = edge.metrics().await;
    for family in METRIC_FAMILIES {
        assert!(
            start.families().iter().any(|f| f == family),
            "no {family} in /metrics:\n{}",
            start.text
        );
    }
    assert_eq!(start.value("pgpush_listener_up", &[]), 1.0);
    assert_eq!(start.value("pgpush_sequencer_leader", &[]), 1.0);
    assert_eq!(start.value("pgpush_draining", &[]), 0.0);

    // N = 5 connections: 3 WebSocket, 2 SSE, all on one channel.
    let mut websockets = Vec::new();
    for _ in 0..3 {
        let mut client = WsClient::connect(&edge.ws_url("/v1/ws?channel=metered")).await;
        assert_eq!(client.next_json(SOON).await["type"], "subscribed");
        websockets.push(client);
    }
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut client = SseClient::connect(edge.address(), "/v1/sse?channel=metered", &[]).await;
        assert_eq!(client.next_event(SOON).await.unwrap().event, "subscribed");
        streams.push(client);
    }
    let connected = edge.metrics().await;
    for (transport, open) in [
        ("websocket", 3.0),
        ("sse", 2.0),
        ("mxhr", 0.0),
        ("poll", 0.0),
    ] {
        assert_eq!(
            connected.value("pgpush_connections", &[("transport", transport)]),
            open,
            "{transport}"
        );
    }
    assert_eq!(connected.value("pgpush_subscriptions", &[]), 5.0);
    assert_eq!(connected.value("pgpush_channels_listened", &[]), 1.0);

    // M = 4 NOTIFYs and 2 durable publishes over HTTP, 1 ephemeral WebSocket publish, and 2
    // refused publishes: every one of the 7 messages reaches all 5 clients once.
    for n in 0..4 {
        pg.notify("metered", &format!(r#"{{"n":{n}}}"#)).await;
    }
    for n in 4..6 {
        let response = request(
            edge.address(),
            Method::POST,
            "/v1/publish/metered",
            &[],
            format!(r#"{{"n":{n}}}"#),
        )
        .await;
        assert_eq!(response.status, StatusCode::OK);
    }
    let mut publisher = WsClient::connect(&edge.ws_url("/v1/ws")).await;
    publisher
        .send_json(json!({"op": "publish", "channel": "metered", "data": {"n": 6}, "mode": "ephemeral", "ref": 1}))
        .await;
    assert_eq!(publisher.next_json(SOON).await["type"], "ack");
    drop(publisher);
    let too_long = format!("/v1/publish/{}", "x".repeat(70));
    let refused = request(edge.address(), Method::POST, &too_long, &[], "{}").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let refused = request(
        edge.address(),
        Method::POST,
        "/v1/publish/metered?mode=x",
        &[],
        "{}",
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    for client in &mut websockets {
        let mut seen: Vec<i64> = Vec::new();
        for _ in 0..7 {
            seen.push(
                client.next_message(SOON).await["data"]["n"]
                    .as_i64()
                    .unwrap(),
            );
        }
        seen.sort();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
    }
    for client in &mut streams {
        let mut seen: Vec<i64> = Vec::new();
        for _ in 0..7 {
            seen.push(
                client.next_message(SOON).await.1["data"]["n"]
                    .as_i64()
                    .unwrap(),
            );
        }
        seen.sort();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
    }
    let delivered = edge.metrics().await;
    let messages = |source| {
        delta(
            &connected,
            &delivered,
            "pgpush_messages_received",
            &[("source", source)],
        )
    };
    assert_eq!(messages("notify"), 5.0, "4 NOTIFYs and 1 ephemeral publish");
    assert_eq!(messages("durable"), 2.0);
    assert_eq!(
        delta(&connected, &delivered, "pgpush_frames_sent", &[]),
        35.0,
        "7 messages x 5 clients"
    );
    assert!(delta(&connected, &delivered, "pgpush_bytes_sent", &[]) >= 35.0 * 7.0);
    assert_eq!(
        delivered.histogram_count("pgpush_durable_commit_to_send_seconds")
            - connected.histogram_count("pgpush_durable_commit_to_send_seconds"),
        2
    );
    let requests = |via, mode, result| {
        delta(
            &connected,
            &delivered,
            "pgpush_publish_requests",
            &[("via", via), ("mode", mode), ("result", result)],
        )
    };
    assert_eq!(requests("http", "durable", "ok"), 2.0);
    assert_eq!(requests("websocket", "ephemeral", "ok"), 1.0);
    assert_eq!(requests("http", "durable", "bad_channel"), 1.0);
    assert_eq!(requests("http", "invalid", "bad_request"), 1.0);

    // K = 2 slow consumers: clients that read nothing while 12 MB arrive are cut off.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut client = WsClient::connect(&edge.ws_url("/v1/ws?channel=firehose")).await;
        assert_eq!(client.next_json(SOON).await["type"], "subscribed");
        slow.push(client);
    }
    pg.client()
        .await
        .execute(
            "SELECT pg_notify('firehose', repeat('f', 4000) || i) FROM generate_series(1, 3000) i",
            &[],
        )
        .await
        .unwrap();
    for client in &mut slow {
        assert_eq!(client.expect_close(Duration::from_secs(60)).await, 1013);
    }
    // The node may still be reading the 3,000 notifications when the clients are cut.
    wait_until(SOON, "3,000 notifications received", || async {
        let now = edge.metrics().await;
        delta(
            &delivered,
            &now,
            "pgpush_messages_received",
            &[("source", "notify")],
        ) == 3000.0
    })
    .await;
    let cut = edge.metrics().await;
    assert_eq!(
        delta(&delivered, &cut, "pgpush_slow_consumer_disconnects", &[]),
        2.0
    );

    // The LISTEN connection is killed: one reconnect, and the listener is up again.
    assert_eq!(pg.terminate_sessions_named("pgpush-listener").await, 1);
    wait_until(Duration::from_secs(30), "listener reconnected", || async {
        let now = edge.metrics().await;
        delta(&cut, &now, "pgpush_listener_reconnects", &[]) == 1.0
            && now.value("pgpush_listener_up", &[]) == 1.0
    })
    .await;

    // Sampled from PostgreSQL: the queue is empty again and the sequencer has no backlog.
    wait_until(SOON, "database sample", || async {
        let now = edge.metrics().await;
        now.value("pgpush_database_sample_ok", &[]) == 1.0
            && now.value("pgpush_notification_queue_usage_ratio", &[]) == 0.0
            && now.value("pgpush_sequencer_backlog_events", &[]) == 0.0
            && now.value("pgpush_durable_last_position", &[]) == 2.0
            && now.value("pgpush_durable_head_position", &[]) == 2.0
    })
    .await;

    // Clients leave: the gauges return to zero.
    drop(websockets);
    drop(streams);
    drop(slow);
    wait_until(SOON, "connection gauges back to zero", || async {
        let now = edge.metrics().await;
        ["websocket", "sse"]
            .iter()
            .all(|t| now.value("pgpush_connections", &[("transport", t)]) == 0.0)
            && now.value("pgpush_subscriptions", &[]) == 0.0
    })
    .await;

    // A draining node can still be scraped on its metrics address.
    let _lingering = WsClient::connect(&edge.ws_url("/v1/ws?channel=metered")).await;
    edge.signal("TERM");
    wait_until(SOON, "draining reported", || async {
        edge.metrics().await.value("pgpush_draining", &[]) == 1.0
    })
    .await;
    assert!(edge.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_json_lines_with_pgpush_log_format_json() {
    let pg = TestPostgres::start();
    let json_edge = Edge::start_with(
        &pg.url(),
        EdgeOptions {
            env: vec![("PGPUSH_LOG_FORMAT".into(), "json".into())],
            ..EdgeOptions::default()
        },
    )
    .await;
    let quiet_edge = Edge::start_with(
        &pg.url(),
        EdgeOptions {
            env: vec![("RUST_LOG".into(), "warn".into())],
            ..EdgeOptions::default()
        },
    )
    .await;
    let log = json_edge.log();
    let records: Vec<serde_json::Value> = log
        .lines()
        .filter(|line| !line.starts_with("stdout: "))
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
        })
        .collect();
    let listening = records
        .iter()
        .find(|r| r["fields"]["message"] == "pgpush listening")
        .unwrap_or_else(|| panic!("no listening record in:\n{log}"));
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["target"], "pgpush_edge::app");
    assert!(listening["timestamp"].is_string());
    // RUST_LOG sets the level: at warn, the info line is not written.
    assert!(
        !quiet_edge.log().contains("pgpush listening"),
        "{}",
        quiet_edge.log()
    );
}

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `promtool` with `args` in `dir`; panics with its output unless it succeeds.
fn promtool(dir: &std::path::Path, args: &[&str]) {
    let output = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|_| {
            panic!("promtool not found; install it with: scripts/test --install-only (apt-get install -y prometheus)")
        });
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every PromQL expression in a Grafana dashboard (panel targets and variable queries).
fn dashboard_expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr" | "definition", serde_json::Value::String(expr)) => {
                        out.push(expr.clone())
                    }
                    _ => dashboard_expressions(inner, out),
                }
            }
        }
        serde_json::Value::Array(items) => items
            .iter()
            .for_each(|item| dashboard_expressions(item, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alert_rules_use_exported_metrics_and_valid_promql() {
    let root = workspace();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/pgpush.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut expressions = Vec::new();
    dashboard_expressions(&dashboard["panels"], &mut expressions);
    assert!(expressions.len() >= 20, "{expressions:?}");
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/pgpush-alerts.yml")).unwrap();

    // Every metric they name is one a node exports.
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--metrics-sample-interval", "200ms"]),
    )
    .await;
    wait_until(SOON, "a full scrape", || async {
        let metrics = edge.metrics().await;
        metrics.try_value("pgpush_database_sample_ok", &[]) == Some(1.0)
            && metrics
                .try_value("pgpush_durable_head_position", &[])
                .is_some()
    })
    .await;
    let families = edge.metrics().await.families();
    let mut named = BTreeSet::new();
    for text in expressions
        .iter()
        .map(String::as_str)
        .chain([alerts.as_str()])
    {
        for (start, _) in text.match_indices("pgpush_") {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            named.insert(name);
        }
    }
    for name in &named {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| families.iter().any(|f| f == base))
            .unwrap_or(name);
        assert!(
            families.iter().any(|f| f == family),
            "{name} is used by the dashboard or the alerts but not exported; exported: {families:?}"
        );
    }

    // The alert rules are valid and fire as their unit tests say.
    let rules_dir = root.join("deploy/prometheus");
    promtool(&rules_dir, &["check", "rules", "pgpush-alerts.yml"]);
    promtool(&rules_dir, &["test", "rules", "pgpush-alerts.test.yml"]);

    // The dashboard's queries parse: checked as recording rules, Grafana's variables filled in.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, expr) in expressions.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$job", "pgpush");
        rules.push_str(&format!(
            "      - record: dashboard:query_{index}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    promtool(dir.path(), &["check", "rules", "dashboard.yml"]);
}
