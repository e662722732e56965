//! The durable events table: publishing, reading in global order, replaying for a client.

use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;

use crate::{Epoch, Error, History};

/// A sequenced event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Insertion id (what `pgpush.publish` returns).
    pub id: i64,
    /// Position in the global order.
    pub position: i64,
    /// Channel.
    pub channel: String,
    /// Payload text.
    pub payload: String,
    /// W3C trace context of the publisher, if any.
    pub traceparent: Option<String>,
    /// When the publishing transaction inserted it (PostgreSQL's clock).
    pub created_at: SystemTime,
}

/// This database's identity.
#[derive(Debug, Clone)]
pub struct Installation {
    /// Random id, set when the schema was created.
    pub id: String,
    /// The key cursors are signed with.
    pub cursor_key: Vec<u8>,
}

/// The global order's high-water mark and retention floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The current epoch's id.
    pub epoch: i64,
    /// The highest position assigned.
    pub last_position: i64,
    /// Every position at or below it may be gone.
    pub retention_floor: i64,
}

/// PostgreSQL's side of a node's health, sampled for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// `pg_notification_queue_usage()`: the fraction of the NOTIFY queue in use.
    pub notification_queue_usage: f64,
    /// Durable events: (committed events still waiting for a position, age in seconds of the
    /// oldest of them, highest position assigned); `None` without the pgpush schema.
    pub durable: Option<(i64, f64, i64)>,
}

/// What a catch-up query read: events after a position, and where the history stood in the
/// same snapshot.
#[derive(Debug)]
pub struct CatchUp {
    /// The current epoch's id.
    pub epoch: i64,
    /// The highest position assigned: with fewer rows than asked for, every event up to it
    /// has been read.
    pub last_position: i64,
    /// Events in position order.
    pub rows: Vec<EventRow>,
}

/// A stored Hippie client position: a point of the durable history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HippiePosition {
    /// The epoch it was read in (`None`: stored before epochs, read as the epoch containing it).
    pub epoch: Option<i64>,
    /// The position.
    pub position: i64,
}

/// A replay: the events after a cursor, or the news that some of them are gone.
#[derive(Debug)]
pub struct Replay {
    /// The retention floor, read in the same snapshot as the rows.
    pub retention_floor: i64,
    /// The current epoch in that snapshot.
    pub epoch: i64,
    /// The highest position assigned in that snapshot: a standby has every event up to it.
    pub last_position: i64,
    /// Events in position order.
    pub rows: Vec<EventRow>,
}

/// Reads and writes `pgpush.events` through the pool.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: Pool,
}

const COLUMNS: &str = "id, position, channel, payload, traceparent, created_at";

/// The events of a query whose columns from `at` on are [`COLUMNS`] of a LEFT JOIN (NULL when
/// no event matched).
fn event_rows(rows: &[tokio_postgres::Row], at: usize) -> Vec<EventRow> {
    rows.iter()
        .filter(|r| r.get::<_, Option<i64>>(at).is_some())
        .map(|r| EventRow {
            id: r.get(at),
            position: r.get(at + 1),
            channel: r.get(at + 2),
            payload: r.get(at + 3),
            traceparent: r.get(at + 4),
            created_at: r.get(at + 5),
        })
        .collect()
}

impl EventStore {
    /// A store over `pool`.
    pub fn new(pool: Pool) -> EventStore {
        EventStore { pool }
    }

    /// A read-only store with a pool of its own (`config` from [`crate::standby_reads`]).
    pub fn reader(config: tokio_postgres::Config, max_size: usize) -> Result<EventStore, Error> {
        Ok(EventStore::new(crate::publisher::pool(config, max_size)?))
    }

    /// Fails with [`Error::is_not_migrated`] unless the schema is at this build's version.
    pub async fn check_schema(&self) -> Result<(), Error> {
        let client = self.pool.get().await?;
        match crate::schema_version(&client).await? {
            Some(version) if version >= crate::SCHEMA_VERSION => Ok(()),
            _ => Err(Error::schema(
                "the pgpush schema is missing or older than this build",
            )),
        }
    }

    /// The installation id and cursor key; fails with [`Error::is_not_migrated`] before
    /// `pgpush migrate`.
    pub async fn installation(&self) -> Result<Installation, Error> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT id::text, cursor_key FROM pgpush.installation", &[])
            .await?;
        Ok(Installation {
            id: row.get(0),
            cursor_key: row.get(1),
        })
    }

    /// The global high-water mark and retention floor.
    pub async fn head(&self) -> Result<Head, Error> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT epoch, last_position, retention_floor FROM pgpush.sequencer_state",
                &[],
            )
            .await?;
        Ok(Head {
            epoch: row.get(0),
            last_position: row.get(1),
            retention_floor: row.get(2),
        })
    }

    /// The database's chain of epochs.
    pub async fn history(&self) -> Result<History, Error> {
        let client = self.pool.get().await?;
        let epochs = client
            .query(
                "SELECT seq, id, first_position, forked_after FROM pgpush.epochs",
                &[],
            )
            .await?
            .iter()
            .map(|row| Epoch {
                seq: row.get(0),
                id: row.get(1),
                first_position: row.get(2),
                forked_after: row.get(3),
            })
            .collect();
        History::new(epochs).ok_or_else(|| Error::schema("pgpush.epochs is empty"))
    }

    /// Begins a new epoch if the current one is still `expected` and ends below `delivered`
    /// (a position that was delivered, so the history lost its end). Returns the current epoch.
    pub async fn begin_epoch_if_behind(&self, expected: i64, delivered: i64) -> Result<i64, Error> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one(
                "SELECT pgpush.begin_epoch_if_behind($1, $2)",
                &[&expected, &delivered],
            )
            .await?
            .get(0))
    }

    /// The NOTIFY queue's usage and the sequencer's backlog.
    pub async fn backlog(&self) -> Result<Backlog, Error> {
        let client = self.pool.get().await?;
        let usage: f64 = client
            .query_one("SELECT pg_notification_queue_usage()", &[])
            .await?
            .get(0);
        let durable = client
            .query_one(
                "SELECT count(*),
                        coalesce(extract(epoch FROM clock_timestamp() - min(created_at))::float8, 0),
                        (SELECT last_position FROM pgpush.sequencer_state)
                 FROM pgpush.events WHERE position IS NULL",
                &[],
            )
            .await;
        let durable = match durable.map_err(Error::from) {
            Ok(row) => Some((row.get(0), row.get(1), row.get(2))),
            Err(error) if error.is_not_migrated() => None,
            Err(error) => return Err(error),
        };
        Ok(Backlog {
            notification_queue_usage: usage,
            durable,
        })
    }

    /// Up to `limit` events after `position`, every channel, in order, with the current epoch
    /// and high-water mark of the same snapshot.
    pub async fn after(&self, position: i64, limit: i64) -> Result<CatchUp, Error> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT s.epoch, s.last_position, e.{} FROM pgpush.sequencer_state s
                 LEFT JOIN LATERAL (
                     SELECT {COLUMNS} FROM pgpush.events
                     WHERE position > $1 ORDER BY position LIMIT $2
                 ) e ON true",
                COLUMNS.replace(", ", ", e.")
            ))
            .await?;
        let rows = client.query(&statement, &[&position, &limit]).await?;
        let first = rows
            .first()
            .ok_or_else(|| Error::schema("pgpush.sequencer_state is empty"))?;
        Ok(CatchUp {
            epoch: first.get(0),
            last_position: first.get(1),
            rows: event_rows(&rows, 2),
        })
    }

    /// Up to `limit` events of `channels` in (`after`, `upto`], with the retention floor of the
    /// same snapshot: if `after` is below it, events may be missing.
    pub async fn replay(
        &self,
        channels: &[&str],
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Replay, Error> {
        self.read_with_state(
            "channel = ANY($1) AND position > $2 AND position <= $3 ORDER BY position LIMIT $4",
            &[&channels, &after, &upto, &limit],
        )
        .await
    }

    /// The events `condition` (a WHERE clause with its ORDER BY and LIMIT) selects, with the
    /// retention floor, epoch and high-water mark of the same snapshot.
    async fn read_with_state(
        &self,
        condition: &str,
        parameters: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Replay, Error> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT s.retention_floor, s.epoch, s.last_position, e.{} FROM pgpush.sequencer_state s
                 LEFT JOIN LATERAL (SELECT {COLUMNS} FROM pgpush.events WHERE {condition}) e ON true",
                COLUMNS.replace(", ", ", e.")
            ))
            .await?;
        let rows = client.query(&statement, parameters).await?;
        let first = rows
            .first()
            .ok_or_else(|| Error::schema("pgpush.sequencer_state is empty"))?;
        Ok(Replay {
            retention_floor: first.get(0),
            epoch: first.get(1),
            last_position: first.get(2),
            rows: event_rows(&rows, 3),
        })
    }

    /// The last `limit` events of `channel` below `before` and at most `upto`, oldest first,
    /// with the state of the same snapshot.
    pub async fn channel_history(
        &self,
        channel: &str,
        before: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Replay, Error> {
        let mut history = self
            .read_with_state(
                "channel = $1 AND position < $2 AND position <= $3 ORDER BY position DESC LIMIT $4",
                &[&channel, &before, &upto, &limit],
            )
            .await?;
        history.rows.reverse();
        Ok(history)
    }

    /// Publishes a durable event (`pgpush.publish`, or `pgpush.publish_once` with an idempotency
    /// key valid for `key_valid_for`). Returns the event id.
    pub async fn publish(
        &self,
        channel: &str,
        payload: &str,
        traceparent: Option<&str>,
        idempotency_key: Option<(&str, Duration)>,
    ) -> Result<i64, Error> {
        let client = self.pool.get().await?;
        let row = match idempotency_key {
            None => {
                let statement = client
                    .prepare_cached("SELECT pgpush.publish($1::text, $2::text, $3::text)")
                    .await?;
                client
                    .query_one(&statement, &[&channel, &payload, &traceparent])
                    .await?
            }
            Some((key, valid_for)) => {
                let statement = client
                    .prepare_cached(
                        "SELECT pgpush.publish_once($1, make_interval(secs => $2), $3, $4::text, $5::text)",
                    )
                    .await?;
                let seconds = valid_for.as_secs_f64();
                client
                    .query_one(
                        &statement,
                        &[&key, &seconds, &channel, &payload, &traceparent],
                    )
                    .await?
            }
        };
        Ok(row.get(0))
    }

    /// The stored position of a Hippie client, if it has one.
    pub async fn hippie_position(
        &self,
        channel: &str,
        client_id: &str,
    ) -> Result<Option<HippiePosition>, Error> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT epoch, position FROM pgpush.hippie_clients WHERE channel = $1 AND client_id = $2",
            )
            .await?;
        Ok(client
            .query_opt(&statement, &[&channel, &client_id])
            .await?
            .map(|row| HippiePosition {
                epoch: row.get(0),
                position: row.get(1),
            }))
    }

    /// Stores Hippie clients' positions (channel, client id, point) in one statement; a stored
    /// position never moves back (positions grow along the history, across epochs too).
    pub async fn save_hippie_positions(
        &self,
        positions: &[(String, String, HippiePosition)],
    ) -> Result<(), Error> {
        if positions.is_empty() {
            return Ok(());
        }
        let channels: Vec<&str> = positions.iter().map(|(c, _, _)| c.as_str()).collect();
        let ids: Vec<&str> = positions.iter().map(|(_, i, _)| i.as_str()).collect();
        let epochs: Vec<Option<i64>> = positions.iter().map(|(_, _, p)| p.epoch).collect();
        let values: Vec<i64> = positions.iter().map(|(_, _, p)| p.position).collect();
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO pgpush.hippie_clients (channel, client_id, epoch, position)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
                 ON CONFLICT (channel, client_id) DO UPDATE
                 SET epoch = CASE WHEN excluded.position >= pgpush.hippie_clients.position
                                  THEN excluded.epoch ELSE pgpush.hippie_clients.epoch END,
                     position = greatest(pgpush.hippie_clients.position, excluded.position),
                     updated_at = now()",
            )
            .await?;
        client
            .execute(&statement, &[&channels, &ids, &epochs, &values])
            .await?;
        Ok(())
    }

    /// The position of event `id`, once the sequencer assigned one.
    pub async fn position_of(&self, id: i64) -> Result<Option<i64>, Error> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT position FROM pgpush.events WHERE id = $1")
            .await?;
        Ok(client
            .query_opt(&statement, &[&id])
            .await?
            .and_then(|row| row.get(0)))
    }
}
