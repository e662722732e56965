//! The publisher: numbered, timestamped messages (`{"seq":n,"t":<ns>}`) at a steady rate, or as
//! fast as delivery keeps up, over HTTP or SQL. Each channel belongs to one writer (one
//! connection), so a channel's messages are published in order.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::{PublishVia, ServerKind, manifest::Plan, tally::now_nanos, viewport};

/// Closed-loop gate: publish only while fewer than `window` messages per subscriber are in
/// flight (published times subscribers per channel, minus delivered).
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) delivered: Arc<AtomicU64>,
    pub(crate) subscribers_per_channel: u64,
    pub(crate) window: u64,
}

enum Connection {
    Http(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Sql(SqlWriter),
}

/// A SQL publishing connection with its statements prepared once.
struct SqlWriter {
    client: tokio_postgres::Client,
    publish: tokio_postgres::Statement,
    /// With `--write-row`: the row each publishing transaction inserts first.
    write_row: Option<tokio_postgres::Statement>,
}

/// The table `--write-row` transactions insert into.
const WRITES_TABLE: &str = "CREATE TABLE IF NOT EXISTS pgpush_loadgen_writes (
    channel text NOT NULL, seq bigint NOT NULL, written_at timestamptz NOT NULL DEFAULT now())";

/// Publishes for `plan.duration`; returns how many messages went to each channel.
pub(crate) async fn publish(
    plan: &Plan,
    server: ServerKind,
    target: SocketAddr,
    database_url: Option<&str>,
    gate: Option<Gate>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let published = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + plan.duration;
    let writers = plan.writers.min(plan.channels);
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let channels: Vec<String> = (0..plan.channels)
            .filter(|c| c % writers == writer)
            .map(|c| format!("lg-{c}"))
            .collect();
        let mut connection = open(plan, server, target, database_url).await?;
        let rate = plan.rate / writers as f64;
        let gate = gate.clone();
        let published = published.clone();
        let mode = mode_query(plan.publish_via);
        let viewports = plan.viewports;
        tasks.push(tokio::spawn(async move {
            let mut sent: BTreeMap<String, u64> = BTreeMap::new();
            let start = tokio::time::Instant::now();
            let mut n: u64 = 0;
            while tokio::time::Instant::now() < deadline {
                if rate > 0.0 {
                    tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate))
                        .await;
                } else if let Some(gate) = &gate {
                    // As fast as delivery keeps up.
                    loop {
                        let in_flight = published.load(Ordering::Relaxed)
                            * gate.subscribers_per_channel
                            - gate.delivered.load(Ordering::Relaxed).min(
                                published.load(Ordering::Relaxed) * gate.subscribers_per_channel,
                            );
                        if in_flight < gate.window * gate.subscribers_per_channel
                            || tokio::time::Instant::now() >= deadline
                        {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                }
                let channel = &channels[(n as usize) % channels.len()];
                let seq = sent.get(channel).copied().unwrap_or(0) + 1;
                let loc = match viewports {
                    true => viewport::loc_member(seq),
                    false => String::new(),
                };
                let payload = format!(r#"{{"seq":{seq},"t":{}{loc}}}"#, now_nanos());
                send(
                    &mut connection,
                    server,
                    target,
                    channel,
                    seq,
                    &payload,
                    mode,
                )
                .await?;
                sent.insert(channel.clone(), seq);
                published.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(sent)
        }));
    }
    let mut total = BTreeMap::new();
    for task in tasks {
        total.extend(task.await??);
    }
    Ok(total)
}

async fn open(
    plan: &Plan,
    server: ServerKind,
    target: SocketAddr,
    database_url: Option<&str>,
) -> anyhow::Result<Connection> {
    let via = plan.publish_via;
    match via {
        PublishVia::HttpDurable | PublishVia::HttpEphemeral => {
            let stream = tokio::net::TcpStream::connect(target).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let _ = server;
            Ok(Connection::Http(sender))
        }
        PublishVia::SqlNotify | PublishVia::SqlDurable => {
            let url = database_url.context("--database-url is needed to publish over SQL")?;
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let publish = client
                .prepare(if via == PublishVia::SqlNotify {
                    "SELECT pg_notify($1, $2)"
                } else {
                    "SELECT pgpush.publish($1::text, $2::text)"
                })
                .await?;
            let write_row = if plan.write_row {
                client.batch_execute(WRITES_TABLE).await?;
                let insert = "INSERT INTO pgpush_loadgen_writes (channel, seq) VALUES ($1, $2)";
                Some(client.prepare(insert).await?)
            } else {
                None
            };
            Ok(Connection::Sql(SqlWriter {
                client,
                publish,
                write_row,
            }))
        }
    }
}

async fn send(
    connection: &mut Connection,
    server: ServerKind,
    target: SocketAddr,
    channel: &str,
    seq: u64,
    payload: &str,
    mode: &str,
) -> anyhow::Result<()> {
    match connection {
        Connection::Sql(writer) => match &writer.write_row {
            None => {
                writer
                    .client
                    .execute(&writer.publish, &[&channel, &payload])
                    .await?;
            }
            Some(insert) => {
                // One round trip: tokio-postgres sends a statement when its future is first
                // polled, try_join4 polls them in order, and the server answers in order. A
                // failing statement fails the ones after it ("transaction is aborted") and
                // COMMIT then rolls back, so an error here means nothing was published.
                let client = &writer.client;
                futures_util::future::try_join4(
                    client.batch_execute("BEGIN"),
                    client.execute(insert, &[&channel, &(seq as i64)]),
                    client.execute(&writer.publish, &[&channel, &payload]),
                    client.batch_execute("COMMIT"),
                )
                .await?;
            }
        },
        Connection::Http(sender) => {
            let path = match server {
                ServerKind::Nchan => format!("/pub/{channel}"),
                // The ephemeral mode is picked by the query; the thin server ignores it.
                ServerKind::Pgpush | ServerKind::Thin => format!("/v1/publish/{channel}{}", mode),
            };
            sender.ready().await?;
            let request = hyper::Request::post(path)
                .header(hyper::header::HOST, target.to_string())
                .body(Full::new(Bytes::from(payload.to_owned())))?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let _ = response.into_body().collect().await;
            if !status.is_success() {
                bail!("publish failed: {status}");
            }
        }
    }
    Ok(())
}

/// The publish path for a mode: durable unless ephemeral was asked for.
pub(crate) fn mode_query(via: PublishVia) -> &'static str {
    if via == PublishVia::HttpEphemeral {
        "?mode=ephemeral"
    } else {
        ""
    }
}
