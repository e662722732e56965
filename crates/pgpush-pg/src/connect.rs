//! Connection settings for the LISTEN connection and the pool, and SQL identifier quoting.

use std::time::Duration;

use tokio_postgres::config::TargetSessionAttrs;

/// How pgpush connects to PostgreSQL, derived from one connection URL.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    base: tokio_postgres::Config,
}

impl ConnectOptions {
    /// Parses a `postgres://` URL or a `key=value` connection string.
    pub fn parse(url: &str) -> Result<ConnectOptions, crate::Error> {
        let base: tokio_postgres::Config = url.parse().map_err(crate::Error::config)?;
        Ok(ConnectOptions { base })
    }

    /// Where it connects, for messages: `host:port[,host:port] (database d, user u)`.
    pub fn describe(&self) -> String {
        use tokio_postgres::config::Host;
        let ports = self.base.get_ports();
        let hosts: Vec<String> = self
            .base
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let host = match host {
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                };
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                format!("{host}:{port}")
            })
            .collect();
        let hosts = if hosts.is_empty() {
            "localhost:5432".to_owned()
        } else {
            hosts.join(",")
        };
        let user = self.base.get_user().unwrap_or("(the system user)");
        let database = self.base.get_dbname().unwrap_or(user);
        format!("{hosts} (database {database}, user {user})")
    }

    /// Connects once as the pool would and disconnects: whether the database takes this node.
    pub async fn check(&self) -> Result<(), crate::Error> {
        let (client, connection) = self.pool().connect(tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        client.simple_query("SELECT 1").await?;
        drop(client);
        let _ = connection.await;
        Ok(())
    }

    /// Settings for the LISTEN connection: it must reach the primary (LISTEN fails on a hot
    /// standby) and notice a dead peer within seconds, not after the 2-hour TCP default.
    pub fn listener(&self) -> tokio_postgres::Config {
        let mut config = self.base.clone();
        config
            .target_session_attrs(TargetSessionAttrs::ReadWrite)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("pgpush-listener");
        }
        config
    }

    /// Settings for pooled connections that publish and query: on the primary too (publishes
    /// write; the durable reader must read what the primary has, not a lagging standby).
    pub fn pool(&self) -> tokio_postgres::Config {
        pooled(
            self.base.clone(),
            TargetSessionAttrs::ReadWrite,
            "pgpush-pool",
        )
    }
}

/// Settings for the optional read pool on a hot standby (`--standby-database-url`): catch-up and
/// replay reads of positions the standby has already replayed. Any server will do, a primary too.
pub fn standby_reads(url: &str) -> Result<tokio_postgres::Config, crate::Error> {
    let config = url.parse().map_err(crate::Error::config)?;
    Ok(pooled(
        config,
        TargetSessionAttrs::Any,
        "pgpush-standby-reader",
    ))
}

/// A pooled connection's settings: keepalives, bounded connect, a default application name.
fn pooled(
    mut config: tokio_postgres::Config,
    attributes: TargetSessionAttrs,
    application_name: &str,
) -> tokio_postgres::Config {
    config
        .target_session_attrs(attributes)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(15))
        .tcp_user_timeout(Duration::from_secs(15));
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    config
}

/// Quotes `name` as a PostgreSQL identifier: wrapped in `"` with every `"` doubled.
///
/// `LISTEN` is a utility statement and takes no bind parameters; this is the only way a
/// channel name enters SQL text. Names are validated (no NUL, at most 63 bytes) before.
pub fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("chat"), r#""chat""#);
        assert_eq!(quote_ident("Foo"), r#""Foo""#);
        assert_eq!(
            quote_ident(r#"a"; DROP TABLE x; --"#),
            r#""a""; DROP TABLE x; --""#
        );
        assert_eq!(quote_ident("caf\u{e9}"), "\"caf\u{e9}\"");
    }
}
