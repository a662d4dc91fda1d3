//! livedict: a TTL key-value store for Tokio services.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod atomic;
pub mod backend;
pub mod blocking;
mod builder;
pub mod callback;
pub mod codec;
mod dict;
pub mod error;
pub mod event;
mod guard;
pub mod layer;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod request;
mod single_flight;
mod stack;
pub mod stats;
mod url;
mod watch;

pub use atomic::ATOMIC_LOCK_TIMEOUT;
pub use builder::{Builder, DEFAULT_REQUEST_TIMEOUT};
pub use callback::{Callback, CallbackId};
pub use codec::Codec;
pub use dict::LiveDict;
pub use error::{Error, Result};
pub use event::{Event, EventKind, EventSink, EventTarget};
pub use guard::KeyGuard;
pub use request::{
    LockGrant, LockToken, MAX_KEY_LEN, MAX_TTL, Request, Response, validate_key, validate_ttl,
};
pub use stats::Stats;
pub use watch::{Watch, WatchFilter, WatchItem};

/// What a stored value must be: serde-serializable (for SQLite and Redis),
/// cloneable and shareable across tasks. Implemented for every such type.
pub trait Value: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T> Value for T where T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static {}
