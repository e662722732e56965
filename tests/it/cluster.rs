//! Three real edge processes behind the real nginx, in both modes: every transport through the
//! proxy, node loss, rolling restart, nginx reload, Hippie affinity, real client addresses.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use pgpush_tests::{
    Edge, EdgeOptions, Nginx, SseClient, TestPostgres, WsClient,
    durable::{self, ResumingSubscriber},
    http,
    raw::MxhrClient,
    wait_until,
};
use serde_json::{Value, json};

use crate::SOON;

/// A cluster: PostgreSQL, three nodes on fixed ports, nginx in `mode` in front.
struct Cluster {
    pg: TestPostgres,
    nodes: Vec<Edge>,
    ports: Vec<SocketAddr>,
    nginx: Nginx,
    mode: &'static str,
}

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn node_options(mode: &str, listen: SocketAddr) -> EdgeOptions {
    let mut args = vec![
        "--trusted-proxy",
        "127.0.0.1",
        "--drain-window",
        "1s",
        "--hippie-keepalive",
        "0",
        "--hippie-poll-hold",
        "2s",
    ];
    if mode == "stream" {
        args.push("--proxy-protocol");
    }
    let mut options = EdgeOptions::args(&args);
    options.listen = Some(listen);
    options
}

impl Cluster {
    async fn start(mode: &'static str) -> Cluster {
        let pg = TestPostgres::start();
        let ports: Vec<SocketAddr> = (0..3).map(|_| free_address()).collect();
        let mut nodes = Vec::new();
        for port in &ports {
            nodes.push(Edge::start_with(&pg.url(), node_options(mode, *port)).await);
        }
        let nginx = Nginx::start(mode, &ports, mode == "stream").await;
        Cluster {
            pg,
            nodes,
            ports,
            nginx,
            mode,
        }
    }

    /// SIGTERM node `i` (it drains), wait for it to exit 0, start it again on its port.
    async fn restart(&mut self, i: usize) {
        self.nodes[i].signal("TERM");
        let status = self.nodes[i].wait_exit(Duration::from_secs(20)).await;
        assert!(status.success(), "node {i} exited with {status:?}");
        self.nodes[i] =
            Edge::start_with(&self.pg.url(), node_options(self.mode, self.ports[i])).await;
        let node = &self.nodes[i];
        wait_until(SOON, "restarted node ready", || async {
            node.ready_status().await == 200
        })
        .await;
    }
}

/// Publishes `{"n":k}` on `channel` with `pgpush.publish` every `every` until stopped.
fn spawn_writer(
    url: String,
    channel: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            client
                .execute(
                    "SELECT pgpush.publish($1, $2)",
                    &[&channel, &format!(r#"{{"n":{n}}}"#)],
                )
                .await
                .unwrap();
            tokio::time::sleep(every).await;
        }
    })
}

async fn every_transport_through_nginx(mode: &'static str) {
    let cluster = Cluster::start(mode).await;
    let address = cluster.nginx.address();
    let mut ws = WsClient::connect(&cluster.nginx.ws_url("/v1/ws?channel=all")).await;
    assert_eq!(ws.next_json(SOON).await["type"], "subscribed");
    let mut sse = SseClient::connect(address, "/v1/sse?channel=all", &[]).await;
    assert_eq!(sse.next_event(SOON).await.unwrap().event, "subscribed");
    let mut mxhr = MxhrClient::open(address, "/_hippie/mxhr/all?client_id=mx").await;
    assert_eq!(
        mxhr.next_json(SOON).await.unwrap()["type"],
        "hippie.pipe.set_client_id"
    );
    let mut hippie_ws =
        WsClient::connect(&cluster.nginx.ws_url("/_hippie/ws/all?client_id=hw")).await;
    assert_eq!(
        hippie_ws.next_json(SOON).await["type"],
        "hippie.pipe.set_client_id"
    );
    let cursor = http::get(address, "/v1/poll?channel=all").await.json()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    // A browser polls over one keep-alive connection: in stream mode that keeps it on one node
    // (each new TCP connection may go to another; the http mode hashes the client_id instead).
    let hippie_poll = "/_hippie/poll/all?client_id=hp";
    let mut poller = http::HttpConnection::open(address).await;
    poller.get(hippie_poll).await;

    let published = http::post(address, "/v1/publish/all", r#"{"via":"nginx"}"#).await;
    assert_eq!(published.status, 200, "{}", published.text());
    let want = json!({"via": "nginx"});
    assert_eq!(ws.next_message(SOON).await["data"], want);
    assert_eq!(sse.next_message(SOON).await.1["data"], want);
    assert_eq!(mxhr.next_json(SOON).await.unwrap(), want);
    assert_eq!(hippie_ws.next_json(SOON).await, want);
    let polled = http::get(
        address,
        &format!("/v1/poll?channel=all&cursor={cursor}&wait=5"),
    )
    .await
    .json();
    assert_eq!(polled["messages"][0]["data"], want);
    assert_eq!(poller.get(hippie_poll).await.json(), json!([want]));

    // Connections spread over all three nodes.
    let mut many = Vec::new();
    for _ in 0..30 {
        let mut client = WsClient::connect(&cluster.nginx.ws_url("/v1/ws?channel=spread")).await;
        client.next_json(SOON).await;
        many.push(client);
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        let stats = node.stats().await;
        assert!(
            stats.connections.websocket >= 5,
            "{mode}: node {i} holds {} sockets",
            stats.connections.websocket
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_transport_through_nginx_in_stream_mode() {
    every_transport_through_nginx("stream").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_transport_through_nginx_in_http_mode() {
    every_transport_through_nginx("http").await;
}

/// 300 subscribers through nginx while events stream; `fault` happens mid-stream; every
/// subscriber gets every event once, in order.
async fn survive(cluster: &mut Cluster, fault: &str) -> Vec<ResumingSubscriber> {
    let nginx = vec![cluster.nginx.address()];
    let mut subscribers = Vec::new();
    for _ in 0..300 {
        let mut subscriber = ResumingSubscriber::new(nginx.clone(), 0, &["stream"]);
        subscriber.connect().await;
        subscribers.push(subscriber);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(
        cluster.pg.url(),
        "stream",
        Duration::from_millis(10),
        stop.clone(),
    );
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                s.receive_until(50, Duration::from_secs(60)).await;
                s
            })
        })
        .collect();
    let mut subscribers = Vec::new();
    for reader in readers {
        subscribers.push(reader.await.unwrap());
    }
    match fault {
        "kill" => cluster.nodes[1].kill().await,
        "rolling" => {
            for i in 0..3 {
                cluster.restart(i).await;
            }
        }
        "reload" => {
            cluster.nginx.reload().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.nginx.reload().await;
        }
        _ => unreachable!(),
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let expected: Vec<Value> = durable::stored(&cluster.pg, "stream")
        .await
        .into_iter()
        .map(|(_, payload)| payload)
        .collect();
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut s| {
            let count = expected.len();
            tokio::spawn(async move {
                s.receive_until(count, Duration::from_secs(90)).await;
                s
            })
        })
        .collect();
    let mut subscribers = Vec::new();
    for reader in readers {
        let subscriber = reader.await.unwrap();
        subscriber.assert_in_order_once();
        let data: Vec<Value> = subscriber.received.iter().map(|r| r.data.clone()).collect();
        assert_eq!(
            data, expected,
            "{fault}: a subscriber lost, repeated or reordered events"
        );
        subscribers.push(subscriber);
    }
    subscribers
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_a_node_behind_nginx_reconnects_its_clients_within_three_seconds() {
    let mut cluster = Cluster::start("stream").await;
    let subscribers = survive(&mut cluster, "kill").await;
    let moved: Vec<_> = subscribers
        .iter()
        .filter(|s| !s.reconnect_times.is_empty())
        .collect();
    assert!(
        moved.len() >= 50,
        "the killed node's clients reconnected ({} did)",
        moved.len()
    );
    for subscriber in moved {
        for time in &subscriber.reconnect_times {
            assert!(*time < Duration::from_secs(3), "reconnected after {time:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_behind_nginx_loses_and_repeats_nothing() {
    let mut cluster = Cluster::start("http").await;
    let subscribers = survive(&mut cluster, "rolling").await;
    let moved = subscribers.iter().filter(|s| s.reconnects > 0).count();
    assert!(
        moved >= 250,
        "every node was restarted, so most clients moved ({moved} did)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_reload_under_load_loses_no_durable_message() {
    let mut cluster = Cluster::start("stream").await;
    survive(&mut cluster, "reload").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_tells_clients_to_reconnect_and_readiness_fails_first() {
    let pg = TestPostgres::start();
    let mut options = EdgeOptions::args(&["--drain-window", "2s"]);
    options.listen = Some(free_address());
    let mut node = Edge::start_with(&pg.url(), options).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = WsClient::connect(&node.ws_url("/v1/ws?channel=d")).await;
        client.next_json(SOON).await;
        clients.push(client);
    }
    let mut sse = SseClient::connect(node.address(), "/v1/sse?channel=d", &[]).await;
    sse.next_event(SOON).await;
    let started = std::time::Instant::now();
    node.signal("TERM");
    // Readiness fails at once; the listening socket closes so a proxy sends new clients elsewhere.
    wait_until(SOON, "not accepting", || async {
        tokio::net::TcpStream::connect(node.address())
            .await
            .is_err()
    })
    .await;
    // Every client watched at once, so each close is timed when it arrives.
    let watchers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                assert_eq!(
                    client.expect_close(SOON).await,
                    1012,
                    "service restart: reconnect elsewhere"
                );
                started.elapsed()
            })
        })
        .collect();
    let mut close_times = Vec::new();
    for watcher in watchers {
        close_times.push(watcher.await.unwrap());
    }
    let retry = sse
        .next_event(SOON)
        .await
        .expect("retry before the stream ends");
    assert!(
        retry.retry.is_some_and(|ms| (250..=3000).contains(&ms)),
        "{retry:?}"
    );
    let status = node.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success());
    close_times.sort();
    // Spread over the window rather than all at once.
    assert!(
        close_times[close_times.len() - 1] - close_times[0] > Duration::from_millis(500),
        "{close_times:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hippie_long_poll_client_keeps_its_node_and_resumes_when_it_dies() {
    let mut cluster = Cluster::start("http").await;
    let address = cluster.nginx.address();
    // The 302 handshake through nginx: an absolute Location on nginx's address.
    let redirect = http::get(address, "/_hippie/poll/h").await;
    assert_eq!(redirect.status, 302);
    let location = redirect.headers["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("http://{address}/_hippie/poll/h?client_id=")),
        "{location}"
    );
    let path = &location[format!("http://{address}").len()..];
    assert_eq!(
        http::get(address, path).await.json()[0]["type"],
        "hippie.pipe.set_client_id"
    );
    let client = cluster.pg.client().await;
    let mut got = Vec::new();
    for n in 1..=10 {
        client
            .execute("SELECT pgpush.publish('h', $1::text)", &[&n.to_string()])
            .await
            .unwrap();
        while got.len() < n {
            got.extend(
                http::get(address, path)
                    .await
                    .json()
                    .as_array()
                    .unwrap()
                    .iter()
                    .cloned(),
            );
        }
    }
    assert_eq!(got, (1..=10).map(|n| json!(n)).collect::<Vec<_>>());
    // One queue, on one node: every poll went to it.
    let mut holders = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        if node.stats().await.hippie_queues > 0 {
            holders.push(i);
        }
    }
    assert_eq!(
        holders.len(),
        1,
        "the client's queue lives on exactly one node"
    );
    // Acknowledge the last answer, let the position be stored, then kill that node.
    assert_eq!(http::get(address, path).await.json(), json!([]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.nodes[holders[0]].kill().await;
    for n in 11..=15 {
        client
            .execute("SELECT pgpush.publish('h', $1::text)", &[&n.to_string()])
            .await
            .unwrap();
    }
    let mut after = Vec::new();
    while after.last() != Some(&json!(15)) {
        let answer = http::get(address, path).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        after.extend(
            answer
                .json()
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m.get("type").is_none())
                .cloned(),
        );
    }
    assert_eq!(
        after,
        (11..=15).map(|n| json!(n)).collect::<Vec<_>>(),
        "resumed on another node without loss"
    );
}

async fn stamped_address(mode: &'static str) {
    let cluster = Cluster::start(mode).await;
    let mut watcher = MxhrClient::open(cluster.nginx.address(), "/_hippie/mxhr/who").await;
    watcher.next_json(SOON).await;
    let client_address: IpAddr = "127.0.0.5".parse().unwrap();
    let form = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-forwarded-for", "6.6.6.6"),
    ];
    let reply = http::request_from(
        client_address,
        cluster.nginx.address(),
        "POST".parse().unwrap(),
        "/_hippie/pub/who",
        &form,
        "message=%7B%22n%22%3A1%7D",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let message = watcher.next_json(SOON).await.unwrap();
    assert_eq!(
        message["address"], "127.0.0.5",
        "{mode}: the real client's address, not nginx's nor a forged one"
    );
    // Straight to a node, from an untrusted address, with a forged PROXY header or
    // X-Forwarded-For: the TCP peer's address is stamped.
    let untrusted: IpAddr = "127.0.0.9".parse().unwrap();
    if mode == "stream" {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(untrusted, 0)).unwrap();
        let mut stream = socket.connect(cluster.ports[0]).await.unwrap();
        let body = "message=%7B%22n%22%3A2%7D";
        let request = format!(
            "PROXY TCP4 6.6.6.6 127.0.0.1 1234 80\r\nPOST /_hippie/pub/who HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    } else {
        let reply = http::request_from(
            untrusted,
            cluster.ports[0],
            "POST".parse().unwrap(),
            "/_hippie/pub/who",
            &form,
            "message=%7B%22n%22%3A2%7D",
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let message = watcher.next_json(SOON).await.unwrap();
    assert_eq!(message["n"], 2);
    assert_eq!(
        message["address"], "127.0.0.9",
        "{mode}: an untrusted peer cannot spoof its address"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_client_address_in_stream_mode_via_the_proxy_protocol() {
    stamped_address("stream").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_client_address_in_http_mode_via_forwarded_for() {
    stamped_address("http").await;
}
