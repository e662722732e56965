//! The sequencer: on at most one node at a time (a PostgreSQL advisory lock elects it), it gives
//! committed events their global positions in batches, NOTIFYs once per batch, applies retention.

use std::{sync::Arc, time::Duration};

use deadpool_postgres::{Object, Pool};
use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often a failing sequencer connection is logged again.
const REMINDER: Duration = Duration::from_secs(60);

/// The advisory lock whose holder is the sequencer.
const SEQUENCER_LOCK: i64 = 0x7067_7075_7368_0001;

/// How a sequencer works.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// A batch starts at most this often (bounds added latency). Under load the sequencer's
    /// cost (a transaction, a NOTIFY, every node's catch-up query) is then paid per interval,
    /// not per handful of events; idle, it is one index probe per interval.
    pub interval: Duration,
    /// Most LISTEN wake-ups per second the batches may cost, over all nodes (0: no limit): the
    /// interval is at least the number of nodes' LISTEN connections divided by it.
    pub wakeups_per_second: u32,
    /// How often a node that is not the sequencer tries to become it.
    pub takeover_interval: Duration,
    /// Most events positioned per batch.
    pub batch_size: i32,
    /// Delete events older than this.
    pub retention_age: Option<Duration>,
    /// Keep at most this many events.
    pub retention_count: Option<i64>,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// How often retention runs.
    pub retention_interval: Duration,
}

/// Whether this node is the sequencer, for readiness and metrics.
#[derive(Debug, Clone)]
pub struct SequencerHandle {
    leading: watch::Receiver<bool>,
}

impl SequencerHandle {
    /// True while this node holds the sequencer lock.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }
}

/// Runs a sequencer candidate until `shutdown`: every `takeover_interval` it tries the lock on a
/// connection borrowed from `pool` (the node's, on the primary), and when it wins keeps that
/// connection (taken out of the pool) and sequences while it holds the lock. A node that is not
/// the sequencer so holds no connection of its own for it. Releasing the lock on shutdown hands
/// over at once; a crashed node's session ends with its socket, which releases the lock too.
pub fn spawn_sequencer(
    pool: Pool,
    settings: SequencerConfig,
    shutdown: CancellationToken,
) -> (SequencerHandle, tokio::task::JoinHandle<()>) {
    let (leading_tx, leading) = watch::channel(false);
    let leading_tx = Arc::new(leading_tx);
    let task = tokio::spawn(async move {
        // While the database stays away, once a minute is enough to say so.
        let mut said: Option<tokio::time::Instant> = None;
        loop {
            let result = candidate(&pool, &settings, &leading_tx, &shutdown).await;
            leading_tx.send_replace(false);
            if shutdown.is_cancelled() {
                break;
            }
            match result {
                Err(error) if said.is_none_or(|at| at.elapsed() >= REMINDER) => {
                    warn!(%error, "sequencer connection lost; retrying");
                    said = Some(tokio::time::Instant::now());
                }
                Err(error) => debug!(%error, "sequencer connection still failing"),
                Ok(()) => said = None,
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(settings.takeover_interval) => {}
            }
        }
    });
    (SequencerHandle { leading }, task)
}

async fn candidate(
    pool: &Pool,
    settings: &SequencerConfig,
    leading: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> Result<(), crate::Error> {
    loop {
        let client = pool.get().await?;
        // Without the schema (a migration Job not done yet) there is nothing to sequence: wait
        // quietly; the node's durable reader says what is missing.
        let migrated = crate::schema_version(&client)
            .await?
            .is_some_and(|version| version >= crate::SCHEMA_VERSION);
        let acquired = migrated
            && client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&SEQUENCER_LOCK])
                .await?
                .get::<_, bool>(0);
        if acquired {
            return hold(Object::take(client), settings, leading, shutdown).await;
        }
        drop(client);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(settings.takeover_interval) => {}
        }
    }
}

/// Sequences on `client`, which holds the lock, until shutdown or an error.
async fn hold(
    client: deadpool_postgres::ClientWrapper,
    settings: &SequencerConfig,
    leading: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> Result<(), crate::Error> {
    // The server notices a vanished sequencer within seconds (and frees the lock), not after
    // the 2-hour TCP default. Positions are committed durably (and on a synchronous standby,
    // when there is one) even where the server's default is asynchronous commit: a position a
    // node has read must survive a crash of the server.
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3;
             SET synchronous_commit = on; SET application_name = 'pgpush-sequencer';",
        )
        .await?;
    info!("this node is now the sequencer");
    leading.send_replace(true);
    let result = lead(&client, settings, shutdown).await;
    leading.send_replace(false);
    if shutdown.is_cancelled() {
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&SEQUENCER_LOCK])
            .await;
        info!("sequencer lock released");
    }
    result
}

/// The interval between batches: the configured one, longer when the nodes' LISTEN connections
/// (counted by their application name) would otherwise be woken more often than the budget.
async fn paced_interval(
    client: &Client,
    settings: &SequencerConfig,
) -> Result<Duration, crate::Error> {
    if settings.wakeups_per_second == 0 {
        return Ok(settings.interval);
    }
    let listeners: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'pgpush-listener'",
            &[],
        )
        .await?
        .get(0);
    let paced = Duration::from_secs_f64(listeners as f64 / f64::from(settings.wakeups_per_second));
    Ok(settings.interval.max(paced))
}

async fn lead(
    client: &Client,
    settings: &SequencerConfig,
    shutdown: &CancellationToken,
) -> Result<(), crate::Error> {
    let batch = client.prepare("SELECT pgpush.sequence_batch($1)").await?;
    let retention = client
        .prepare("SELECT pgpush.apply_retention(make_interval(secs => $1), $2, make_interval(secs => $3))")
        .await?;
    // A Hippie client's position is useful while its client may still come back.
    let forget_clients = client
        .prepare("DELETE FROM pgpush.hippie_clients WHERE updated_at < now() - interval '1 hour'")
        .await?;
    // A new server (restarted, promoted, restored) begins a new epoch before anything else;
    // every batch checks again before it assigns positions.
    let epoch: i64 = client
        .query_one("SELECT pgpush.ensure_epoch()", &[])
        .await?
        .get(0);
    info!(epoch = format!("{epoch:x}"), "sequencing in this epoch");
    let mut retention_due = tokio::time::Instant::now();
    let mut interval = settings.interval;
    // Before the first batch nothing is known: treat it as not full.
    let mut previous_last = i64::MAX;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        let assigned: Option<i64> = client
            .query_one(&batch, &[&settings.batch_size])
            .await?
            .get(0);
        if let Some(last) = assigned {
            // Recorded after the fact, and only for batches that positioned something: an idle
            // sequencer polls often and would flood traces with empty spans.
            tracing::debug_span!(
                "sequencer.batch",
                last_position = last,
                query_ms = started.elapsed().as_secs_f64() * 1000.0,
            )
            .in_scope(|| {});
        }
        if tokio::time::Instant::now() >= retention_due {
            retention_due = tokio::time::Instant::now() + settings.retention_interval;
            interval = paced_interval(client, settings).await?;
            let age = settings.retention_age.map(|d| d.as_secs_f64());
            let window = settings.idempotency_window.as_secs_f64();
            let deleted: i64 = client
                .query_one(&retention, &[&age, &settings.retention_count, &window])
                .await?
                .get(0);
            if deleted > 0 {
                info!(deleted, "retention removed old events");
            }
            client.execute(&forget_clients, &[]).await?;
        }
        // A full batch leaves a backlog: go on at once.
        let full =
            assigned.is_some_and(|last| last - previous_last >= i64::from(settings.batch_size));
        previous_last = assigned.unwrap_or(previous_last);
        if !full {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(started + interval) => {}
            }
        }
    }
}
