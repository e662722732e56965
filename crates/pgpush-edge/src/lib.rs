//! The pgpush edge node as a library: the core (hub, queues, durable channels), the client
//! transports, the Hippie routes, admission and operations, assembled by `app`. The `pgpush`
//! binary parses its flags into [`settings`] and calls [`run`]; tests run that binary.

mod admission;
mod app;
pub mod core;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod hippie;
pub mod http;
pub mod ops;
mod services;
pub mod settings;
mod transport;

pub use self::core::hub::WAKE_CHANNEL;
pub use admission::AuthSetupError;
pub use app::{Bound, Extension, ExtensionFuture, StartError, migrate, run};
