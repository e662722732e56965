//! Channels no client may reach (reserved, unlisted, in any spelling), origins that are refused,
//! and channel names that reach PostgreSQL only as parameters or quoted identifiers.

use super::*;

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
