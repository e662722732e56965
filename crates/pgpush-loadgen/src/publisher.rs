//! Publishes stamped, numbered messages at a steady rate over SQL or HTTP.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{Args, PublishVia, subscriber::now_nanos};

/// Publishes to the channels in turn.
pub(crate) struct Publisher {
    via: Via,
    channels: Vec<String>,
}

enum Via {
    Sql(Vec<tokio_postgres::Client>, &'static str),
    Http(SocketAddr),
}

impl Publisher {
    pub(crate) async fn new(
        args: &Args,
        target: SocketAddr,
        channels: Vec<String>,
    ) -> anyhow::Result<Publisher> {
        let via = match args.publish_via {
            PublishVia::SqlNotify | PublishVia::SqlDurable => {
                let url = args
                    .database_url
                    .as_deref()
                    .context("--database-url is needed to publish over SQL")?;
                let mut clients = Vec::new();
                for _ in 0..4 {
                    let (client, connection) =
                        tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                    tokio::spawn(connection);
                    clients.push(client);
                }
                let statement = if args.publish_via == PublishVia::SqlNotify {
                    "SELECT pg_notify($1, $2)"
                } else {
                    "SELECT pgpush.publish($1::text, $2::text)"
                };
                Via::Sql(clients, statement)
            }
            PublishVia::HttpEphemeral => Via::Http(target),
        };
        Ok(Publisher { via, channels })
    }

    /// Publishes at `rate` messages/s for `duration`; returns how many went to each channel.
    /// Message n on a channel has `seq` n (starting at 1) and its publish time `t`.
    pub(crate) async fn run(
        &self,
        rate: f64,
        duration: Duration,
    ) -> anyhow::Result<HashMap<String, u64>> {
        let mut sent: HashMap<String, u64> = HashMap::new();
        let interval = Duration::from_secs_f64(1.0 / rate);
        let total = (rate * duration.as_secs_f64()).round() as u64;
        let start = tokio::time::Instant::now();
        for n in 0..total {
            tokio::time::sleep_until(start + interval.mul_f64(n as f64)).await;
            let channel = &self.channels[(n as usize) % self.channels.len()];
            let seq = sent.get(channel).copied().unwrap_or(0) + 1;
            let payload = format!(r#"{{"seq":{seq},"t":{}}}"#, now_nanos());
            match &self.via {
                Via::Sql(clients, statement) => {
                    let client = &clients[(n as usize) % clients.len()];
                    client.execute(*statement, &[channel, &payload]).await?;
                }
                Via::Http(target) => http_publish(*target, channel, &payload).await?,
            }
            sent.insert(channel.clone(), seq);
        }
        Ok(sent)
    }
}

async fn http_publish(target: SocketAddr, channel: &str, payload: &str) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(target).await?;
    let request = format!(
        "POST /v1/publish/{channel}?mode=ephemeral HTTP/1.1\r\nhost: {target}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!("publish failed: {}", String::from_utf8_lossy(&response));
    }
    Ok(())
}
