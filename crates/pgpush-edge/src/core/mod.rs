//! The core: channels and their subscribers (`hub`, `queue`, `session`), presence
//! (`presence`), durable channels (`durable`, `replay`) and publishing, as data and tasks with no HTTP in them. It imports only
//! `ops`, `error` and `settings`; PostgreSQL's LISTEN connection comes in through `listen`.

pub(crate) mod audience;
pub(crate) mod durable;
pub mod hub;
pub mod listen;
pub mod presence;
pub(crate) mod publishing;
pub mod queue;
pub(crate) mod replay;
pub mod session;

#[cfg(test)]
pub(crate) mod tests;
