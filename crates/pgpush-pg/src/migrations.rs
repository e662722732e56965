//! Versioned, idempotent schema migrations for the `pgpush` schema (`pgpush migrate`).

use tokio_postgres::Client;
use tracing::info;

use crate::Error;

/// Every migration, in order: (version, what it does, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "durable events, sequencer, retention, idempotency keys",
        include_str!("../migrations/0001_durable_events.sql"),
    ),
    (
        2,
        "positions of Hippie clients",
        include_str!("../migrations/0002_hippie_positions.sql"),
    ),
    (
        3,
        "cache invalidation: watch_table",
        include_str!("../migrations/0003_watch_table.sql"),
    ),
    (
        4,
        "plans that stay cheap: pgpush.publish in PL/pgSQL, the sequencer probe on its index",
        include_str!("../migrations/0004_cheap_plans.sql"),
    ),
    (
        5,
        "epochs of the durable history: cursors that survive a failover or a restore, or reset",
        include_str!("../migrations/0005_epochs.sql"),
    ),
    (
        6,
        "the batch's events in its notifications: no per-node query per batch",
        include_str!("../migrations/0006_events_in_notifications.sql"),
    ),
    (
        7,
        "presence, and server-side control: disconnect, unsubscribe, revoke_token",
        include_str!("../migrations/0007_presence_and_control.sql"),
    ),
];

/// Advisory lock that serialises concurrent `migrate` runs (several nodes starting at once).
const MIGRATE_LOCK: i64 = 0x7067_7075_7368_0002;

/// The schema version this build expects.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Applies every migration not applied yet, each recorded in `pgpush.schema_migrations`, all in
/// one transaction. Safe to run any number of times, from several processes at once. Returns the
/// versions it applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, Error> {
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    transaction
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS pgpush;
             CREATE TABLE IF NOT EXISTS pgpush.schema_migrations (
                 version integer PRIMARY KEY,
                 description text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await?;
    let applied: Vec<i32> = transaction
        .query("SELECT version FROM pgpush.schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut done = Vec::new();
    for (version, description, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "INSERT INTO pgpush.schema_migrations (version, description) VALUES ($1, $2)",
                &[version, description],
            )
            .await?;
        info!(version, description, "migration applied");
        done.push(*version);
    }
    transaction.commit().await?;
    Ok(done)
}

/// Connects (as the pool would) and runs [`migrate`].
pub async fn migrate_database(options: &crate::ConnectOptions) -> Result<Vec<i32>, Error> {
    let (mut client, connection) = options.pool().connect(tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let applied = migrate(&mut client).await;
    drop(client);
    let _ = connection.await;
    applied
}

/// The highest migration applied, or `None` when the schema is not there.
pub async fn schema_version(client: &Client) -> Result<Option<i32>, Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('pgpush.schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(client
        .query_one("SELECT max(version) FROM pgpush.schema_migrations", &[])
        .await?
        .get(0))
}
