//! Storage backends: each is a `tower::Service<Request<V>>` that owns its expiry driver.
//!
//! # The backend contract
//!
//! Every backend answers every [`Request`](crate::Request) variant with its
//! matching [`Response`](crate::Response) and the same semantics, so one
//! behavioural test suite runs against all of them:
//!
//! - `Set { ttl: None }` stores without expiry and drops any earlier deadline;
//!   the last write always decides the deadline.
//! - Reads (`Get`, `Exists`, `Ttl`, `Keys`, `Items`, `Len`) never see a value
//!   past its deadline, even before the expiry driver removed it.
//! - The expiry driver removes each expired entry exactly once and reports it
//!   through [`EventSink::expired`](crate::EventSink::expired) with its value.
//! - `Delete` answers `Deleted { removed, value }`; `Expire`/`Persist` answer
//!   `Bool(true)` only when a live entry (with a deadline, for `Persist`) was changed.
//! - Locks: `Lock`/`Renew`/`Unlock` are answered by the backend; in-process
//!   waiting is done by the [`LockLayer`](crate::layer::LockLayer) above it.
//!   Distributed backends also enforce locks for writers in other processes.
//! - `Shutdown` flushes pending writes and stops background tasks; dropping
//!   the last clone of a backend stops them too.
//! - Hits, misses, sets and deletes are counted by the layers; a backend
//!   counts only what it originates (expirations, evictions) via its sink.

pub mod memory;


