//! livedict: a TTL key-value store for Tokio services.
//!
//! A dictionary whose entries expire on time (millisecond precision), that
//! tells you through callbacks when entries are set, read, deleted, expired
//! or evicted, that lets you lock a key across a read-modify-write, and that
//! runs on three backends — in-process memory, an SQLite file, a Redis server
//! — behind one API. It is async-first, built as a stack of Tower middleware
//! you can recompose, and has a [blocking facade](blocking) for sync code.
//!
//! # Quickstart
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
//! use std::time::Duration;
//! use livedict::LiveDict;
//!
//! let d: LiveDict<String> = LiveDict::open("memory://").await?;
//! d.set("greeting", "hello".to_string()).await?;
//! d.set_with_ttl("session:alice", "token-1".to_string(), Duration::from_secs(30)).await?;
//!
//! assert_eq!(d.get("greeting").await?.as_deref(), Some("hello"));
//! assert!(d.ttl("session:alice").await?.unwrap() <= Duration::from_secs(30));
//! assert_eq!(d.len().await?, 2);
//! assert!(d.delete("greeting").await?);
//! d.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! A [`LiveDict`] is a cheap, cloneable handle (clones share the store), so
//! keep one in your application state and clone it into tasks. Values are any
//! `Serialize + DeserializeOwned + Clone + Send + Sync + 'static` type (see
//! [`Value`]); keys are non-empty strings of at most [`MAX_KEY_LEN`] bytes.
//!
//! # Choosing a backend
//!
//! | backend | open with | data lives | shared by | use it for |
//! | --- | --- | --- | --- | --- |
//! | memory (moka) | `memory://`, `memory://?max_capacity=100000` | in this process | clones of the handle | caches, sessions of one instance; fastest, no serialization |
//! | SQLite | `sqlite://path.db`, `sqlite::memory:` | a file (WAL, group commit) | processes on one machine | state that survives restarts without a server |
//! | Redis | `redis://host:6379/0?namespace=app`, `rediss://…` (feature `redis-tls`), `redis-cluster://…` | a Redis server | processes on many machines | state shared by a fleet |
//!
//! All three give the same semantics (the same behavioural test suite runs on
//! each): millisecond TTLs, expire events carrying the expired value,
//! enforced per-key locks. On SQLite and Redis, locks hold across processes
//! and every expiration is delivered exactly once in total, to one of the
//! processes sharing the file or namespace. SQLite and Redis store values
//! through a [`Codec`] (JSON by default, readable from `sqlite3` and
//! `redis-cli`); an undecodable stored value is [`Error::Decode`] and is left
//! in place. Every option is also a [`Builder`] method:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
//! # #[cfg(feature = "sqlite")] {
//! use std::time::Duration;
//! let dir = tempfile::tempdir().unwrap();
//! let d = livedict::LiveDict::<u64>::builder()
//!     .sqlite(dir.path().join("app.db"))
//!     .table("counters")
//!     .default_ttl(Duration::from_secs(3600))
//!     .build()
//!     .await?;
//! d.set("visits", 1).await?;
//! d.shutdown().await?; // flushes the group-commit writer
//! let again = livedict::LiveDict::<u64>::builder().sqlite(dir.path().join("app.db")).table("counters");
//! let again = again.build().await?;
//! assert_eq!(again.get("visits").await?, Some(1));
//! # }
//! # Ok(()) }
//! ```
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
//! use std::time::Duration;
//! let d = livedict::LiveDict::<String>::builder()
//!     .redis("redis://127.0.0.1:6379/0")
//!     .namespace("orders")
//!     .request_timeout(Duration::from_secs(2))
//!     .lock_lease(Duration::from_secs(10))
//!     .build()
//!     .await?; // an unreachable server is an error within the connect timeout
//! # let _ = d;
//! # Ok(()) }
//! ```
//!
//! A bad URL, an unknown scheme or option is [`Error::InvalidUrl`] (the URL
//! is shown without its password), never a panic.
//!
//! # TTL semantics
//!
//! - [`set`](LiveDict::set) stores without expiry (or with the builder's
//!   [`default_ttl`](Builder::default_ttl)); [`set_with_ttl`](LiveDict::set_with_ttl)
//!   expires the value `ttl` from now. **The last write decides the
//!   deadline**: a plain `set` after a `set_with_ttl` drops the deadline.
//! - TTLs have millisecond precision on every backend. A zero TTL or one
//!   above [`MAX_TTL`] (100 years) is [`Error::InvalidTtl`].
//! - Reads ([`get`](LiveDict::get), [`exists`](LiveDict::exists),
//!   [`keys`](LiveDict::keys), [`items`](LiveDict::items), [`len`](LiveDict::len))
//!   never see a value past its deadline, even before the expiry driver has
//!   removed it.
//! - [`ttl`](LiveDict::ttl) reads the remaining time, [`expire`](LiveDict::expire)
//!   sets a new deadline, [`persist`](LiveDict::persist) drops it.
//! - Each backend runs an expiry driver that removes entries at their
//!   deadline (within a few milliseconds) and fires an [`EventKind::Expire`]
//!   event with the value, whether or not the key is touched again. The
//!   memory backend uses Tokio's clock, so `tokio::time::pause` drives its
//!   TTLs in tests; SQLite and Redis use the wall clock.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
//! use std::time::Duration;
//! let d = livedict::LiveDict::<u32>::open("memory://").await?;
//! d.set_with_ttl("k", 1, Duration::from_millis(20)).await?;
//! d.set("k", 2).await?; // the last write decides: no deadline any more
//! assert_eq!(d.ttl("k").await?, None);
//! assert!(d.expire("k", Duration::from_millis(20)).await?);
//! tokio::time::sleep(Duration::from_millis(40)).await;
//! assert_eq!(d.get("k").await?, None);
//! # Ok(()) }
//! ```
//!
//! # Events and the sandbox
//!
//! [`register_callback`](LiveDict::register_callback) subscribes a
//! [`Callback`] to one [`EventKind`]: `Set`, `Get` (hits only), `Delete` (only
//! when something was removed), `Expire` (with the expired value) or `Evict`
//! (the memory backend's capacity bound, or a Redis server evicting under
//! its `maxmemory-policy`). An [`Event`] has a `kind()`, `key()`, `value()` and
//! `at()`. Callbacks can be disabled, re-enabled and unregistered by their
//! [`CallbackId`].
//!
//! Callbacks run in a sandbox, never on the caller's path: the operation
//! returns first.
//!
//! - Each callback has its own bounded queue and gets its events in order,
//!   exactly once. A full queue drops the event and counts it in
//!   [`Stats::events_dropped`]; writers never block on a slow callback.
//! - Sync callbacks ([`Callback::new`]) run on a dedicated thread, never on
//!   a Tokio worker, so they may block; async ones ([`Callback::new_async`])
//!   run as a Tokio task.
//! - A callback that can fail ([`Callback::fallible`],
//!   [`Callback::fallible_async`]) returns a `Result`: an `Err` is logged
//!   (`tracing` warn, with the error's chain) and counted
//!   ([`Stats::callbacks_failed`]), and under
//!   [`Delivery::AtLeastOnce`] the expiration is delivered again.
//! - A panic is caught and counted ([`Stats::callbacks_panicked`]); a call
//!   past its [timeout](Callback::timeout) is abandoned and counted
//!   ([`Stats::callbacks_timed_out`]); the next event proceeds.
//! - A callback may call back into the same store (e.g. re-set an expired key).
//! - [`shutdown`](LiveDict::shutdown) delivers queued events (up to a drain
//!   timeout) before it returns.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
//! use std::time::Duration;
//! use livedict::{Callback, Event, EventKind, LiveDict};
//! let d = LiveDict::<String>::open("memory://").await?;
//! let (tx, mut expired) = tokio::sync::mpsc::unbounded_channel();
//! d.register_callback(
//!     EventKind::Expire,
//!     Callback::new_async(move |ev: Event<String>| {
//!         let tx = tx.clone();
//!         async move { tx.send((ev.key().to_owned(), ev.value().cloned())).unwrap(); }
//!     })
//!     .timeout(Duration::from_secs(1)),
//! )?;
//! d.set_with_ttl("session:bob", "token".to_string(), Duration::from_millis(10)).await?;
//! // Nobody reads the key: the event still arrives, with the value.
//! let (key, value) = expired.recv().await.unwrap();
//! assert_eq!((key.as_str(), value.as_deref()), ("session:bob", Some("token")));
//! # Ok(()) }
//! ```
//!
//! # Locks and leases
//!
//! [`lock(key, timeout)`](LiveDict::lock) waits up to `timeout` for the key's
//! lock (else [`Error::LockTimeout`]) and returns a [`KeyGuard`] that reads and
//! writes the locked key; dropping the guard (or
//! [`unlock`](KeyGuard::unlock)) releases it. Locks are **enforced**: while a
//! key is locked, writes to it through any other handle wait (up to their
//! request timeout); reads do not wait. Waiters are served in order.
//!
//! On SQLite and Redis the lock is held across every process sharing the
//! file or namespace and carries a lease (default 30 s,
//! [`Builder::lock_lease`]), so a crashed holder cannot block a key forever.
//! A guard whose lease ran out fails its writes with [`Error::LockLost`]
//! instead of overwriting a newer holder's data;
//! [`renew`](KeyGuard::renew) extends the lease and [`fence`](KeyGuard::fence)
//! is a strictly increasing fencing token.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
//! use std::time::Duration;
//! let d = livedict::LiveDict::<u64>::open("memory://").await?;
//! let tasks: Vec<_> = (0..50)
//!     .map(|_| {
//!         let d = d.clone();
//!         tokio::spawn(async move {
//!             let guard = d.lock("counter", Duration::from_secs(5)).await?;
//!             let n = guard.get().await?.unwrap_or(0);
//!             guard.set(n + 1).await?;
//!             guard.unlock().await
//!         })
//!     })
//!     .collect();
//! for t in tasks {
//!     t.await.unwrap()?;
//! }
//! assert_eq!(d.get("counter").await?, Some(50)); // no lost increment
//! # Ok(()) }
//! ```
//!
//! For the common read-modify-writes there are one-call helpers that take
//! the lock for you: [`update`](LiveDict::update), [`incr`](LiveDict::incr),
//! [`compare_and_set`](LiveDict::compare_and_set), and
//! [`get_or_insert_with`](LiveDict::get_or_insert_with) (one loader per key
//! at a time). [`watch`](LiveDict::watch) streams events instead of calling
//! back.
//!
//! # Blocking vs async
//!
//! [`LiveDict`] is the async API. [`blocking::LiveDict`] has the same methods
//! without `.await`, for sync code: it owns a private Tokio runtime for the
//! background work and runs each call on the calling thread. Do not use it
//! inside an async runtime — there every call returns [`Error::InsideRuntime`]
//! instead of panicking or deadlocking.
//!
//! ```
//! use std::time::Duration;
//! let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
//! d.set_with_ttl("k", 1, Duration::from_secs(5))?;
//! assert_eq!(d.get("k")?, Some(1));
//! d.shutdown()?;
//! # Ok::<(), livedict::Error>(())
//! ```
//!
//! # Tower composition
//!
//! The store is a `tower::Service<`[`Request<V>`]`, Response = `[`Response<V>`]`>`
//! stack. [`LiveDict::open`] and [`Builder::build`] build the default one:
//!
//! ```text
//! TraceLayer     a tracing span per request (op, backend, outcome, latency_us)
//! TimeoutLayer   per-request deadline → Error::Timeout
//! LockLayer      per-key locks; writes to a key locked by someone else wait
//! CallbackLayer  responses and backend expirations → events → callbacks; counts
//! backend        MemoryBackend | SqliteBackend | RedisBackend (each owns its expiry driver)
//! ```
//!
//! Each of the [layers](layer) is a real `tower::Layer`: compose them with
//! `tower::ServiceBuilder`, put third-party middleware between them, or wrap
//! your own backend service, and hand the stack to
//! [`LiveDict::from_service`]. Put limits (`concurrency_limit`, `buffer`,
//! `load_shed`) *below* the [`LockLayer`](layer::LockLayer), where waiting
//! for a lock does not hold a permit; `.map_err(Error::from)` turns their boxed
//! errors back into [`Error`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
//! use std::time::Duration;
//! use livedict::backend::{MemoryBackend, MemoryConfig};
//! use livedict::layer::{CallbackLayer, DispatchConfig, Dispatcher, LockLayer, TimeoutLayer, TraceLayer};
//! use livedict::{Error, LiveDict};
//!
//! let dispatcher = Dispatcher::<u32>::new(DispatchConfig::default())?;
//! let backend = MemoryBackend::new(MemoryConfig::default(), dispatcher.sink())?;
//! let stack = tower::ServiceBuilder::new()
//!     .layer(TraceLayer::new("memory"))
//!     .layer(TimeoutLayer::new(Duration::from_secs(1)))
//!     .layer(LockLayer::new().with_stats_of(&dispatcher))
//!     .map_err(Error::from)
//!     .load_shed()
//!     .buffer(1024)
//!     .concurrency_limit(64)
//!     .layer(CallbackLayer::new(dispatcher.clone()))
//!     .service(backend);
//! let d = LiveDict::from_service(stack, dispatcher);
//! d.set("a", 1).await?;
//! assert_eq!(d.get("a").await?, Some(1));
//! # Ok(()) }
//! ```
//!
//! # Observability
//!
//! - [`LiveDict::stats`] returns the store's [`Stats`]: hits, misses, sets,
//!   deletes, expirations, evictions, events delivered / dropped, callbacks
//!   panicked / timed out, lock waits and lock timeouts.
//! - The [`TraceLayer`](layer::TraceLayer) opens a `livedict.request` span
//!   per request with the fields `op`, `backend`, `outcome` and `latency_us`.
//! - With the cargo feature `metrics`, `LiveDict::export_metrics` and
//!   `LiveDict::spawn_metrics_exporter` copy the counters into the
//!   [`metrics`](https://docs.rs/metrics) facade as `livedict_*_total`
//!   counters labelled by store (module `livedict::metrics`).
//!
//! # Errors
//!
//! Every fallible call returns [`Result<T>`], with one error enum, [`Error`]
//! (`#[non_exhaustive]`; messages name the key or URL, never a password):
//!
//! | error | when |
//! | --- | --- |
//! | [`InvalidKey`](Error::InvalidKey), [`InvalidTtl`](Error::InvalidTtl), [`InvalidUrl`](Error::InvalidUrl), [`InvalidConfig`](Error::InvalidConfig) | bad input; nothing was done |
//! | [`LockTimeout`](Error::LockTimeout) | `lock` did not get the key within its timeout |
//! | [`LockLost`](Error::LockLost) | a guard's lease ran out before its write (SQLite, Redis) |
//! | [`Timeout`](Error::Timeout) | a request exceeded the [request timeout](Builder::request_timeout) |
//! | [`Decode`](Error::Decode), [`Encode`](Error::Encode) | the codec failed; stored data is untouched |
//! | [`Backend`](Error::Backend) | SQLite or Redis failed (the native error is the `source()`), or a Tower middleware rejected the request |
//! | [`Closed`](Error::Closed) | the store was shut down |
//! | [`InsideRuntime`](Error::InsideRuntime) | the blocking facade was called from async code |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use livedict::{Error, LiveDict};
//! let d = LiveDict::<u32>::open("memory://").await.unwrap();
//! assert!(matches!(d.get("").await, Err(Error::InvalidKey { .. })));
//! assert!(matches!(d.set_with_ttl("k", 1, Duration::ZERO).await, Err(Error::InvalidTtl { .. })));
//! let _held = d.lock("k", Duration::from_secs(1)).await.unwrap();
//! match d.lock("k", Duration::from_millis(10)).await {
//!     Err(Error::LockTimeout { key }) => assert_eq!(key, "k"),
//!     other => panic!("unexpected: {other:?}"),
//! }
//! # }
//! ```
//!
//! # Cargo features
//!
//! | feature | default | enables |
//! | --- | --- | --- |
//! | `sqlite` | yes | the SQLite backend (bundled SQLite) |
//! | `redis` | yes | the Redis backend (fred) |
//! | `redis-tls` | no | TLS for `rediss://` (rustls); without it a `rediss://` URL is [`Error::InvalidUrl`], never plaintext |
//! | `msgpack` | no | [`Codec`]'s MessagePack variant |
//! | `metrics` | no | export of [`Stats`] through the `metrics` facade |
//! | `tower-sessions` | no | `sessions::LiveDictStore`, a [`tower-sessions`](https://docs.rs/tower-sessions) session store on any backend, whose `Expire` events carry each ended session |
//! | `ratelimit` | no | [`ratelimit`]: GCRA rate limiting whose limit every instance on a store shares (one atomic step per check on every backend), and a Tower layer for `http` services answering `429` |
//!
//! # Examples
//!
//! `examples/` in the repository: `quickstart`, `blocking`, `sqlite`, `redis`,
//! `tower_stack` (third-party middleware) and `axum_session_store` (an axum
//! server keeping `tower-sessions` sessions in livedict, with an expire
//! callback and a locked counter; feature `tower-sessions`) and `ratelimit`
//! (an axum API limited per API key; feature `ratelimit`). Run one with
//! `cargo run --example quickstart`.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

// The layout (ARCHITECTURE.md): core vocabulary (request, error, url,
// callback, codec, stats, stripe, event/) at the bottom; the Tower stack
// (stack, layer/) and the backends (backend/) on it; the async handle
// (handle/) on those; the blocking facade (blocking) on the handle.
pub mod backend;
pub mod blocking;
pub mod callback;
mod caller;
pub mod codec;
mod delivery;
pub mod error;
pub mod event;
mod gcra;
mod handle;
#[cfg(any(feature = "sqlite", feature = "redis"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "redis"))))]
pub mod inspect;
pub mod layer;
#[cfg(feature = "ratelimit")]
#[cfg_attr(docsrs, doc(cfg(feature = "ratelimit")))]
pub mod ratelimit;
pub mod request;
#[cfg(feature = "tower-sessions")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower-sessions")))]
pub mod sessions;
mod stack;
pub mod stats;
mod stripe;
mod url;

pub use callback::{Callback, CallbackId};
pub use codec::Codec;
pub use delivery::Delivery;
pub use error::{Error, Result};
pub use event::watch::{Watch, WatchFilter, WatchItem};
pub use event::{Event, EventKind, EventSink, EventTarget};
pub use handle::atomic::ATOMIC_LOCK_TIMEOUT;
pub use handle::builder::{Builder, DEFAULT_REQUEST_TIMEOUT};
pub use handle::dict::LiveDict;
pub use handle::guard::KeyGuard;
#[cfg(feature = "metrics")]
pub use handle::metrics;
pub use handle::scan::SCAN_PAGE;
pub use request::{
    LockGrant, LockToken, MAX_KEY_LEN, MAX_TTL, Request, Response, validate_key, validate_ttl,
};
pub use stats::Stats;

/// What a stored value must be: serde-serializable (for SQLite and Redis),
/// cloneable and shareable across tasks. Implemented for every such type.
pub trait Value: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T> Value for T where T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static {}
