//! The async handle ([`LiveDict`](crate::LiveDict)) and its extensions.
//!
//! `dict.rs` holds the handle and its core operations over the Tower stack;
//! every other file here adds to it and depends on `dict.rs` only (never the
//! other way): `builder.rs` (the default stack, `open`, `builder`),
//! `guard.rs` (per-key locks, `lock`), `atomic.rs` (`update`, `incr`,
//! `compare_and_set`), `batch.rs` (`get_many`, `set_many`, `delete_many`), `single_flight.rs` with `flights.rs`
//! (`get_or_insert_with`), `watch.rs` (`watch`), `throttle.rs` (rate-limit
//! checks, feature `ratelimit`) and `metrics.rs`.
//! `direct.rs` is the one piece `dict.rs` uses: `get` and `set` on the
//! default memory stack without a request when no layer has work to do.

pub(crate) mod atomic;
mod batch;
pub(crate) mod builder;
pub(crate) mod dict;
mod direct;
mod flights;
pub(crate) mod guard;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub(crate) mod scan;
mod single_flight;
#[cfg(feature = "ratelimit")]
mod throttle;
mod watch;
