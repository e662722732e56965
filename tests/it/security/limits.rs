//! Limits: every limit answers with its code while others keep receiving, a flood from one
//! address leaves room for everyone else, and WebSockets count for as long as they are open.

use super::*;

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
