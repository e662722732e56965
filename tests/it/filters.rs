//! Server-side filters through a real node: WebSocket, SSE and long poll deliver exactly the
//! matching NOTIFYs and durable events, a new subscribe replaces the filter, resume and history
//! apply it, cursors still cover what it left out, and bad filters get `bad_filter`.

use std::time::Duration;

use pgpush_tests::{
    Edge, SseClient, TestPostgres, WsClient, durable::position_of, http, wait_until, ws::encode,
};
use serde_json::{Value, json};

use crate::SOON;

/// Kind `a`, or a point in the box [0, 0, 1, 1].
const FILTER: &str = r#"{"or":[{"path":"kind","op":"eq","value":"a"},{"path":"loc","op":"within","value":[0,0,1,1]}]}"#;

/// The durable events published: JSON with a kind and a point, every seventh plain text.
fn event(n: i64) -> String {
    if n % 7 == 0 {
        return format!("text {n}");
    }
    let kind = ["a", "b", "c"][(n % 3) as usize];
    let lon = if n % 4 == 0 { 0.5 } else { 5.0 };
    json!({"n": n, "kind": kind, "loc": {"type": "Point", "coordinates": [lon, 0.5]}}).to_string()
}

/// What the filter should let through, decided here without pgpush's code.
fn wanted(payload: &str) -> bool {
    let Ok(value) = serde_json::from_str::<Value>(payload) else {
        return false;
    };
    let inside = value["loc"]["coordinates"]
        .as_array()
        .is_some_and(|c| (0.0..=1.0).contains(&c[0].as_f64().unwrap()));
    value["kind"] == "a" || inside
}

const LAST: i64 = 31;

async fn publish(pg: &TestPostgres, payloads: impl IntoIterator<Item = String>) {
    let client = pg.client().await;
    for payload in payloads {
        client
            .execute("SELECT pgpush.publish('feed', $1::text)", &[&payload])
            .await
            .expect("pgpush.publish");
    }
}

/// The positions of the events of `feed` positioned so far, in order.
async fn positions(pg: &TestPostgres) -> Vec<i64> {
    pg.client()
        .await
        .query(
            "SELECT position FROM pgpush.events
             WHERE channel = 'feed' AND position IS NOT NULL ORDER BY position",
            &[],
        )
        .await
        .expect("stored events")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn notify(pg: &TestPostgres, payloads: &[Value]) {
    let client = pg.client().await;
    for payload in payloads {
        client
            .execute("SELECT pg_notify('feed', $1)", &[&payload.to_string()])
            .await
            .expect("pg_notify");
    }
}

/// The `n` of a delivered message's data (durable) or its `e` (a NOTIFY).
fn number(data: &Value, key: &str) -> Option<i64> {
    data[key].as_i64()
}

/// Reads WebSocket frames until `durable` durable and `ephemeral` NOTIFY messages came and the
/// connection's cursor (of a message, `cursor` or `subscribed` frame) reached `last_position`: the durable `n`s in order, the NOTIFYs' `e`s.
async fn collect_ws(
    ws: &mut WsClient,
    durable: usize,
    ephemeral: usize,
    last_position: i64,
) -> (Vec<i64>, Vec<i64>) {
    let (mut ns, mut es, mut cursor) = (Vec::new(), Vec::new(), 0);
    while ns.len() < durable || es.len() < ephemeral || cursor < last_position {
        let frame = ws.next_json(SOON).await;
        match frame["type"].as_str() {
            Some("message") => {
                if let Some(c) = frame["cursor"].as_str() {
                    cursor = cursor.max(position_of(c));
                    ns.extend(number(&frame["data"], "n"));
                } else {
                    es.extend(number(&frame["data"], "e"));
                }
            }
            Some("cursor" | "subscribed") => {
                cursor = cursor.max(position_of(frame["cursor"].as_str().unwrap()))
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    es.sort_unstable();
    (ns, es)
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_deliver_exactly_what_matches_on_every_transport_and_cursors_still_advance() {
    let pg = TestPostgres::start();
    let edge = Edge::start(&pg.url()).await;
    let filter = encode(FILTER);

    let mut at_connect =
        WsClient::connect(&edge.ws_url(&format!("/v1/ws?channel=feed&filter={filter}"))).await;
    assert_eq!(at_connect.next_json(SOON).await["type"], "subscribed");
    let mut framed = WsClient::connect(&edge.ws_url("/v1/ws")).await;
    let frame_filter: Value = serde_json::from_str(FILTER).unwrap();
    framed
        .send_json(json!({"op":"subscribe","channels":["feed"],"filter":frame_filter}))
        .await;
    assert_eq!(framed.next_json(SOON).await["type"], "subscribed");
    let mut sse = SseClient::connect(
        edge.address(),
        &format!("/v1/sse?channel=feed&filter={filter}"),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_event(SOON).await.unwrap().event, "subscribed");
    let start = http::get(edge.address(), "/v1/poll?channel=feed")
        .await
        .json();
    let start = start["cursor"].as_str().expect("a cursor").to_owned();

    publish(&pg, (1..=LAST).map(event)).await;
    let notices: Vec<Value> = (1..=6)
        .map(|e| json!({"e": e, "kind": if e % 2 == 1 { "a" } else { "b" }}))
        .collect();
    notify(&pg, &notices).await;
    let expected: Vec<i64> = (1..=LAST).filter(|n| wanted(&event(*n))).collect();
    assert!(
        !wanted(&event(LAST)),
        "the last event is left out: its cursor must still come"
    );
    wait_until(SOON, "every event positioned", || async {
        positions(&pg).await.len() == LAST as usize
    })
    .await;
    let last_position = *positions(&pg).await.last().expect("stored");

    for ws in [&mut at_connect, &mut framed] {
        let (ns, es) = collect_ws(ws, expected.len(), 3, last_position).await;
        assert_eq!(ns, expected);
        assert_eq!(es, [1, 3, 5]);
    }

    // SSE: the same messages, and a `cursor` event moves Last-Event-ID past what was left out.
    let (mut ns, mut es, mut last_id) = (Vec::new(), Vec::new(), 0);
    while ns.len() < expected.len() || es.len() < 3 || last_id < last_position {
        let event = sse.next_event(SOON).await.expect("an SSE event");
        if let Some(id) = &event.id {
            last_id = last_id.max(position_of(id));
        }
        match event.event.as_str() {
            "message" if event.id.is_some() => ns.extend(number(&event.json()["data"], "n")),
            "message" => es.extend(number(&event.json()["data"], "e")),
            "cursor" => {}
            other => panic!("unexpected event {other}: {event:?}"),
        }
    }
    es.sort_unstable();
    assert_eq!((ns, es), (expected.clone(), vec![1, 3, 5]));

    // Long poll from the start: the matching durable messages, and the cursor of the last
    // event, which the filter left out.
    let poll = http::get(
        edge.address(),
        &format!("/v1/poll?channel=feed&cursor={start}&filter={filter}&wait=0"),
    )
    .await
    .json();
    let polled: Vec<i64> = poll["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| number(&m["data"], "n"))
        .collect();
    assert_eq!(polled, expected);
    let cursor = poll["cursor"].as_str().unwrap().to_owned();
    assert_eq!(position_of(&cursor), last_position);

    // A held poll is not ended by what the filter leaves out: it answers the match, or, when
    // none comes, nothing with the cursor past what came.
    let held = tokio::spawn({
        let address = edge.address();
        let path = format!("/v1/poll?channel=feed&cursor={cursor}&filter={filter}&wait=10");
        async move { http::get(address, &path).await.json() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&pg, [event(34), event(33)]).await; // `b` outside, then `a`
    let held = held.await.unwrap();
    assert_eq!(held["messages"].as_array().unwrap().len(), 1, "{held}");
    assert_eq!(held["messages"][0]["data"]["n"], 33);
    let held_cursor = held["cursor"].as_str().unwrap().to_owned();
    let quiet = tokio::spawn({
        let address = edge.address();
        let path = format!("/v1/poll?channel=feed&cursor={held_cursor}&filter={filter}&wait=2");
        async move { http::get(address, &path).await.json() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&pg, [event(35)]).await; // plain text
    let quiet = quiet.await.unwrap();
    assert_eq!(quiet["messages"], json!([]), "{quiet}");
    let newest = *positions(&pg).await.last().unwrap();
    assert_eq!(position_of(quiet["cursor"].as_str().unwrap()), newest);

    // Resuming with a cursor replays what matches, then goes live with the head's cursor.
    let mut resumed = WsClient::connect(&edge.ws_url(&format!(
        "/v1/ws?channel=feed&since={start}&filter={filter}"
    )))
    .await;
    let mut replayed = Vec::new();
    let subscribed = loop {
        let frame = resumed.next_json(SOON).await;
        match frame["type"].as_str() {
            Some("message") => replayed.extend(number(&frame["data"], "n")),
            Some("subscribed") => break frame,
            _ => panic!("unexpected frame {frame}"),
        }
    };
    let mut all = expected.clone();
    all.push(33);
    assert_eq!(replayed, all);
    assert_eq!(position_of(subscribed["cursor"].as_str().unwrap()), newest);

    // On a node started since, the replay comes from the events table, filtered the same way.
    let later = Edge::start(&pg.url()).await;
    let mut resumed = WsClient::connect(&later.ws_url(&format!(
        "/v1/ws?channel=feed&since={start}&filter={filter}"
    )))
    .await;
    let (from_table, _) = collect_ws(&mut resumed, all.len(), 0, newest).await;
    assert_eq!(from_table, all);
    let poll = http::get(
        later.address(),
        &format!("/v1/poll?channel=feed&cursor={start}&filter={filter}&wait=0"),
    )
    .await
    .json();
    assert_eq!(poll["messages"].as_array().unwrap().len(), all.len());
    assert_eq!(position_of(poll["cursor"].as_str().unwrap()), newest);

    // History applies the filter too.
    let history = http::get(
        edge.address(),
        &format!("/v1/history?channel=feed&limit=3&filter={filter}"),
    )
    .await
    .json();
    let listed: Vec<i64> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| number(&m["data"], "n"))
        .collect();
    assert_eq!(listed, all[all.len() - 3..]);

    // A new subscribe replaces the filter for the very next message.
    let only_z = json!({"path":"kind","op":"eq","value":"z"});
    framed
        .send_json(json!({"op":"subscribe","channels":["feed"],"filter":only_z}))
        .await;
    loop {
        let frame = framed.next_json(SOON).await;
        if frame["type"] == "subscribed" {
            break;
        }
        assert!(
            frame["type"] == "cursor" || frame["type"] == "message",
            "{frame}"
        );
    }
    publish(
        &pg,
        [
            json!({"n": 100, "kind": "a"}).to_string(),
            json!({"n": 101, "kind": "z"}).to_string(),
        ],
    )
    .await;
    let next = loop {
        let frame = framed.next_json(SOON).await;
        if frame["type"] == "message" {
            break frame;
        }
    };
    assert_eq!(next["data"]["n"], 101, "{next}");
    // The connection that kept the first filter got 100 and not 101.
    let next = loop {
        let frame = at_connect.next_json(SOON).await;
        if frame["type"] == "message" && frame["cursor"].is_string() {
            break frame;
        }
    };
    assert_eq!(next["data"]["n"], 33);
    let next = loop {
        let frame = at_connect.next_json(SOON).await;
        if frame["type"] == "message" {
            break frame;
        }
    };
    assert_eq!(next["data"]["n"], 100);

    // Bad filters are refused with `bad_filter`, naming the problem; the node serves on.
    let bad_filters = [
        (
            "/v1/sse?channel=feed".to_owned(),
            "{\"path\":",
            "not valid JSON",
        ),
        (
            format!("/v1/poll?channel=feed&cursor={cursor}"),
            r#"{"path":"x","op":"near","value":1}"#,
            "unknown op \"near\"",
        ),
        (
            "/v1/history?channel=feed".to_owned(),
            r#"{"and":[]}"#,
            "filter.and: must be a non-empty array",
        ),
        (
            "/v1/poll?channel=feed".to_owned(),
            r#"{"path":"loc","op":"within","value":[0,2,1,1]}"#,
            "[west, south, east, north]",
        ),
    ];
    for (route, bad, says) in bad_filters {
        let reply = http::get(edge.address(), &format!("{route}&filter={}", encode(bad))).await;
        assert_eq!(reply.status, 400, "{route} {bad}");
        let body = reply.json();
        assert_eq!(body["error"], "bad_filter", "{route} {bad}: {body}");
        assert!(body["reason"].as_str().unwrap().contains(says), "{body}");
    }
    let refused = WsClient::try_connect(
        &edge.ws_url(&format!("/v1/ws?channel=feed&filter={}", encode("[1]"))),
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("a bad filter at connect must be refused with 400, got {other:?}"),
    }
    framed
        .send_json(json!({"op":"subscribe","channels":["other"],"filter":{"op":"eq"},"ref":"f1"}))
        .await;
    let error = framed.next_json(SOON).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(
        (&error["code"], &error["ref"]),
        (&json!("bad_filter"), &json!("f1"))
    );
    framed.send_json(json!({"op":"ping","ref":2})).await;
    loop {
        let frame = framed.next_json(SOON).await;
        if frame["type"] == "pong" {
            break;
        }
        assert_eq!(frame["type"], "cursor", "{frame}");
    }
}
