//! Presence and server-side control in PostgreSQL: the nodes' batches of joins and leaves, their
//! heartbeats, the cluster-wide list, and `pgpush.disconnect`/`unsubscribe`/`revoke_token`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;

use crate::Error;

/// The channel presence changes are NOTIFYd on.
pub const PRESENCE_CHANNEL: &str = "pgpush_presence";
/// The channel server-side control is NOTIFYd on.
pub const CONTROL_CHANNEL: &str = "pgpush_control";

/// One present connection, as the list answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentClient {
    /// The connection's id.
    pub id: String,
    /// Its token's `sub`.
    pub user: Option<String>,
    /// Its token's `info`, as JSON text.
    pub info: Option<String>,
}

/// Presence and control statements over the primary's pool.
#[derive(Debug, Clone)]
pub struct PresenceStore {
    pool: Pool,
}

impl PresenceStore {
    /// A store over `pool` (the primary's: the presence tables are unlogged, absent on standbys).
    pub fn new(pool: Pool) -> PresenceStore {
        PresenceStore { pool }
    }

    /// Writes one batch of `node`'s changes (JSON arrays, see `pgpush.presence_apply`). Returns
    /// false when the node's row was missing: everything it holds must be written again.
    pub async fn apply(&self, node: &str, joins: &str, leaves: &str) -> Result<bool, Error> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT pgpush.presence_apply($1, $2::text::jsonb, $3::text::jsonb)")
            .await?;
        let row = client
            .query_one(&statement, &[&node, &joins, &leaves])
            .await?;
        Ok(row.get(0))
    }

    /// `node`'s heartbeat, reaping nodes silent for `timeout`. Returns false when the node's row
    /// was missing.
    pub async fn heartbeat(&self, node: &str, timeout: Duration) -> Result<bool, Error> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT pgpush.presence_heartbeat($1, make_interval(secs => $2))")
            .await?;
        let row = client
            .query_one(&statement, &[&node, &timeout.as_secs_f64()])
            .await?;
        Ok(row.get(0))
    }

    /// `node` stops: all its connections leave.
    pub async fn depart(&self, node: &str) -> Result<(), Error> {
        let client = self.pool.get().await?;
        client
            .execute("SELECT pgpush.presence_depart($1)", &[&node])
            .await?;
        Ok(())
    }

    /// Who is present in `channel` on nodes heard from within `timeout`, oldest first.
    pub async fn list(
        &self,
        channel: &str,
        timeout: Duration,
    ) -> Result<Vec<PresentClient>, Error> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT p.client, p.user_id, p.info::text FROM pgpush.presence p
                 JOIN pgpush.presence_nodes n ON n.node = p.node
                 WHERE p.channel = $1 AND n.seen > now() - make_interval(secs => $2)
                 ORDER BY p.joined, p.client",
            )
            .await?;
        let rows = client
            .query(&statement, &[&channel, &timeout.as_secs_f64()])
            .await?;
        Ok(rows
            .iter()
            .map(|row| PresentClient {
                id: row.get(0),
                user: row.get(1),
                info: row.get(2),
            })
            .collect())
    }

    /// `pgpush.disconnect(user)`.
    pub async fn disconnect(&self, user: &str) -> Result<(), Error> {
        let client = self.pool.get().await?;
        client
            .execute("SELECT pgpush.disconnect($1)", &[&user])
            .await?;
        Ok(())
    }

    /// `pgpush.unsubscribe(user, channel)`.
    pub async fn unsubscribe(&self, user: &str, channel: &str) -> Result<(), Error> {
        let client = self.pool.get().await?;
        client
            .execute("SELECT pgpush.unsubscribe($1, $2)", &[&user, &channel])
            .await?;
        Ok(())
    }

    /// `pgpush.revoke_token(jti, until)`, `until` in seconds since the Unix epoch (as a
    /// token's `exp`).
    pub async fn revoke_token(&self, jti: &str, until: f64) -> Result<(), Error> {
        let client = self.pool.get().await?;
        client
            .execute(
                "SELECT pgpush.revoke_token($1, to_timestamp($2))",
                &[&jti, &until],
            )
            .await?;
        Ok(())
    }

    /// The revocations still in force: (jti, until).
    pub async fn revoked_tokens(&self) -> Result<Vec<(String, SystemTime)>, Error> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT jti, extract(epoch FROM until)::float8 FROM pgpush.revoked_tokens
                 WHERE until > now()",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), unix_time(row.get(1))))
            .collect())
    }
}

/// The moment `seconds` after the Unix epoch (0 for anything before it).
pub fn unix_time(seconds: f64) -> SystemTime {
    UNIX_EPOCH + Duration::try_from_secs_f64(seconds).unwrap_or_default()
}
