//! pgpush's PostgreSQL side: the single LISTEN connection, the publish pool, and throwaway clusters.
//!
//! The LISTEN connection is a plain `tokio_postgres` connection driven by `poll_message`; it is
//! never taken from the pool (deadpool's connections drop notifications and its recycling runs
//! `UNLISTEN *`).

mod connect;
mod epochs;
mod error;
mod events;
mod listener;
mod migrations;
mod notice;
mod presence;
mod publisher;
mod sequencer;
pub mod throwaway;

pub use connect::{ConnectOptions, quote_ident, standby_reads};
pub use epochs::{Continuation, Epoch, History};
pub use error::Error;
pub use events::{
    Backlog, CatchUp, EventRow, EventStore, Head, HippiePosition, Installation, Replay,
};
pub use listener::{Listener, ListenerState, ListenerTask, NotificationSink};
pub use migrations::{SCHEMA_VERSION, migrate, migrate_database, schema_version};
pub use notice::WakeNotice;
pub use presence::{CONTROL_CHANNEL, PRESENCE_CHANNEL, PresenceStore, PresentClient, unix_time};
pub use publisher::{PoolStatus, Publisher};
pub use sequencer::{SequencerConfig, SequencerHandle, spawn_sequencer};
pub use tokio_postgres::Config as PgConfig;
