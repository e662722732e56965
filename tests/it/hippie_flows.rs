//! The original demos over Hippie: chat, location updates, non-JSON payloads; client addresses,
//! origins and hostile input.

use std::time::Duration;

use pgpush_tests::{Edge, EdgeOptions, TestPostgres, WsClient, http, raw::MxhrClient};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::SOON;

/// The next frame that is not a keepalive ping.
async fn ws_message(ws: &mut WsClient) -> Value {
    tokio::time::timeout(SOON, async {
        loop {
            let frame = ws.next_json(SOON).await;
            if frame["type"] != "ping" {
                return frame;
            }
        }
    })
    .await
    .expect("a message within 10 s")
}

fn form(message: &str) -> String {
    format!("message={}", pgpush_tests::ws::encode(message))
}

async fn post_form(
    address: std::net::SocketAddr,
    path: &str,
    body: String,
    headers: &[(&str, &str)],
) -> http::HttpResponse {
    let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    http::request(address, "POST".parse().unwrap(), path, &all, body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_original_chat_flow() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let mut alice = WsClient::connect(&edge.ws_url("/_hippie/ws/chat")).await;
    let alice_id = alice.next_json(SOON).await["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(alice_id.len(), 32, "generated ids carry 128 random bits");
    let mut bob = MxhrClient::open(edge.address(), "/_hippie/mxhr/chat").await;
    let bob_id = bob.next_json(SOON).await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(alice_id, bob_id);

    alice.send_json(json!({"type": "chat", "text": "hi"})).await;
    // Publishes from two clients are ordered only by when they commit: let "hi" land first.
    let alice_first = ws_message(&mut alice).await;
    let bob_first = bob.next_json(SOON).await.unwrap();
    let reply = post_form(
        edge.address(),
        &format!("/_hippie/pub/chat?client_id={bob_id}"),
        form(r#"{"type":"chat","text":"hello back"}"#),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Event published on chat");
    pg.notify("chat", r#"{"type":"chat","text":"from psql"}"#)
        .await;

    let alice_saw = [
        alice_first,
        ws_message(&mut alice).await,
        ws_message(&mut alice).await,
    ];
    let bob_saw = [
        bob_first,
        bob.next_json(SOON).await.unwrap(),
        bob.next_json(SOON).await.unwrap(),
    ];
    for saw in [&alice_saw, &bob_saw] {
        assert_eq!(saw[0]["text"], "hi");
        assert_eq!(saw[1]["text"], "hello back");
        for stamped in &saw[..2] {
            assert_eq!(stamped["type"], "chat");
            assert_eq!(stamped["address"], "127.0.0.1");
            let time = stamped["time"].as_u64().expect("integer epoch seconds");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(now.abs_diff(time) < 60);
        }
        assert_eq!(saw[2], json!({"type": "chat", "text": "from psql"}));
    }
    // Exactly once: nothing more arrives.
    alice.expect_silence(Duration::from_millis(300)).await;
    assert!(bob.next_json(Duration::from_millis(300)).await.is_none());
    let stats = http::get(edge.address(), "/_hippie/stats").await.text();
    assert!(stats.contains("events_published: 2\n"), "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn location_updates_and_non_json_payloads_reach_every_hippie_transport() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(&pg.url(), EdgeOptions::args(&["--hippie-keepalive", "0"])).await;
    let mut ws = WsClient::connect(&edge.ws_url("/_hippie/ws/person_updated?client_id=w")).await;
    ws.next_json(SOON).await;
    let mut mxhr =
        MxhrClient::open(edge.address(), "/_hippie/mxhr/person_updated?client_id=m").await;
    mxhr.next_json(SOON).await;
    let poll_path = "/_hippie/poll/person_updated?client_id=p";
    http::get(edge.address(), poll_path).await;

    // What the original trigger sent: json_build_object text with a GeoJSON point.
    let geojson = r#"{"id" : 1, "name" : "Ann", "loc" : {"type":"Point","coordinates":[-71.060316,48.432044]}}"#;
    pg.client()
        .await
        .batch_execute(&format!(
            "NOTIFY person_updated, '{geojson}'; NOTIFY person_updated, 'not json'"
        ))
        .await
        .unwrap();
    pg.notify("person_updated", r#"{"id": 2, "loc": null}"#)
        .await;

    let expected_texts = [
        geojson.to_owned(),
        r#""not json""#.to_owned(),
        r#"{"id": 2, "loc": null}"#.to_owned(),
    ];
    for expected in &expected_texts {
        // MXHR: byte for byte, and the stream goes on after the non-JSON payload.
        assert_eq!(&mxhr.next_text(SOON).await.unwrap(), expected);
    }
    let (mut raw, _) = (ws, ());
    for expected in &expected_texts {
        let value = raw.next_json(SOON).await;
        assert_eq!(value, serde_json::from_str::<Value>(expected).unwrap());
    }
    let poll = http::get(edge.address(), poll_path).await;
    assert_eq!(
        String::from_utf8(poll.body.to_vec()).unwrap(),
        format!("[{}]", expected_texts.join(","))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_set_client_id_message_means_subscribed() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(&pg.url(), EdgeOptions::args(&["--hippie-keepalive", "0"])).await;
    for i in 0..20 {
        // A fresh channel each time, so the LISTEN is new for every client.
        let channel = format!("fresh{i}");
        let mut mxhr = MxhrClient::open(edge.address(), &format!("/_hippie/mxhr/{channel}")).await;
        assert_eq!(
            mxhr.next_json(SOON).await.unwrap()["type"],
            "hippie.pipe.set_client_id"
        );
        pg.notify(&channel, &i.to_string()).await;
        assert_eq!(
            mxhr.next_json(SOON).await.unwrap(),
            json!(i),
            "NOTIFY right after set_client_id"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_address_comes_from_trusted_proxies_only() {
    let pg = TestPostgres::start();
    let direct = Edge::start_with(&pg.url(), EdgeOptions::args(&["--hippie-keepalive", "0"])).await;
    let proxied = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--hippie-keepalive", "0", "--trusted-proxy", "127.0.0.0/8"]),
    )
    .await;
    let mut watcher = MxhrClient::open(direct.address(), "/_hippie/mxhr/addr").await;
    watcher.next_json(SOON).await;
    let spoof = [("x-forwarded-for", "203.0.113.7")];
    post_form(
        direct.address(),
        "/_hippie/pub/addr",
        form(r#"{"who":"untrusted"}"#),
        &spoof,
    )
    .await;
    post_form(
        proxied.address(),
        "/_hippie/pub/addr",
        form(r#"{"who":"proxied"}"#),
        &spoof,
    )
    .await;
    let untrusted = watcher.next_json(SOON).await.unwrap();
    assert_eq!(untrusted["who"], "untrusted");
    assert_eq!(
        untrusted["address"], "127.0.0.1",
        "an untrusted peer cannot set its address"
    );
    let proxied_message = watcher.next_json(SOON).await.unwrap();
    assert_eq!(
        proxied_message["address"], "203.0.113.7",
        "a trusted proxy's X-Forwarded-For is used"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_options_origin_and_client_id_rules() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&[
            "--hippie-trusted-origin",
            r"https?://good\.example",
            "--hippie-require-client-id",
        ]),
    )
    .await;
    let address = edge.address();
    // Origin check on the WebSocket handshake and on publishes.
    let ws_bad = http::request(
        address,
        "GET".parse().unwrap(),
        "/_hippie/ws/o",
        &[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("origin", "http://evil.example"),
        ],
        "",
    )
    .await;
    assert_eq!(ws_bad.status, 403);
    assert_eq!(ws_bad.text(), "origin not allowed");
    let pub_bad = post_form(
        address,
        "/_hippie/pub/o",
        form("{}"),
        &[("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(
        (pub_bad.status.as_u16(), pub_bad.text().as_str()),
        (403, "origin not allowed")
    );
    let good = [("origin", "https://good.example")];
    // With --hippie-require-client-id, a publish must name a live client.
    let anonymous = post_form(address, "/_hippie/pub/o", form("{}"), &good).await;
    assert_eq!(anonymous.status, 403);
    assert_eq!(
        anonymous.text(),
        "a client_id of a live client is required to publish"
    );
    let unknown = post_form(
        address,
        "/_hippie/pub/o?client_id=nobody",
        form("{}"),
        &good,
    )
    .await;
    assert_eq!(unknown.status, 403);
    assert_eq!(
        http::get(address, "/_hippie/poll/o?client_id=live")
            .await
            .status,
        200
    );
    let known = post_form(
        address,
        "/_hippie/pub/o",
        format!("client_id=live&{}", form("{}")),
        &good,
    )
    .await;
    assert_eq!(
        (known.status.as_u16(), known.text().as_str()),
        (200, "Event published on o")
    );
    let by_header = post_form(
        address,
        "/_hippie/pub/o",
        form("{}"),
        &[
            ("origin", "https://good.example"),
            ("x-hippie-clientid", "live"),
        ],
    )
    .await;
    assert_eq!(by_header.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_gets_clear_errors_and_others_keep_receiving() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(&pg.url(), EdgeOptions::args(&["--hippie-keepalive", "0"])).await;
    let address = edge.address();
    let mut bystander = MxhrClient::open(address, "/_hippie/mxhr/calm").await;
    bystander.next_json(SOON).await;

    for path in [
        "/_hippie/x/chat",
        "/_hippie/message/chat",
        "/_hippie/",
        "/_hippie",
        "/_hippie/stats/x",
        "/_hippie/ws",
    ] {
        let response = http::get(address, path).await;
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.text(), "Not found", "{path}");
    }
    let no_channel = http::get(address, "/_hippie/pub/?message=%7B%7D").await;
    assert_eq!(
        (no_channel.status.as_u16(), no_channel.text().as_str()),
        (400, "Channel is required")
    );
    let no_message = post_form(address, "/_hippie/pub/calm", "other=1".into(), &[]).await;
    assert_eq!(
        (no_message.status.as_u16(), no_message.text().as_str()),
        (400, "message is required")
    );
    let not_json = post_form(address, "/_hippie/pub/calm", form("{oops"), &[]).await;
    assert_eq!(not_json.status, 400);
    assert!(
        not_json.text().starts_with("message is not valid JSON"),
        "{}",
        not_json.text()
    );
    let not_object = post_form(address, "/_hippie/pub/calm", form("[1,2]"), &[]).await;
    assert_eq!(
        (not_object.status.as_u16(), not_object.text().as_str()),
        (400, "message must be a JSON object")
    );
    let bad_id = http::get(address, "/_hippie/poll/calm?client_id=a%20b").await;
    assert_eq!(bad_id.status, 400);
    let reserved = http::get(address, "/_hippie/poll/pgpush_wake?client_id=x").await;
    assert_eq!(reserved.status, 403);
    let too_long = http::get(
        address,
        &format!("/_hippie/poll/{}?client_id=x", "x".repeat(64)),
    )
    .await;
    assert_eq!(too_long.status, 400);

    // A WebSocket client that sends garbage gets errors and stays connected.
    let mut ws = WsClient::connect(&edge.ws_url("/_hippie/ws/calm?client_id=noisy")).await;
    ws.next_json(SOON).await;
    ws.send(Message::text("this is not json")).await;
    let error = ws.next_json(SOON).await;
    assert_eq!(error["type"], "hippie.error");
    assert_eq!(error["code"], "bad_payload");
    ws.send(Message::binary(vec![0, 1])).await;
    assert_eq!(ws.next_json(SOON).await["code"], "bad_frame");
    ws.send_json(json!({"type": "chat", "text": "still here"}))
        .await;
    assert_eq!(ws.next_json(SOON).await["text"], "still here");
    assert_eq!(
        bystander.next_json(SOON).await.unwrap()["text"],
        "still here"
    );
}
