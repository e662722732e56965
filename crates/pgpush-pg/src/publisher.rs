//! The publish pool: deadpool-postgres with explicit timeouts, used for `pg_notify`, queries and
//! the sequencer's connection.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::Error;

/// A pooled connection unused this long is closed.
const IDLE_CLOSE: Duration = Duration::from_secs(20);

/// The pool's size and use.
pub use deadpool_postgres::Status as PoolStatus;

/// Publishes through a small pool of connections, never through the LISTEN connection.
#[derive(Debug, Clone)]
pub struct Publisher {
    pool: Pool,
}

impl Publisher {
    /// Builds the pool (connections open lazily). `config` comes from
    /// [`crate::ConnectOptions::pool`].
    pub fn new(config: tokio_postgres::Config, max_size: usize) -> Result<Publisher, Error> {
        Ok(Publisher {
            pool: pool(config, max_size)?,
        })
    }

    /// `SELECT pg_notify($1, $2)`: an ephemeral message to whoever LISTENs on `channel`,
    /// this node's own subscribers included (they hear it through PostgreSQL like everyone).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), Error> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
        client.execute(&statement, &[&channel, &payload]).await?;
        Ok(())
    }

    /// A pooled connection for other queries (returned to the pool when dropped).
    pub async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        Ok(self.pool.get().await?)
    }

    /// How many pooled connections exist, are idle, and how many callers wait for one.
    pub fn pool_status(&self) -> PoolStatus {
        self.pool.status()
    }

    /// The durable events table, through the same pool.
    pub fn events(&self) -> crate::EventStore {
        crate::EventStore::new(self.pool.clone())
    }

    /// Presence and server-side control, through the same pool.
    pub fn presence(&self) -> crate::PresenceStore {
        crate::PresenceStore::new(self.pool.clone())
    }

    /// Closes pooled connections unused for [`IDLE_CLOSE`], checking every half of it, until
    /// `shutdown`: a node opens several at start (its first queries run at once) and needs
    /// one or two afterwards, and every idle backend is memory and a slot on the primary.
    pub async fn close_idle_until(&self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(IDLE_CLOSE / 2) => {}
            }
            self.pool
                .retain(|_, metrics| metrics.last_used() < IDLE_CLOSE);
        }
    }

    /// The pool itself (the sequencer takes its connection from it).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// A pool of at most `max_size` connections, opened lazily, with explicit timeouts.
pub(crate) fn pool(config: tokio_postgres::Config, max_size: usize) -> Result<Pool, Error> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        // The most recently used connection first, so the others go idle and are closed.
        .queue_mode(QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(Error::config)
}
