//! Storage backends: each is a `tower::Service<Request<V>>` that owns its expiry driver.
//!
//! # The backend contract
//!
//! Every backend answers every [`Request`] variant with its
//! matching [`Response`] and the same semantics, so one
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

#[cfg(any(feature = "sqlite", feature = "redis"))]
mod common;
pub mod memory;
#[cfg(any(feature = "sqlite", feature = "redis"))]
mod receipts;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

pub use memory::{MemoryBackend, MemoryConfig};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{Eviction, RedisBackend, RedisConfig};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::{EvictionPolicy, SqliteBackend, SqliteConfig};

use std::future::{Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use pin_project::pin_project;

use crate::Value;
use crate::error::{Error, Result};
use crate::request::{Request, Response};

/// Any of the built-in backends; the bottom of the default stack built by
/// [`LiveDict::builder`](crate::LiveDict::builder).
#[non_exhaustive]
pub enum AnyBackend<V> {
    /// In-process memory.
    Memory(MemoryBackend<V>),
    /// An SQLite file.
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    Sqlite(SqliteBackend<V>),
    /// A Redis server or cluster.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    Redis(RedisBackend<V>),
}

impl<V> Clone for AnyBackend<V> {
    fn clone(&self) -> Self {
        match self {
            AnyBackend::Memory(b) => AnyBackend::Memory(b.clone()),
            #[cfg(feature = "sqlite")]
            AnyBackend::Sqlite(b) => AnyBackend::Sqlite(b.clone()),
            #[cfg(feature = "redis")]
            AnyBackend::Redis(b) => AnyBackend::Redis(b.clone()),
        }
    }
}

impl<V> std::fmt::Debug for AnyBackend<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl<V> AnyBackend<V> {
    /// `"memory"`, `"sqlite"` or `"redis"`.
    pub fn name(&self) -> &'static str {
        match self {
            AnyBackend::Memory(_) => "memory",
            #[cfg(feature = "sqlite")]
            AnyBackend::Sqlite(_) => "sqlite",
            #[cfg(feature = "redis")]
            AnyBackend::Redis(_) => "redis",
        }
    }
}

/// Future of [`AnyBackend`]: memory answers are ready at once and not boxed.
#[pin_project(project = AnyFutureProj)]
pub enum AnyFuture<V> {
    /// A memory answer.
    Ready(#[pin] Ready<Result<Response<V>>>),
    /// An SQLite or Redis answer.
    Boxed(BoxFuture<'static, Result<Response<V>>>),
}

impl<V> Future for AnyFuture<V> {
    type Output = Result<Response<V>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnyFutureProj::Ready(f) => f.poll(cx),
            AnyFutureProj::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

impl<V: Value> tower::Service<Request<V>> for AnyBackend<V> {
    type Response = Response<V>;
    type Error = Error;
    type Future = AnyFuture<V>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        // Every built-in backend is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<V>) -> Self::Future {
        match self {
            AnyBackend::Memory(b) => AnyFuture::Ready(b.call(req)),
            #[cfg(feature = "sqlite")]
            AnyBackend::Sqlite(b) => AnyFuture::Boxed(b.call(req)),
            #[cfg(feature = "redis")]
            AnyBackend::Redis(b) => AnyFuture::Boxed(b.call(req)),
        }
    }
}
