//! Command-line and environment configuration: every flag has a `PGPUSH_*` variable.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand};

/// pgpush: a real-time gateway from PostgreSQL LISTEN/NOTIFY to WebSocket and SSE clients.
#[derive(Debug, Parser)]
#[command(name = "pgpush", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: CliCommand,
}

/// The `pgpush` subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run an edge node (a throwaway local PostgreSQL when DATABASE_URL is unset).
    Serve(ServeConfig),
    /// Print every notification on the given channels, like the original C listener.
    Listen(ListenArgs),
    /// Send one notification with pg_notify.
    Notify(NotifyArgs),
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Settings of an edge node.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to accept clients on; port 0 picks a free port (printed at start).
    #[arg(long, env = "PGPUSH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Database connection.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// This node's name in stats and logs (default: the listen address).
    #[arg(long, env = "PGPUSH_NODE_ID")]
    pub node_id: Option<String>,

    /// Connections in the publish pool.
    #[arg(long, env = "PGPUSH_POOL_SIZE", default_value_t = 8)]
    pub pool_size: usize,

    /// Messages a client's outbound queue may hold before the client is cut off as slow.
    #[arg(long, env = "PGPUSH_MAX_QUEUE_MESSAGES", default_value_t = 4096)]
    pub max_queue_messages: usize,

    /// Payload bytes a client's outbound queue may hold before the client is cut off as slow.
    #[arg(long, env = "PGPUSH_MAX_QUEUE_BYTES", default_value_t = 8 << 20)]
    pub max_queue_bytes: usize,

    /// Largest WebSocket message or HTTP publish body accepted from a client, in bytes.
    #[arg(long, env = "PGPUSH_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub max_message_bytes: usize,

    /// Interval of server WebSocket pings; a client silent for two intervals is closed.
    #[arg(long, env = "PGPUSH_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Interval of SSE keepalive comments.
    #[arg(long, env = "PGPUSH_SSE_KEEPALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sse_keepalive: Duration,

    /// How long a subscribe may wait for PostgreSQL to confirm LISTEN before it fails.
    #[arg(long, env = "PGPUSH_SUBSCRIBE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub subscribe_timeout: Duration,

    /// How long shutdown waits for connections to close before exiting anyway.
    #[arg(long, env = "PGPUSH_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

/// `pgpush listen <channel>...`
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Database connection.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Channels to LISTEN to (exact names, case kept).
    #[arg(required = true)]
    pub channels: Vec<String>,
}

/// `pgpush notify <channel> <payload>`
#[derive(Debug, Clone, Args)]
pub struct NotifyArgs {
    /// Database connection.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Channel name (exact, case kept).
    pub channel: String,
    /// Payload text (at most 7,999 bytes).
    pub payload: String,
}

impl ServeConfig {
    /// The configuration with every default, for `listen` on `address`, as a test would start it.
    pub fn for_address(address: SocketAddr, database_url: String) -> ServeConfig {
        let mut config = match Cli::try_parse_from(["pgpush", "serve"]) {
            Ok(Cli {
                command: CliCommand::Serve(config),
            }) => config,
            _ => unreachable!("defaults parse"),
        };
        config.listen = address;
        config.database.database_url = Some(database_url);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_defaults() {
        let cli = Cli::try_parse_from([
            "pgpush",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ping-interval",
            "2s",
            "--database-url",
            "postgres://x@h/db",
        ])
        .unwrap();
        let CliCommand::Serve(config) = cli.command else {
            panic!("serve expected")
        };
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.ping_interval, Duration::from_secs(2));
        assert_eq!(config.sse_keepalive, Duration::from_secs(15));
        assert_eq!(
            config.database.database_url.as_deref(),
            Some("postgres://x@h/db")
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["pgpush", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["pgpush", "serve", "--ping-interval", "soon"]).is_err());
        assert!(Cli::try_parse_from(["pgpush", "listen"]).is_err());
    }
}
