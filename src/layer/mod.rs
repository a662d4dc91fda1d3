//! The Tower layers of the default stack, outermost first:
//! [`TraceLayer`] → [`TimeoutLayer`] → [`LockLayer`] → [`CallbackLayer`] → backend.
//!
//! Each is a real `tower::Layer`, so they compose with third-party middleware
//! (`tower::limit`, `tower::load_shed`, `tower::buffer`) in a
//! `tower::ServiceBuilder`; hand the result to
//! [`LiveDict::from_service`](crate::LiveDict::from_service).

pub mod callback;
pub mod lock;
pub mod timeout;
pub mod trace;

pub use callback::{CallbackLayer, Callbacks, DispatchConfig, Dispatcher};
pub use lock::{Lock, LockLayer};
pub use timeout::{Timeout, TimeoutLayer};
pub use trace::{Trace, TraceLayer};
