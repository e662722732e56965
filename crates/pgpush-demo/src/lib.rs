//! pgpush's demos: the original talk's PostGIS location demo, its chat, and cache invalidation.
//!
//! - [`setup`] installs the `person` table and its trigger (durable or plain `pg_notify`);
//! - [`simulate`] walks people around with `UPDATE`s, as many per second as asked;
//! - [`people`] is the snapshot the map page starts from;
//! - [`PAGES`] are the demo's pages, served by every edge node;
//! - [`cache`] keeps an in-memory copy of a table coherent through `pgpush.watch_table`.

pub mod cache;
mod setup;
mod simulate;

pub use setup::{DemoError, Trigger, people, setup};
pub use simulate::{Area, SimulateOptions, simulate};

/// The demo's pages: (path, HTML).
pub const PAGES: &[(&str, &str)] = &[
    ("/demo/map", include_str!("../web/map.html")),
    ("/demo/chat", include_str!("../web/chat.html")),
];

/// The channel the `person` trigger publishes on.
pub const PERSON_CHANNEL: &str = "person_updated";
