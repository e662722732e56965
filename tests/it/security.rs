//! Hostile input: tokens and their claims on every transport, reserved and unlisted channels in
//! any spelling, origins, every limit with its code while others keep receiving, a connection
//! flood, slow and half-open sockets, and SQL injection through channel names.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use pgpush_tests::{
    Edge, EdgeOptions, SseClient, TestPostgres, WsClient,
    http::{request, request_from},
    wait_until,
    ws::WsEvent,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::SOON;

const SECRET: &str = "a test secret that is long enough for HS256";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token signed with `secret` carrying `claims`.
fn token_with(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token for `chat` only, valid for an hour.
fn chat_token() -> String {
    token_with(
        SECRET,
        json!({"sub": "alice", "exp": now() + 3600, "subscribe": ["chat"], "publish": ["chat"]}),
    )
}

/// The HTTP status of a WebSocket handshake to `url` with extra headers (101 when it upgrades).
async fn ws_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(error) => panic!("handshake failed without a status: {error}"),
    }
}

/// Status and error code of a plain request.
async fn status_and_code(
    address: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let response = request(address, method, path, headers, body.to_owned()).await;
    let code = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| response.text());
    (response.status.as_u16(), code)
}

fn tokens_node(extra: &[&str]) -> EdgeOptions {
    let mut args = vec!["--jwt-secret", SECRET, "--jwt-leeway", "0s"];
    args.extend_from_slice(extra);
    EdgeOptions::args(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_gate_every_transport_and_their_claims_bound_each_channel() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(&pg.url(), tokens_node(&[])).await;
    let address = edge.address();
    let chat = chat_token();
    let bearer = format!("Bearer {chat}");

    // No token: 401 everywhere a client can go.
    for (method, path) in [
        (Method::GET, "/v1/sse?channel=chat"),
        (Method::GET, "/v1/poll?channel=chat"),
        (Method::POST, "/v1/publish/chat"),
        (Method::GET, "/_hippie/poll/chat"),
        (Method::GET, "/_hippie/mxhr/chat"),
        (Method::POST, "/_hippie/pub/chat"),
    ] {
        let response = request(address, method.clone(), path, &[], "{}").await;
        assert_eq!(response.status, 401, "{method} {path}: {}", response.text());
    }
    assert_eq!(
        ws_status(&edge.ws_url("/v1/ws?channel=chat"), &[]).await,
        401
    );
    assert_eq!(ws_status(&edge.ws_url("/_hippie/ws/chat"), &[]).await, 401);

    // A token for `chat`: allowed on chat, over every transport, from the header or the query.
    let mut ws =
        WsClient::connect(&edge.ws_url(&format!("/v1/ws?channel=chat&token={chat}"))).await;
    assert_eq!(ws.next_json(SOON).await["type"], "subscribed");
    let mut sse = SseClient::connect(
        address,
        "/v1/sse?channel=chat",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_event(SOON).await.unwrap().event, "subscribed");
    let poll = request(
        address,
        Method::GET,
        "/v1/poll?channel=chat",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(poll.status, 200);
    let hippie = request(
        address,
        Method::GET,
        &format!("/_hippie/poll/chat?token={chat}"),
        &[],
        "",
    )
    .await;
    assert_eq!(
        hippie.status,
        302,
        "the Hippie poll handshake: {}",
        hippie.text()
    );
    let published = request(
        address,
        Method::POST,
        "/v1/publish/chat",
        &[("authorization", &bearer)],
        r#"{"n":1}"#,
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.text());
    assert_eq!(ws.next_message(SOON).await["data"]["n"], 1);
    assert_eq!(sse.next_message(SOON).await.1["data"]["n"], 1);

    // The same token cannot reach person_updated: 403 / forbidden on every transport.
    for (method, path) in [
        (Method::GET, "/v1/sse?channel=person_updated"),
        (Method::GET, "/v1/poll?channel=person_updated"),
        (Method::POST, "/v1/publish/person_updated"),
        (Method::GET, "/_hippie/poll/person_updated"),
        (Method::GET, "/_hippie/mxhr/person_updated"),
        (Method::POST, "/_hippie/pub/person_updated"),
    ] {
        let response = request(
            address,
            method.clone(),
            path,
            &[("authorization", &bearer)],
            "message=%7B%7D",
        )
        .await;
        assert_eq!(response.status, 403, "{method} {path}: {}", response.text());
    }
    assert_eq!(
        ws_status(
            &edge.ws_url(&format!("/v1/ws?channel=person_updated&token={chat}")),
            &[]
        )
        .await,
        403
    );
    assert_eq!(
        ws_status(
            &edge.ws_url(&format!("/_hippie/ws/person_updated?token={chat}")),
            &[]
        )
        .await,
        403
    );
    ws.send_json(json!({"op": "subscribe", "channels": ["person_updated"], "ref": 1}))
        .await;
    let refused = ws.next_json(SOON).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{refused}"
    );
    ws.send_json(json!({"op": "publish", "channel": "person_updated", "data": 1, "ref": 2}))
        .await;
    assert_eq!(ws.next_json(SOON).await["code"], "forbidden");
    // Refused publishes reached nobody; the connection still works.
    ws.send_json(json!({"op": "publish", "channel": "chat", "data": {"n": 2}, "ref": 3}))
        .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(
            ws.next_json(SOON).await["type"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    seen.sort();
    assert_eq!(seen, ["ack", "message"]);
    assert_eq!(sse.next_message(SOON).await.1["data"]["n"], 2);

    // Tokens that are not valid: 401 with a reason.
    let alg_none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"exp": now() + 3600, "subscribe": ["*"]}).to_string())
    );
    for (what, token) in [
        (
            "expired",
            token_with(SECRET, json!({"exp": now() - 120, "subscribe": ["chat"]})),
        ),
        (
            "not yet valid",
            token_with(
                SECRET,
                json!({"exp": now() + 3600, "nbf": now() + 600, "subscribe": ["chat"]}),
            ),
        ),
        (
            "wrongly signed",
            token_with(
                "another secret entirely, not ours",
                json!({"exp": now() + 3600, "subscribe": ["chat"]}),
            ),
        ),
        ("alg none", alg_none),
        (
            "without exp",
            token_with(SECRET, json!({"subscribe": ["chat"]})),
        ),
        ("garbage", "not.a.token".to_owned()),
    ] {
        let (status, code) = status_and_code(
            address,
            Method::GET,
            &format!("/v1/poll?channel=chat&token={token}"),
            &[],
            "",
        )
        .await;
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{what}");
        assert_eq!(
            ws_status(
                &edge.ws_url(&format!("/v1/ws?channel=chat&token={token}")),
                &[]
            )
            .await,
            401,
            "{what}"
        );
    }

    // A token that expires during the connection ends it: close 4001 on WebSocket, an
    // `unauthorized` error event on SSE.
    let short = token_with(SECRET, json!({"exp": now() + 2, "subscribe": ["chat"]}));
    let mut ws_short =
        WsClient::connect(&edge.ws_url(&format!("/v1/ws?channel=chat&token={short}"))).await;
    assert_eq!(ws_short.next_json(SOON).await["type"], "subscribed");
    let mut sse_short =
        SseClient::connect(address, &format!("/v1/sse?channel=chat&token={short}"), &[]).await;
    assert_eq!(
        sse_short.next_event(SOON).await.unwrap().event,
        "subscribed"
    );
    assert_eq!(ws_short.expect_close(SOON).await, 4001);
    let last = sse_short.next_event(SOON).await.unwrap();
    assert_eq!(
        (last.event.as_str(), last.json()["code"].as_str()),
        ("error", Some("unauthorized"))
    );
    // A fresh token sent in-band (`auth`) keeps a connection past its first token's expiry; one
    // that does not cover the connection's channels, or is not valid, is refused and changes
    // nothing.
    let renewing = token_with(SECRET, json!({"exp": now() + 2, "subscribe": ["chat"]}));
    let mut ws_renewed =
        WsClient::connect(&edge.ws_url(&format!("/v1/ws?channel=chat&token={renewing}"))).await;
    assert_eq!(ws_renewed.next_json(SOON).await["type"], "subscribed");
    let other_only = token_with(SECRET, json!({"exp": now() + 3600, "subscribe": ["other"]}));
    ws_renewed
        .send_json(json!({"op": "auth", "token": other_only, "ref": 1}))
        .await;
    assert_eq!(ws_renewed.next_json(SOON).await["code"], "forbidden");
    ws_renewed
        .send_json(json!({"op": "auth", "token": "not.a.token", "ref": 2}))
        .await;
    assert_eq!(ws_renewed.next_json(SOON).await["code"], "unauthorized");
    ws_renewed
        .send_json(json!({"op": "auth", "token": chat, "ref": 3}))
        .await;
    let ack = ws_renewed.next_json(SOON).await;
    assert_eq!(
        (ack["type"].as_str(), ack["ref"].as_i64()),
        (Some("ack"), Some(3))
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The long-lived ones are still served.
    pg.notify("chat", r#"{"n":3}"#).await;
    assert_eq!(ws.next_message(SOON).await["data"]["n"], 3);
    assert_eq!(sse.next_message(SOON).await.1["data"]["n"], 3);
    assert_eq!(ws_renewed.next_message(SOON).await["data"]["n"], 3);
}

/// Generates a private key with openssl (`genpkey` arguments), as PEM.
fn openssl_key(args: &[&str]) -> Vec<u8> {
    let output = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .output()
        .unwrap_or_else(|_| panic!("openssl not found; install it with: scripts/test --install-only (apt-get install -y openssl)"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn jwk(key: &EncodingKey, algorithm: Algorithm, id: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, algorithm).unwrap();
    jwk.common.key_id = Some(id.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn signed(key: &EncodingKey, algorithm: Algorithm, id: &str) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(id.to_owned());
    jsonwebtoken::encode(
        &header,
        &json!({"exp": now() + 3600, "subscribe": ["*"]}),
        key,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_keys_verify_rs256_and_es256_and_are_reloaded_when_the_file_changes() {
    let rsa_pem = openssl_key(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let ec_pem = openssl_key(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let rsa = EncodingKey::from_rsa_pem(&rsa_pem).unwrap();
    let ec = EncodingKey::from_ec_pem(&ec_pem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [jwk(&rsa, Algorithm::RS256, "rsa-1")]}).to_string(),
    )
    .unwrap();

    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&["--jwt-jwks", jwks.to_str().unwrap()]),
    )
    .await;
    let poll = |token: String| {
        let address = edge.address();
        async move {
            status_and_code(
                address,
                Method::GET,
                &format!("/v1/poll?channel=c&token={token}"),
                &[],
                "",
            )
            .await
            .0
        }
    };
    assert_eq!(poll(signed(&rsa, Algorithm::RS256, "rsa-1")).await, 200);
    assert_eq!(
        poll(signed(&ec, Algorithm::ES256, "ec-1")).await,
        401,
        "not in the JWKS yet"
    );
    // Key confusion: an HS256 token whose "secret" is the RSA public key is refused.
    let public_jwk = jwk(&rsa, Algorithm::RS256, "rsa-1");
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 3600, "subscribe": ["*"]}),
        &EncodingKey::from_secret(public_jwk["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    assert_eq!(poll(confused).await, 401);

    // Rotate: add the EC key. The node picks it up without a restart.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new modification time
    std::fs::write(
        &jwks,
        json!({"keys": [jwk(&rsa, Algorithm::RS256, "rsa-1"), jwk(&ec, Algorithm::ES256, "ec-1")]})
            .to_string(),
    )
    .unwrap();
    wait_until(SOON, "ES256 key loaded", || async {
        poll(signed(&ec, Algorithm::ES256, "ec-1")).await == 200
    })
    .await;
    // A broken file keeps the keys that work.
    std::fs::write(&jwks, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(poll(signed(&ec, Algorithm::ES256, "ec-1")).await, 200);
    assert!(edge.log().contains("JWKS not reloaded"), "{}", edge.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn reserved_and_unlisted_channels_are_unreachable_in_any_spelling() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&[
            "--subscribe-allow",
            "chat,room.*",
            "--publish-allow",
            "chat",
        ]),
    )
    .await;
    let address = edge.address();
    // (URL-encoded name, expected status)
    let long = "x".repeat(64);
    let spellings = [
        ("pgpush_wake", 403),
        ("PGPUSH_WAKE", 403),
        ("PgPush_x", 403),
        ("%70gpush_wake", 403),
        ("%22pgpush_wake%22", 403),
        ("pgpush%2Fx", 403),
        ("secret", 403),
        ("Chat", 403),
        ("chat%20", 403),
        ("room", 403),
        (long.as_str(), 400),
        ("chat%00", 400),
    ];
    for (name, want) in spellings {
        for (method, path) in [
            (Method::GET, format!("/v1/sse?channel={name}")),
            (Method::GET, format!("/v1/poll?channel={name}")),
            (Method::GET, format!("/_hippie/poll/{name}")),
            (Method::POST, format!("/v1/publish/{name}")),
            (Method::POST, format!("/_hippie/pub/{name}")),
        ] {
            let response = request(address, method, &path, &[], "message=%7B%7D").await;
            assert_eq!(
                response.status.as_u16(),
                want,
                "{path}: {}",
                response.text()
            );
        }
        assert_eq!(
            ws_status(&edge.ws_url(&format!("/v1/ws?channel={name}")), &[]).await,
            want,
            "{name}"
        );
    }
    // Listed ones work: subscribe to a room, publish only to chat.
    assert_eq!(
        request(address, Method::GET, "/v1/poll?channel=room.7", &[], "")
            .await
            .status,
        200
    );
    assert_eq!(
        request(address, Method::POST, "/v1/publish/room.7", &[], "{}")
            .await
            .status,
        403
    );
    assert_eq!(
        request(address, Method::POST, "/v1/publish/chat", &[], "{}")
            .await
            .status,
        200
    );
    // In WebSocket frames too.
    let mut ws = WsClient::connect(&edge.ws_url("/v1/ws")).await;
    for name in ["pgpush_wake", "PGPUSH_WAKE", "secret"] {
        ws.send_json(json!({"op": "subscribe", "channels": [name]}))
            .await;
        assert_eq!(ws.next_json(SOON).await["code"], "forbidden", "{name}");
        ws.send_json(json!({"op": "publish", "channel": name, "data": 1}))
            .await;
        assert_eq!(ws.next_json(SOON).await["code"], "forbidden", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn browsers_from_other_origins_are_refused() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&[
            "--allowed-origins",
            "https://app.example,https://admin.example",
        ]),
    )
    .await;
    let url = edge.ws_url("/v1/ws?channel=c");
    assert_eq!(
        ws_status(&url, &[("origin", "https://evil.example")]).await,
        403
    );
    assert_eq!(
        ws_status(&url, &[("origin", "https://app.example")]).await,
        101
    );
    assert_eq!(ws_status(&url, &[]).await, 101, "no Origin: not a browser");
    let (status, code) = status_and_code(
        edge.address(),
        Method::GET,
        "/v1/poll?channel=c",
        &[("origin", "https://evil.example")],
        "",
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    assert_eq!(
        ws_status(&edge.ws_url("/_hippie/ws/c"), &[("origin", "null")]).await,
        403
    );
    // Pages and the client library are served to anyone.
    assert_eq!(
        request(
            edge.address(),
            Method::GET,
            "/pgpush.js",
            &[("origin", "https://evil.example")],
            ""
        )
        .await
        .status,
        200
    );
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A WebSocket client connected from a chosen loopback address.
async fn ws_from(source: IpAddr, edge: &Edge, path: &str) -> WsClient {
    WsClient::connect_from(source, &edge.ws_url(path)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_limit_answers_with_its_code_while_others_keep_receiving() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&[
            "--max-subscriptions",
            "3",
            "--publish-rate",
            "5",
            "--publish-rate-per-address",
            "10",
            "--max-connections-per-address",
            "20",
            "--hippie-max-queues-per-address",
            "3",
            "--max-message-bytes",
            "4096",
        ]),
    )
    .await;
    let address = edge.address();
    // A bystander on its own address, receiving throughout.
    let mut bystander = ws_from(loopback(2), &edge, "/v1/ws?channel=live").await;
    assert_eq!(bystander.next_json(SOON).await["type"], "subscribed");
    let notifier = {
        let url = pg.url();
        tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            for n in 0..100 {
                client
                    .execute("SELECT pg_notify('live', $1)", &[&n.to_string()])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };

    // Subscriptions per connection.
    let (status, code) = status_and_code(
        address,
        Method::GET,
        "/v1/poll?channel=a&channel=b&channel=c&channel=d",
        &[],
        "",
    )
    .await;
    assert_eq!((status, code.as_str()), (429, "limit_exceeded"));
    assert_eq!(
        ws_status(
            &edge.ws_url("/v1/ws?channel=a&channel=b&channel=c&channel=d"),
            &[]
        )
        .await,
        429
    );
    let mut many = ws_from(loopback(3), &edge, "/v1/ws?channel=a&channel=b").await;
    assert_eq!(many.next_json(SOON).await["type"], "subscribed");
    many.send_json(json!({"op": "subscribe", "channels": ["c", "d"]}))
        .await;
    assert_eq!(many.next_json(SOON).await["code"], "limit_exceeded");

    // Publishes per connection: a burst of 5, then rate_limited.
    let mut results = Vec::new();
    for n in 0..8 {
        many.send_json(json!({"op": "publish", "channel": "x", "data": n, "mode": "ephemeral"}))
            .await;
        let reply = many.next_json(SOON).await;
        results.push(
            reply["code"]
                .as_str()
                .unwrap_or(reply["type"].as_str().unwrap())
                .to_owned(),
        );
    }
    assert_eq!(
        results.iter().filter(|r| *r == "ack").count(),
        5,
        "{results:?}"
    );
    assert!(
        results[5..].iter().all(|r| r == "rate_limited"),
        "{results:?}"
    );

    // The same per connection on a Hippie WebSocket: its frames are publishes.
    let mut hippie = ws_from(loopback(7), &edge, "/_hippie/ws/hx?client_id=rate-test").await;
    assert_eq!(
        hippie.next_json(SOON).await["type"],
        "hippie.pipe.set_client_id"
    );
    for n in 0..8 {
        hippie.send_json(json!({"type": "chat", "n": n})).await;
    }
    let (mut echoed, mut limited) = (0, 0);
    while echoed + limited < 8 {
        let frame = hippie.next_json(SOON).await;
        match frame["type"].as_str() {
            Some("hippie.error") if frame["code"] == "rate_limited" => limited += 1,
            Some("chat") => echoed += 1,
            _ => {}
        }
    }
    assert_eq!((echoed, limited), (5, 3));

    // Publishes per address over HTTP: 429 with Retry-After.
    let mut last = None;
    for _ in 0..15 {
        let response = request_from(
            loopback(4),
            address,
            Method::POST,
            "/v1/publish/x?mode=ephemeral",
            &[],
            "{}",
        )
        .await;
        last = Some(response);
    }
    let last = last.unwrap();
    assert_eq!(last.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(last.json()["error"], "rate_limited");
    assert!(last.headers.get("retry-after").is_some());
    // Another address is not affected.
    let other = request_from(
        loopback(9),
        address,
        Method::POST,
        "/v1/publish/x?mode=ephemeral",
        &[],
        "{}",
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);

    // Connections per address: the 21st from one address is answered 429 and closed.
    let mut held = Vec::new();
    for _ in 0..20 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(loopback(5), 0)).unwrap();
        held.push(socket.connect(address).await.unwrap());
    }
    wait_until(SOON, "20 sockets admitted", || async {
        edge.metrics().await.value("pgpush_client_sockets", &[]) >= 21.0
    })
    .await;
    let refused = request_from(loopback(5), address, Method::GET, "/healthz", &[], "").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["error"], "limit_exceeded");
    drop(held);

    // Hippie queues per address.
    for n in 0..4 {
        let response = request_from(
            loopback(6),
            address,
            Method::GET,
            &format!("/_hippie/poll/h?client_id=queue-{n}"),
            &[],
            "",
        )
        .await;
        let want = if n < 3 { 200 } else { 429 };
        assert_eq!(
            response.status.as_u16(),
            want,
            "queue {n}: {}",
            response.text()
        );
    }

    // Request heads, bodies and frames over their limits.
    let big_header = "h".repeat(20_000);
    let (status, _) = status_and_code(
        address,
        Method::GET,
        "/healthz",
        &[("x-big", &big_header)],
        "",
    )
    .await;
    assert_eq!(status, 431);
    let (status, code) = status_and_code(
        address,
        Method::POST,
        "/v1/publish/x",
        &[],
        &"b".repeat(5000),
    )
    .await;
    assert_eq!((status, code.as_str()), (413, "too_large"));
    let mut oversized = WsClient::connect(&edge.ws_url("/v1/ws")).await;
    oversized
        .send(tungstenite::Message::text("f".repeat(5000)))
        .await;
    assert_eq!(oversized.expect_close(SOON).await, 1009);

    // Through all of it the bystander got every message once, in order.
    notifier.await.unwrap();
    for n in 0..100 {
        assert_eq!(bystander.next_message(SOON).await["data"], n);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_address_leaves_room_for_everyone_else() {
    let pg = TestPostgres::start();
    let mut options = EdgeOptions::args(&[
        "--max-connections-per-address",
        "100",
        // Longer than the flood takes: an admitted socket cut meanwhile would free its place
        // for one more, and the count below would be off (slowloris has its own test).
        "--handshake-timeout",
        "30s",
    ]);
    options.env.push(("MALLOC_ARENA_MAX".into(), "1".into()));
    let edge = Edge::start_with(&pg.url(), options).await;
    let address = edge.address();
    let mut legit = ws_from(loopback(20), &edge, "/v1/ws?channel=news").await;
    assert_eq!(legit.next_json(SOON).await["type"], "subscribed");
    let baseline_rss = edge.rss_bytes();
    let baseline = edge.metrics().await.value("pgpush_client_sockets", &[]);

    // 5,000 connections from one address that send nothing.
    let mut flood = Vec::new();
    for _ in 0..5000 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(loopback(21), 0)).unwrap();
        flood.push(socket.connect(address).await.unwrap());
    }
    // Those over the limit are answered 429 within a second; the admitted ones hear nothing.
    let answers = futures_util::future::join_all(flood.iter_mut().map(|stream| async move {
        let mut first = [0u8; 12];
        match tokio::time::timeout(Duration::from_millis(2500), stream.read_exact(&mut first)).await
        {
            Ok(Ok(_)) if first.starts_with(b"HTTP/1.1 429") => "refused",
            Ok(_) => "closed",
            Err(_) => "waiting",
        }
    }))
    .await;
    let count = |what| answers.iter().filter(|a| **a == what).count();
    assert_eq!(
        (count("refused"), count("waiting") + count("closed")),
        (4900, 100),
        "over the limit refused, the first 100 admitted"
    );
    // Meanwhile others connect and receive.
    let mut newcomer = ws_from(loopback(22), &edge, "/v1/ws?channel=news").await;
    assert_eq!(newcomer.next_json(SOON).await["type"], "subscribed");
    pg.notify("news", r#"{"during":"flood"}"#).await;
    assert_eq!(legit.next_message(SOON).await["data"]["during"], "flood");
    assert_eq!(newcomer.next_message(SOON).await["data"]["during"], "flood");
    let during = edge.metrics().await.value("pgpush_client_sockets", &[]);
    assert!(
        during <= baseline + 100.0 + 2.0,
        "{during} sockets held during the flood"
    );

    drop(flood);
    drop(newcomer);
    wait_until(SOON, "socket count back to baseline", || async {
        edge.metrics().await.value("pgpush_client_sockets", &[]) == baseline
    })
    .await;
    let rss = edge.rss_bytes();
    assert!(
        rss < baseline_rss + 32 * 1024 * 1024,
        "memory grew from {baseline_rss} to {rss} bytes"
    );
    pg.notify("news", r#"{"after":"flood"}"#).await;
    assert_eq!(legit.next_message(SOON).await["data"]["after"], "flood");
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_and_silent_sockets_are_cut_by_the_timeouts() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&[
            "--handshake-timeout",
            "2s",
            "--ping-interval",
            "1s",
            "--idle-timeout",
            "20s",
        ]),
    )
    .await;
    // Headers trickled one byte a second: cut once the handshake timeout passes.
    let mut slow = TcpStream::connect(edge.address()).await.unwrap();
    let started = std::time::Instant::now();
    let mut cut = false;
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa".iter() {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        let mut buffer = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => {
                // hyper may answer 408 before closing.
            }
            Err(_) => {}
        }
    }
    assert!(cut, "a trickling client was never cut");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut after {:?}",
        started.elapsed()
    );

    // A WebSocket client that stops answering pings is closed after two intervals.
    let mut silent = WsClient::connect(&edge.ws_url("/v1/ws?channel=c")).await;
    assert_eq!(silent.next_json(SOON).await["type"], "subscribed");
    // Not reading is not answering pings (the client answers them as it reads).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut ended = false;
    let deadline = tokio::time::Instant::now() + SOON;
    while tokio::time::Instant::now() < deadline {
        match silent.next_event(Duration::from_secs(1)).await {
            WsEvent::Close(_) | WsEvent::Ended => {
                ended = true;
                break;
            }
            _ => {}
        }
    }
    assert!(ended, "a silent WebSocket client was never closed");

    // Every client socket carries keepalive probes, so a peer that vanished without a FIN
    // (a half-open socket) is dropped by the kernel within the idle timeout.
    let _held = TcpStream::connect(edge.address()).await.unwrap();
    let port = edge.address().port().to_string();
    let output = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established", "sport", "=", &format!(":{port}")])
        .output()
        .unwrap_or_else(|_| panic!("ss not found; install it with: scripts/test --install-only (apt-get install -y iproute2)"));
    let sockets = String::from_utf8_lossy(&output.stdout);
    assert!(
        sockets.contains("timer:(keepalive"),
        "no keepalive timer on the server's sockets:\n{sockets}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_names_reach_postgres_only_as_parameters_or_quoted_identifiers() {
    let pg = TestPostgres::start();
    let db = pg.client().await;
    db.batch_execute("CREATE TABLE canary (n int); INSERT INTO canary VALUES (1);")
        .await
        .unwrap();
    let edge = Edge::start_with(&pg.url(), EdgeOptions::default()).await;
    let names = [
        r#"a"; DROP TABLE canary; --"#,
        "x'); DROP TABLE canary; --",
        r#"""#,
        "; SELECT pg_sleep(10) --",
        "$1'||'",
        "tab\tname",
    ];
    for name in names {
        let encoded: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let path_encoded = encoded.replace('+', "%20");
        let mut ws = WsClient::connect(&edge.ws_url(&format!("/v1/ws?channel={encoded}"))).await;
        let subscribed = ws.next_json(SOON).await;
        assert_eq!(subscribed["type"], "subscribed", "{name}: {subscribed}");
        assert_eq!(subscribed["channels"][0], name);
        // NOTIFY from SQL reaches the exactly-named (quoted) LISTEN.
        db.execute("SELECT pg_notify($1, $2)", &[&name, &r#"{"via":"sql"}"#])
            .await
            .unwrap();
        let message = ws.next_message(SOON).await;
        assert_eq!(
            (message["channel"].as_str(), message["data"]["via"].as_str()),
            (Some(name), Some("sql"))
        );
        // Publishing through the node, durable and ephemeral, binds the name as a parameter.
        for mode in ["durable", "ephemeral"] {
            let response = request(
                edge.address(),
                Method::POST,
                &format!("/v1/publish/{path_encoded}?mode={mode}"),
                &[],
                format!(r#"{{"via":"{mode}"}}"#),
            )
            .await;
            assert_eq!(response.status, 200, "{name} {mode}: {}", response.text());
            let message = ws.next_message(SOON).await;
            assert_eq!(
                (message["channel"].as_str(), message["data"]["via"].as_str()),
                (Some(name), Some(mode))
            );
        }
        let hippie = request(
            edge.address(),
            Method::POST,
            &format!("/_hippie/pub/{path_encoded}"),
            &[("content-type", "application/x-www-form-urlencoded")],
            "message=%7B%22via%22%3A%22hippie%22%7D",
        )
        .await;
        assert_eq!(hippie.status, 200, "{name}: {}", hippie.text());
        assert_eq!(ws.next_message(SOON).await["data"]["via"], "hippie");
    }
    let count: i64 = db
        .query_one("SELECT count(*) FROM canary", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "the canary table survived");
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM pgpush.events WHERE channel = ANY($1)",
            &[&names.to_vec()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, names.len() as i64, "each name stored verbatim");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_at_its_connection_limit_answers_unavailable_until_one_leaves() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(&pg.url(), EdgeOptions::args(&["--max-connections", "3"])).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(edge.address()).await.unwrap());
    }
    // The server admits each socket in its own task: give the three a moment to be admitted
    // before the fourth arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, code) = status_and_code(edge.address(), Method::GET, "/healthz", &[], "").await;
    assert_eq!(
        (status, code.as_str()),
        (503, "unavailable"),
        "{}",
        edge.log()
    );
    drop(held.pop());
    wait_until(SOON, "room again", || async {
        status_and_code(edge.address(), Method::GET, "/healthz", &[], "")
            .await
            .0
            == 200
    })
    .await;
}

/// The status a WebSocket handshake to `url` is answered with (101 when it upgraded).
async fn handshake_status(url: &str) -> (u16, Option<WsClient>) {
    match WsClient::try_connect(url).await {
        Ok(client) => (101, Some(client)),
        Err(tungstenite::Error::Http(response)) => (response.status().as_u16(), None),
        Err(error) => panic!("handshake to {url} failed: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_count_against_the_connection_limits_for_as_long_as_they_are_open() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(
        &pg.url(),
        EdgeOptions::args(&[
            "--max-connections-per-address",
            "4",
            "--max-connections",
            "6",
        ]),
    )
    .await;
    // Native and Hippie WebSockets from one address: the fifth is refused like any socket.
    let mut open = Vec::new();
    for path in [
        "/v1/ws?channel=a",
        "/v1/ws",
        "/_hippie/ws/a",
        "/_hippie/ws/b",
    ] {
        let (status, client) = handshake_status(&edge.ws_url(path)).await;
        assert_eq!(status, 101, "{path}");
        open.push(client.unwrap());
    }
    for path in ["/v1/ws?channel=a", "/_hippie/ws/c"] {
        let (status, _) = handshake_status(&edge.ws_url(path)).await;
        assert_eq!(
            status, 429,
            "{path}: the address already holds 4 WebSockets"
        );
    }
    let (status, code) = status_and_code(edge.address(), Method::GET, "/healthz", &[], "").await;
    assert_eq!((status, code.as_str()), (429, "limit_exceeded"));
    let observer: IpAddr = "127.0.0.9".parse().unwrap();
    let stats = request_from(
        observer,
        edge.address(),
        Method::GET,
        "/v1/stats",
        &[],
        String::new(),
    )
    .await;
    assert_eq!(
        stats.json()["connections"]["websocket"],
        4,
        "the refused ones are gone"
    );
    // The node-wide limit counts them too: 4 WebSockets + 2 from another address fill it.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(WsClient::connect_from(other, &edge.ws_url("/v1/ws?channel=a")).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = "127.0.0.3".parse().unwrap();
    let response = request_from(
        third,
        edge.address(),
        Method::GET,
        "/healthz",
        &[],
        String::new(),
    )
    .await;
    assert_eq!(response.status, 503, "the node is full of WebSockets");
    // Closing a WebSocket gives its place back.
    drop(open.pop());
    wait_until(SOON, "room for a WebSocket again", || async {
        handshake_status(&edge.ws_url("/v1/ws?channel=a")).await.0 == 101
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_nodes_numbers_need_a_token_on_the_client_port_and_probes_do_not() {
    let pg = TestPostgres::start();
    let edge = Edge::start_with(&pg.url(), tokens_node(&["--metrics-listen", "127.0.0.1:0"])).await;
    let address = edge.address();
    let (status, code) = status_and_code(address, Method::GET, "/v1/stats", &[], "").await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    // Without a metrics address, /metrics on the client port needs one too.
    let plain = Edge::start_with(&pg.url(), tokens_node(&[])).await;
    let (status, code) = status_and_code(plain.address(), Method::GET, "/metrics", &[], "").await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    let token = chat_token();
    let stats = request(
        address,
        Method::GET,
        &format!("/v1/stats?token={token}"),
        &[],
        String::new(),
    )
    .await;
    assert_eq!(stats.status, 200, "{}", stats.text());
    for path in ["/healthz", "/readyz"] {
        let (status, _) = status_and_code(address, Method::GET, path, &[], "").await;
        assert_eq!(status, 200, "{path} stays open for balancers");
    }
    // Operators' own address needs none.
    let metrics = edge.metrics_address().expect("metrics address");
    let stats = request(metrics, Method::GET, "/v1/stats", &[], String::new()).await;
    assert_eq!(stats.status, 200, "{}", stats.text());
}
