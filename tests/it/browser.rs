//! The pages and pgpush.js in a real headless Chromium: the map follows the `person` table, the
//! chat delivers once to every page, the client falls back and survives a killed node, and both
//! pages start over from the database when a restore from a backup loses what they showed.

use std::time::{Duration, Instant};

use pgpush_tests::{
    Browser, Edge, EdgeOptions, Nginx, Page, TestPostgres, WsClient, browser::screenshot_path,
    edge::pgpush_binary, http, tokens, wait_until,
};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::SOON;

/// A cluster with the location demo installed by `pgpush demo setup` (schema and trigger).
async fn demo_database() -> TestPostgres {
    let postgres = TestPostgres::start();
    let output = Command::new(pgpush_binary())
        .args(["demo", "setup", "--database-url", &postgres.url()])
        .output()
        .await
        .expect("run pgpush demo setup");
    assert!(
        output.status.success(),
        "pgpush demo setup failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    postgres
}

const CONNECTED: &str = "window.pgpushDemo?.client.state === 'connected'";

/// `{lat, lon, left, top, expectedLeft, expectedTop, hidden}` of person `id`'s marker, read from
/// the page: its data attributes, its CSS position, and where the map projects its location.
async fn marker(browser: &mut Browser, page: &Page, id: i32) -> Value {
    browser
        .eval(
            page,
            &format!(
                "(() => {{
                    const m = document.querySelector('.marker[data-id=\"{id}\"]');
                    if (!m) return null;
                    const lat = parseFloat(m.dataset.lat), lon = parseFloat(m.dataset.lon);
                    const p = m.hidden ? null : window.pgpushDemo.map.project(lat, lon);
                    return {{ lat, lon, hidden: m.hidden,
                              left: parseFloat(m.style.left), top: parseFloat(m.style.top),
                              expectedLeft: p?.x, expectedTop: p?.y }};
                }})()"
            ),
        )
        .await
}

fn assert_placed(marker: &Value, latitude: f64, longitude: f64) {
    let number = |key: &str| marker[key].as_f64().unwrap_or(f64::NAN);
    assert!((number("lat") - latitude).abs() < 1e-9, "{marker}");
    assert!((number("lon") - longitude).abs() < 1e-9, "{marker}");
    assert!(
        (number("left") - number("expectedLeft")).abs() < 0.1,
        "{marker}"
    );
    assert!(
        (number("top") - number("expectedTop")).abs() < 0.1,
        "{marker}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn map_markers_follow_updates_and_inserts_in_the_person_table() {
    let postgres = demo_database().await;
    let db = postgres.client().await;
    db.batch_execute(
        "INSERT INTO person (name, loc) VALUES
             ('Ada', 'POINT(4.8900 52.3700)'), ('Bram', 'POINT(4.9000 52.3750)'), ('Nobody', NULL)",
    )
    .await
    .unwrap();
    let edge = Edge::start_with(&postgres.url(), EdgeOptions::args(&["--demo"])).await;
    let mut browser = Browser::start().await;
    let page = browser.new_page(None).await;
    browser
        .goto(&page, &format!("http://{}/demo/map", edge.address()))
        .await;
    browser
        .wait_for(
            &page,
            &format!("{CONNECTED} && document.querySelectorAll('.marker').length === 3"),
            SOON,
        )
        .await;
    let ada = marker(&mut browser, &page, 1).await;
    assert_placed(&ada, 52.37, 4.89);
    assert_eq!(marker(&mut browser, &page, 3).await["hidden"], true);
    assert_eq!(
        browser
            .eval(
                &page,
                "document.querySelector('#people li[data-id=\"3\"] .where').textContent"
            )
            .await,
        "location unknown"
    );

    // A move in PostgreSQL moves the marker on the open page within 2 s.
    db.execute(
        "UPDATE person SET loc = 'POINT(4.8952 52.3702)' WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    let committed = Instant::now();
    browser
        .wait_for(
            &page,
            "Math.abs(document.querySelector('.marker[data-id=\"1\"]').dataset.lon - 4.8952) < 1e-9",
            Duration::from_secs(2),
        )
        .await;
    assert!(committed.elapsed() < Duration::from_secs(2));
    let moved = marker(&mut browser, &page, 1).await;
    assert_placed(&moved, 52.3702, 4.8952);
    let shift = moved["left"].as_f64().unwrap() - ada["left"].as_f64().unwrap();
    assert!(
        shift > 5.0,
        "moved 0.0052° east: the marker moved {shift} px"
    );

    // An insert adds a marker; a person given a location appears.
    let id: i32 = db
        .query_one(
            "INSERT INTO person (name, loc) VALUES ('Chloé', 'POINT(4.8800 52.3720)') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    db.execute(
        "UPDATE person SET loc = 'POINT(4.8850 52.3690)' WHERE id = 3",
        &[],
    )
    .await
    .unwrap();
    let inserted = Instant::now();
    browser
        .wait_for(
            &page,
            &format!(
                "document.querySelectorAll('.marker').length === 4
                 && document.querySelector('.marker[data-id=\"{id}\"]')
                 && !document.querySelector('.marker[data-id=\"3\"]').hidden"
            ),
            Duration::from_secs(2),
        )
        .await;
    assert!(inserted.elapsed() < Duration::from_secs(2));
    assert_placed(&marker(&mut browser, &page, id).await, 52.372, 4.88);
    assert_placed(&marker(&mut browser, &page, 3).await, 52.369, 4.885);
    assert_eq!(
        browser
            .eval(
                &page,
                &format!("document.querySelector('.marker[data-id=\"{id}\"] .label').textContent")
            )
            .await,
        "Chloé"
    );
    browser.screenshot(&page, &screenshot_path("map.png")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_map_receives_only_the_moves_inside_its_viewport_and_follows_a_pan() {
    let postgres = demo_database().await;
    let db = postgres.client().await;
    // Ada in the view, Bram 5 km east of it, Chloé 5 km north.
    db.batch_execute(
        "INSERT INTO person (name, loc) VALUES ('Ada', 'POINT(4.8926 52.3731)'),
             ('Bram', 'POINT(4.9650 52.3731)'), ('Chloé', 'POINT(4.8926 52.4200)')",
    )
    .await
    .unwrap();
    let edge = Edge::start_with(&postgres.url(), EdgeOptions::args(&["--demo"])).await;
    let mut browser = Browser::start().await;
    let page = browser.new_page(None).await;
    browser
        .goto(
            &page,
            &format!("http://{}/demo/map?view=52.3731,4.8926,16", edge.address()),
        )
        .await;
    browser
        .wait_for(
            &page,
            &format!(
                "{CONNECTED} && window.pgpushDemo.client.filter?.op === 'within'
                 && document.querySelectorAll('.marker').length === 3"
            ),
            SOON,
        )
        .await;
    let move_to = |id: i32, lon: f64, lat: f64| {
        let db = &db;
        async move {
            db.execute(
                "UPDATE person SET loc = ST_SetSRID(ST_MakePoint($2, $3), 4326)::geography WHERE id = $1",
                &[&id, &lon, &lat],
            )
            .await
            .unwrap();
        }
    };
    let marker_at = |id: i32, lon: f64| {
        format!(
            "Math.abs(document.querySelector('.marker[data-id=\"{id}\"]').dataset.lon - {lon}) < 1e-9"
        )
    };

    // Moves inside and outside the view, in one order; the last inside one comes after all of
    // them, so once it is shown any outside move sent would have been shown too.
    for step in 1..=5 {
        let east = f64::from(step) * 0.0001;
        move_to(1, 4.8926 + east, 52.3731).await;
        move_to(2, 4.9650 + east, 52.3731).await;
        move_to(3, 4.8926 + east, 52.4200).await;
    }
    move_to(1, 4.8940, 52.3735).await;
    browser.wait_for(&page, &marker_at(1, 4.894), SOON).await;
    let counts = browser
        .eval(
            &page,
            "JSON.stringify(Object.fromEntries(window.pgpushDemo.received))",
        )
        .await;
    assert_eq!(
        counts,
        json!(r#"{"1":6}"#),
        "only Ada's moves reach the page"
    );
    assert_placed(&marker(&mut browser, &page, 2).await, 52.3731, 4.965);

    // Panning to Bram re-subscribes with the new view: his moves come, Ada's no longer do.
    browser
        .eval(&page, "window.pgpushDemo.map.setView(52.3731, 4.9650)")
        .await;
    browser
        .wait_for(
            &page,
            &format!(
                "window.pgpushDemo.client.filter?.value[0] > 4.93 && {}",
                marker_at(2, 4.9655)
            ),
            SOON,
        )
        .await;
    move_to(1, 4.8950, 52.3735).await;
    move_to(2, 4.9660, 52.3740).await;
    browser.wait_for(&page, &marker_at(2, 4.966), SOON).await;
    let counts = browser
        .eval(
            &page,
            "JSON.stringify(Object.fromEntries(window.pgpushDemo.received))",
        )
        .await;
    assert_eq!(counts, json!(r#"{"1":6,"2":1}"#));
    assert_placed(&marker(&mut browser, &page, 1).await, 52.3735, 4.894);
}

/// A JavaScript condition: some chat line on the page reads exactly `text`.
fn chat_line_shown(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages .text')].some((e) => e.textContent === {})",
        json!(text)
    )
}

/// Number of chat lines reading exactly `text` on `page`.
async fn chat_lines(browser: &mut Browser, page: &Page, text: &str) -> u64 {
    browser
        .eval(
            page,
            &format!(
                "[...document.querySelectorAll('#messages .text')].filter((e) => e.textContent === {}).length",
                json!(text)
            ),
        )
        .await
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_message_appears_once_in_every_page_including_the_senders() {
    let postgres = TestPostgres::start();
    let edge = Edge::start(&postgres.url()).await;
    let mut browser = Browser::start().await;
    let url = format!("http://{}/demo/chat", edge.address());
    let alice = browser.new_page(None).await;
    let bob = browser.new_page(None).await;
    for (page, nick) in [(&alice, "alice"), (&bob, "bob")] {
        browser.goto(page, &url).await;
        browser.fill(page, "#nick", nick).await;
        browser.wait_for(page, CONNECTED, SOON).await;
    }
    let text = format!("hello from alice {}", std::process::id());
    browser.fill(&alice, "#text", &text).await;
    browser.press(&alice, "#text", "Enter").await;
    for page in [&alice, &bob] {
        browser.wait_for(page, &chat_line_shown(&text), SOON).await;
    }
    // Nothing arrives twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(chat_lines(&mut browser, &alice, &text).await, 1);
    assert_eq!(chat_lines(&mut browser, &bob, &text).await, 1);
    let mine = "[...document.querySelectorAll('#messages li')].at(-1).classList.contains('mine')";
    assert_eq!(browser.eval(&alice, mine).await, true);
    assert_eq!(browser.eval(&bob, mine).await, false);
    assert_eq!(
        browser
            .eval(&alice, "document.querySelector('#text').value")
            .await,
        "",
        "the input is cleared once sent"
    );

    // A NOTIFY from any session shows up too, as the original's chat did.
    postgres.notify("chat", "hello from psql").await;
    for page in [&alice, &bob] {
        browser
            .wait_for(
                page,
                "[...document.querySelectorAll('#messages li')].some((e) =>
                    e.querySelector('.text').textContent === 'hello from psql'
                    && e.querySelector('.meta').textContent.includes('ephemeral'))",
                SOON,
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_falls_back_to_sse_then_long_poll_when_transports_are_missing_or_blocked() {
    let postgres = TestPostgres::start();
    let edge = Edge::start(&postgres.url()).await;
    let mut browser = Browser::start().await;
    let url = format!("http://{}/demo/chat", edge.address());
    let cases = [
        ("window.WebSocket = undefined;", "sse"),
        // A WebSocket that a proxy blocks: every attempt fails; the client gives it up.
        (
            "const Real = window.WebSocket;
             window.WebSocket = class extends Real { constructor() { super('ws://127.0.0.1:9/blocked'); } };",
            "sse",
        ),
        (
            "window.WebSocket = undefined; window.EventSource = undefined;",
            "poll",
        ),
    ];
    for (index, (init_script, transport)) in cases.into_iter().enumerate() {
        let page = browser.new_page(Some(init_script)).await;
        browser.goto(&page, &url).await;
        browser
            .wait_for(
                &page,
                &format!("{CONNECTED} && window.pgpushDemo.client.transport === '{transport}'"),
                SOON,
            )
            .await;
        let text = format!("over {transport}, case {index}");
        let body = json!({"type": "chat", "nick": "curl", "text": text}).to_string();
        let response = http::post(edge.address(), "/v1/publish/chat", body).await;
        assert_eq!(response.status, 200, "{}", response.text());
        browser.wait_for(&page, &chat_line_shown(&text), SOON).await;
        // Publishing from the page works without a WebSocket (an HTTP POST).
        let own = format!("typed over {transport}, case {index}");
        browser.fill(&page, "#text", &own).await;
        browser.press(&page, "#text", "Enter").await;
        browser.wait_for(&page, &chat_line_shown(&own), SOON).await;
        browser.close(&page).await;
    }
}

/// Publishes `first..=last` on `seq` as durable events, one transaction each, `gap` apart.
async fn publish_sequence(postgres: &TestPostgres, first: i32, last: i32, gap: Duration) {
    let db = postgres.client().await;
    for n in first..=last {
        db.execute("SELECT pgpush.publish('seq', $1::text)", &[&n.to_string()])
            .await
            .unwrap();
        tokio::time::sleep(gap).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn page_reconnects_through_nginx_after_its_node_is_killed_without_a_gap() {
    let postgres = TestPostgres::start();
    let mut nodes = [
        Edge::start(&postgres.url()).await,
        Edge::start(&postgres.url()).await,
    ];
    let addresses: Vec<_> = nodes.iter().map(Edge::address).collect();
    let nginx = Nginx::start("http", &addresses, false).await;
    let mut browser = Browser::start().await;
    let page = browser.new_page(None).await;
    browser
        .goto(&page, &format!("http://{}/", nginx.address()))
        .await;
    browser
        .eval(
            &page,
            "(async () => {
                const { PgPush } = await import('/pgpush.js');
                window.received = [];
                window.connects = [];
                window.seq = new PgPush({ channels: ['seq'] });
                seq.on('message', (m) => received.push(m.data));
                seq.on('connected', (e) => connects.push(e.transport));
                return true;
            })()",
        )
        .await;
    browser
        .wait_for(&page, "window.seq.state === 'connected'", SOON)
        .await;
    publish_sequence(&postgres, 1, 10, Duration::ZERO).await;
    browser
        .wait_for(&page, "window.received.length >= 10", SOON)
        .await;

    // SIGKILL the node holding the page's WebSocket while events keep being published.
    let mut holder = None;
    for (index, node) in nodes.iter().enumerate() {
        if node.stats().await.connections.websocket == 1 {
            holder = Some(index);
        }
    }
    let holder = holder.expect("one node holds the page's WebSocket");
    let publisher = tokio::spawn({
        let postgres_url = postgres.url();
        async move {
            let (db, connection) = tokio_postgres::connect(&postgres_url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            for n in 11..=40 {
                db.execute("SELECT pgpush.publish('seq', $1::text)", &[&n.to_string()])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes[holder].kill().await;
    publisher.await.unwrap();
    browser
        .wait_for(&page, "window.received.length >= 40", SOON)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = browser.eval(&page, "window.received").await;
    let expected: Vec<Value> = (1..=40).map(|n| json!(n)).collect();
    assert_eq!(
        received,
        json!(expected),
        "every durable message once, in order"
    );
    let connects = browser.eval(&page, "window.connects").await;
    assert!(
        connects.as_array().unwrap().len() >= 2,
        "the page reconnected: {connects}"
    );
    assert_eq!(
        nodes[1 - holder].stats().await.connections.websocket,
        1,
        "the surviving node holds the page now"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_page_shows_live_numbers_while_the_simulator_runs() {
    let postgres = demo_database().await;
    let edge = Edge::start_with(&postgres.url(), EdgeOptions::args(&["--demo"])).await;
    let mut simulator = Command::new(pgpush_binary())
        .args(["demo", "simulate", "--people", "8", "--rate", "20"])
        .args(["--database-url", &postgres.url()])
        .kill_on_drop(true)
        .spawn()
        .expect("start the simulator");
    let mut browser = Browser::start().await;
    let map = browser.new_page(None).await;
    browser
        .goto(&map, &format!("http://{}/demo/map", edge.address()))
        .await;
    browser.wait_for(&map, CONNECTED, SOON).await;
    let stats = browser.new_page(None).await;
    browser
        .goto(&stats, &format!("http://{}/stats", edge.address()))
        .await;
    let number = |id: &str| {
        format!("parseFloat(document.getElementById('{id}').textContent.replace(/,/g, ''))")
    };
    browser
        .wait_for(
            &stats,
            &format!(
                "{} >= 1 && {} > 0 && {} > 0",
                number("total-connections"),
                number("total-in-rate"),
                number("total-out-rate")
            ),
            SOON,
        )
        .await;
    let row = browser
        .eval(
            &stats,
            "Object.fromEntries([...document.querySelectorAll('#nodes tr td')].map((td) => [td.dataset.field, td.textContent]))",
        )
        .await;
    assert_eq!(row["listener"], "up", "{row}");
    assert_eq!(row["websocket"], "1", "{row}");
    assert_ne!(row["channels_listened"], "0", "{row}");
    // Let the chart draw a few seconds of history before the picture.
    tokio::time::sleep(Duration::from_secs(3)).await;
    browser
        .screenshot(&stats, &screenshot_path("stats.png"))
        .await;
    browser
        .screenshot(&map, &screenshot_path("map-simulated.png"))
        .await;
    simulator.start_kill().unwrap();
    let _ = simulator.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_serves_the_client_library_and_the_pages() {
    let postgres = TestPostgres::start();
    let edge = Edge::start(&postgres.url()).await;
    let client = http::get(edge.address(), "/pgpush.js").await;
    assert_eq!(client.status, 200);
    assert_eq!(
        client.headers["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        client.text(),
        include_str!("../../clients/js/pgpush.js"),
        "served byte for byte"
    );
    let types = http::get(edge.address(), "/pgpush.d.ts").await;
    assert_eq!(types.text(), include_str!("../../clients/js/pgpush.d.ts"));
    for (path, content_type) in [
        ("/site.css", "text/css; charset=utf-8"),
        ("/site.js", "text/javascript; charset=utf-8"),
    ] {
        let file = http::get(edge.address(), path).await;
        assert_eq!(file.status, 200, "{path}");
        assert_eq!(file.headers["content-type"], content_type, "{path}");
    }
    for path in ["/", "/stats", "/demo/map", "/demo/chat"] {
        let page = http::get(edge.address(), path).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(
            page.headers["content-type"], "text/html; charset=utf-8",
            "{path}"
        );
        assert!(page.text().contains("<!doctype html>"), "{path}");
    }
    let refused = http::post(edge.address(), "/demo/map", "x").await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.json()["error"], "method_not_allowed");
    // The snapshot is off unless the node runs the demo.
    let off = http::get(edge.address(), "/demo/people").await;
    assert_eq!(off.status, 404);
    assert_eq!(off.json()["error"], "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn type_declarations_compile_against_a_typed_use_of_the_client() {
    let dir = pgpush_tests::browser::browser_dir();
    let tsc = dir.join("node_modules/.bin/tsc");
    assert!(
        tsc.is_file(),
        "TypeScript is not installed in tests/browser: run `scripts/test --install-only`"
    );
    let output = Command::new(tsc)
        .args([
            "--noEmit", "--strict", "--target", "es2022", "--module", "es2022",
        ])
        .args([
            "--moduleResolution",
            "bundler",
            "--lib",
            "es2022,dom",
            "typecheck.ts",
        ])
        .current_dir(&dir)
        .output()
        .await
        .expect("run tsc");
    assert!(
        output.status.success(),
        "tsc: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A script starting a PgPush client on the page as `window.<name>` (`client`, and what it saw:
/// `calls` of its token function, the `n` of each message `received`, the `closes` codes),
/// subscribed to `news` over `transports`; its token function hands out `tokens` in turn, the
/// last one again after that.
fn token_client(name: &str, transports: &str, tokens: &Value) -> String {
    format!(
        "import('/pgpush.js').then(({{ PgPush }}) => {{
           const tokens = {tokens};
           const seen = {{ calls: 0, received: [], closes: [] }};
           seen.client = new PgPush({{ channels: ['news'], transports: {transports}, token: async () => {{
             seen.calls += 1;
             return tokens[Math.min(seen.calls, tokens.length) - 1];
           }} }});
           seen.client.on('message', (m) => seen.received.push(m.data.n));
           seen.client.on('disconnected', ({{ code }}) => seen.closes.push(code));
           window.{name} = seen;
           return true;
         }})"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_renews_its_token_in_band_and_reconnects_with_a_fresh_one_when_it_must() {
    let postgres = TestPostgres::start();
    let secret = "browser test secret, long enough for HS256";
    let edge = Edge::start_with(
        &postgres.url(),
        EdgeOptions::args(&["--jwt-secret", secret, "--jwt-leeway", "0s"]),
    )
    .await;
    let mut browser = Browser::start().await;
    let page = browser.new_page(None).await;
    browser
        .goto(&page, &format!("http://{}/", edge.address()))
        .await;
    // Signed when needed (the page is up by then), so a short token is fresh at its first use.
    let token = |seconds: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"exp": now + seconds, "subscribe": ["news"], "publish": ["news"]}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    // The first token lasts 4 s, the next an hour; the page's token function hands them out.
    let tokens = json!([token(4), token(3600)]);
    browser
        .eval(
            &page,
            &token_client("ws", "['websocket', 'sse', 'poll']", &tokens),
        )
        .await;
    browser
        .wait_for(&page, "window.ws.client.state === 'connected'", SOON)
        .await;
    let publish = |n: i32| {
        let postgres = &postgres;
        async move {
            postgres
                .client()
                .await
                .execute(
                    "SELECT pgpush.publish('news', $1::text)",
                    &[&format!(r#"{{"n":{n}}}"#)],
                )
                .await
                .unwrap();
        }
    };
    publish(1).await;
    browser
        .wait_for(&page, "window.ws.received.length === 1", SOON)
        .await;
    // Before the first token runs out the client sends the next one over the live WebSocket:
    // the connection outlives the first token, nothing closes.
    browser.wait_for(&page, "window.ws.calls === 2", SOON).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish(2).await;
    browser
        .wait_for(&page, "window.ws.received.length === 2", SOON)
        .await;
    assert_eq!(browser.eval(&page, "window.ws.closes").await, json!([]));

    // Over SSE there is no in-band renewal: the stream ends at expiry and the client comes back
    // with a fresh token and its cursor, missing nothing.
    let tokens = json!([token(3), token(3600)]);
    browser
        .eval(&page, &token_client("sse", "['sse']", &tokens))
        .await;
    browser
        .wait_for(&page, "window.sse.client.state === 'connected'", SOON)
        .await;
    browser
        .wait_for(&page, "window.sse.calls === 2", SOON)
        .await;
    publish(3).await;
    browser
        .wait_for(
            &page,
            "window.ws.received.length === 3 && window.sse.received.includes(3)",
            SOON,
        )
        .await;
    assert_eq!(
        browser.eval(&page, "window.ws.received").await,
        json!([1, 2, 3])
    );
    assert_eq!(browser.eval(&page, "window.ws.calls").await, json!(2));
    browser.close(&page).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_from_a_backup_resets_the_pages_and_every_cursor_past_it() {
    let postgres = demo_database().await;
    let db = postgres.client().await;
    db.batch_execute("INSERT INTO person (name, loc) VALUES ('Ada', 'POINT(4.8900 52.3700)')")
        .await
        .unwrap();
    let edge = Edge::start_with(&postgres.url(), EdgeOptions::args(&["--demo"])).await;
    let mut browser = Browser::start().await;
    let map = browser.new_page(None).await;
    browser
        .goto(&map, &format!("http://{}/demo/map", edge.address()))
        .await;
    let chat = browser.new_page(None).await;
    browser
        .goto(&chat, &format!("http://{}/demo/chat", edge.address()))
        .await;
    let markers = |n: usize| format!("document.querySelectorAll('.marker').length === {n}");
    browser
        .wait_for(&map, &format!("{CONNECTED} && {}", markers(1)), SOON)
        .await;
    browser.wait_for(&chat, CONNECTED, SOON).await;
    let say = |text: &str| json!({"type": "chat", "nick": "test", "text": text}).to_string();
    http::post(edge.address(), "/v1/publish/chat", say("before the backup")).await;
    browser
        .wait_for(&chat, &chat_line_shown("before the backup"), SOON)
        .await;

    // The backup; then changes the restore will lose, which the pages show meanwhile.
    let backup = postgres.cold_backup().await;
    let db = postgres.client().await;
    db.batch_execute(
        "UPDATE person SET loc = 'POINT(4.9100 52.3800)' WHERE name = 'Ada';
         INSERT INTO person (name, loc) VALUES ('Lost', 'POINT(4.9000 52.3600)');",
    )
    .await
    .unwrap();
    let lost = "lost with the restore";
    wait_until(SOON, "the node publishes again", || async {
        http::post(edge.address(), "/v1/publish/chat", say(lost))
            .await
            .status
            == 200
    })
    .await;
    browser.wait_for(&map, &markers(2), SOON).await;
    browser.wait_for(&chat, &chat_line_shown(lost), SOON).await;
    let past_the_backup = browser
        .eval(&chat, "window.pgpushDemo.client.cursor")
        .await
        .as_str()
        .expect("a cursor")
        .to_owned();

    postgres.restore(backup).await;
    // The map reloads the table as the backup has it; the chat starts over and says why.
    browser
        .wait_for(
            &map,
            &format!(
                "{} && Math.abs(document.querySelector('.marker').dataset.lon - 4.89) < 1e-9",
                markers(1)
            ),
            Duration::from_secs(20),
        )
        .await;
    browser
        .wait_for(
            &chat,
            "!!document.querySelector('#messages li.notice')",
            SOON,
        )
        .await;
    assert_eq!(chat_lines(&mut browser, &chat, lost).await, 0);
    browser
        .screenshot(&chat, &screenshot_path("chat-after-restore.png"))
        .await;

    // Then both go on live, once.
    let db = postgres.client().await;
    wait_until(SOON, "the node publishes again", || async {
        http::post(edge.address(), "/v1/publish/chat", say("after the restore"))
            .await
            .status
            == 200
    })
    .await;
    browser
        .wait_for(&chat, &chat_line_shown("after the restore"), SOON)
        .await;
    db.batch_execute("UPDATE person SET loc = 'POINT(4.8800 52.3650)' WHERE name = 'Ada'")
        .await
        .unwrap();
    browser
        .wait_for(
            &map,
            "Math.abs(document.querySelector('.marker').dataset.lon - 4.88) < 1e-9",
            SOON,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        chat_lines(&mut browser, &chat, "after the restore").await,
        1
    );
    browser
        .screenshot(&map, &screenshot_path("map-after-restore.png"))
        .await;

    // A cursor from after the backup names events the restored database never had.
    let url = edge.ws_url(&format!("/v1/ws?channel=chat&since={past_the_backup}"));
    let mut client = pgpush_tests::WsClient::connect(&url).await;
    let reset = client.next_json(SOON).await;
    assert_eq!(reset["type"], "reset", "{reset}");
    assert_eq!(reset["reason"], "history changed");
    assert!(edge.log().contains("PostgreSQL lost durable events"));
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_shows_the_last_50_messages_and_who_is_in_the_room_live() {
    let postgres = TestPostgres::start();
    let edge = Edge::start(&postgres.url()).await;
    let db = postgres.client().await;
    db.execute(
        "SELECT pgpush.publish('chat', json_build_object('type', 'chat', 'nick', 'early',
                                                         'text', 'm' || i)::text)
         FROM generate_series(1, 60) i",
        &[],
    )
    .await
    .unwrap();
    wait_until(SOON, "the 60 messages positioned", || async {
        http::get(edge.address(), "/v1/history?channel=chat&limit=100")
            .await
            .json()["messages"]
            .as_array()
            .is_some_and(|m| m.len() == 60)
    })
    .await;
    let mut browser = Browser::start().await;
    let url = format!("http://{}/demo/chat", edge.address());
    let alice = browser.new_page(None).await;
    browser.goto(&alice, &url).await;
    browser.wait_for(&alice, CONNECTED, SOON).await;
    // The last 50, oldest first, then live.
    let texts = "[...document.querySelectorAll('#messages .text')].map((e) => e.textContent)";
    browser
        .wait_for(&alice, &format!("{texts}.length === 50"), SOON)
        .await;
    let expected: Vec<String> = (11..=60).map(|i| format!("m{i}")).collect();
    assert_eq!(browser.eval(&alice, texts).await, json!(expected));
    db.execute(
        "SELECT pgpush.publish('chat', '{\"type\":\"chat\",\"nick\":\"late\",\"text\":\"m61\"}')",
        &[],
    )
    .await
    .unwrap();
    browser
        .wait_for(&alice, &chat_line_shown("m61"), SOON)
        .await;
    assert_eq!(browser.eval(&alice, &format!("{texts}.length")).await, 51);

    // Who is in the room: alice herself, then bob's page and a WebSocket client join and leave.
    let count = "Number(document.querySelector('#count').textContent)";
    browser
        .wait_for(&alice, &format!("{count} === 1"), SOON)
        .await;
    assert_eq!(
        browser
            .eval(&alice, "document.querySelector('#present li.me') !== null")
            .await,
        true
    );
    let bob = browser.new_page(None).await;
    browser.goto(&bob, &url).await;
    browser.wait_for(&bob, CONNECTED, SOON).await;
    browser
        .wait_for(&bob, &format!("{count} === 2"), SOON)
        .await;
    browser
        .wait_for(&alice, &format!("{count} === 2"), SOON)
        .await;
    let mut socket = WsClient::connect(&edge.ws_url("/v1/ws")).await;
    socket
        .send_json(json!({"op": "subscribe", "channels": ["chat"], "presence": true}))
        .await;
    let id = socket.next_json(SOON).await["presence_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let listed = format!(
        "[...document.querySelectorAll('#present li')].some((e) => e.title === {})",
        json!(id)
    );
    browser.wait_for(&alice, &listed, SOON).await;
    drop(socket);
    browser.wait_for(&alice, &format!("!{listed}"), SOON).await;
    browser.close(&bob).await;
    browser
        .wait_for(&alice, &format!("{count} === 1"), SOON)
        .await;
    browser
        .screenshot(&alice, &screenshot_path("chat.png"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgpush_js_never_reconnects_with_a_token_the_server_disconnected() {
    const SECRET: &str = "a browser test secret long enough for HS256";
    let postgres = TestPostgres::start();
    let edge = Edge::start_with(
        &postgres.url(),
        EdgeOptions::args(&["--jwt-secret", SECRET]),
    )
    .await;
    let token = |jti: &str| {
        tokens::hs256(
            SECRET,
            json!({"sub": "alice", "jti": jti, "exp": tokens::now() + 3600,
                   "subscribe": ["room"], "info": {"name": "Alice"}}),
        )
    };
    let mut browser = Browser::start().await;
    let page = browser.new_page(None).await;
    browser
        .goto(&page, &format!("http://{}/", edge.address()))
        .await;
    browser
        .eval(
            &page,
            &format!(
                "(async () => {{
                    const {{ PgPush }} = await import('/pgpush.js');
                    window.errors = [];
                    window.joins = [];
                    // A fixed token, and a token function that gives a new one each time.
                    window.fixed = new PgPush({{ channels: ['room'], token: {fixed}, presence: true }});
                    fixed.on('error', (e) => errors.push(e.code));
                    fixed.on('join', (e) => joins.push(e.client));
                    window.fixedConnects = 0;
                    fixed.on('connected', () => fixedConnects++);
                    const fresh = [{first}, {second}];
                    window.renewing = new PgPush({{ channels: ['room'], token: () => fresh.shift() ?? {second} }});
                    window.renewals = 0;
                    renewing.on('connected', () => renewals++);
                    return true;
                }})()",
                fixed = json!(token("fixed")),
                first = json!(token("renewing-1")),
                second = json!(token("renewing-2")),
            ),
        )
        .await;
    browser
        .wait_for(
            &page,
            "fixed.state === 'connected' && renewing.state === 'connected'",
            SOON,
        )
        .await;
    // Its own join, with the token's user and info; the cluster's list over HTTP.
    browser
        .wait_for(&page, "joins.some((c) => c.id === fixed.presenceId && c.user === 'alice' && c.info.name === 'Alice')", SOON)
        .await;
    let listed = browser
        .eval(
            &page,
            "fixed.presence('room').then((p) => p.clients.map((c) => c.id))",
        )
        .await;
    assert_eq!(
        listed,
        json!([browser.eval(&page, "fixed.presenceId").await])
    );

    postgres
        .client()
        .await
        .execute("SELECT pgpush.disconnect('alice')", &[])
        .await
        .unwrap();
    // The fixed token is not used again; the token function's new one is.
    browser
        .wait_for(
            &page,
            "fixed.state === 'closed' && errors.includes('disconnected')",
            SOON,
        )
        .await;
    browser
        .wait_for(
            &page,
            "renewing.state === 'connected' && renewals === 2",
            SOON,
        )
        .await;
    // Given time to retry, the fixed-token client stays closed, and it left the room.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        browser.eval(&page, "[fixed.state, fixedConnects]").await,
        json!(["closed", 1])
    );
    assert_eq!(
        browser
            .eval(&page, "renewing.presence('room').then((p) => p.count)")
            .await,
        0
    );
}
