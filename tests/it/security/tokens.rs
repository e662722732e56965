//! Tokens: HS256 and JWKS keys (RS256, ES256, reloaded), their claims bounding each channel on
//! every transport, and the node's numbers behind them on the client port.

use super::*;

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
