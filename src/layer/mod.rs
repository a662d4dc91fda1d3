//! The Tower layers of the default stack, outermost first:
//! [`TraceLayer`] → [`TimeoutLayer`] → [`LockLayer`] → [`CallbackLayer`] → backend.
//!
//! Each is a real `tower::Layer`, so they compose with third-party middleware
//! (`tower::limit`, `tower::load_shed`, `tower::buffer`) in a
//! `tower::ServiceBuilder`; hand the result to
//! [`LiveDict::from_service`](crate::LiveDict::from_service).
//!
//! Put concurrency limits and buffers *below* the [`LockLayer`]: a `lock`
//! call waits for its key inside it, so a limit above it would let lock
//! waiters hold every permit while the holder's own writes queue behind them.
//! Middleware that boxes its errors needs `.map_err(Error::from)` above it
//! ([`Error`](crate::Error) implements `From<tower::BoxError>`).
//!
//! The layers are not tied to livedict's backends: any
//! `tower::Service<Request<V>, Response = Response<V>, Error = Error>` can sit
//! below them (see `tests/tower_interop.rs` for a `HashMap` backend).

pub mod callback;
pub mod lock;
pub mod timeout;
pub mod trace;

pub use callback::{CallbackLayer, Callbacks, DispatchConfig, Dispatcher};
pub use lock::{Lock, LockLayer};
pub use timeout::{Timeout, TimeoutLayer};
pub use trace::{Trace, TraceLayer};
