//! [`Builder`]: the default stack with every option.

use std::marker::PhantomData;
use std::time::Duration;

use super::dict::LiveDict;
use super::direct::{Direct, Engine};
use crate::Value;
use crate::backend::{AnyBackend, MemoryBackend, MemoryConfig};
#[cfg(feature = "redis")]
use crate::backend::{RedisBackend, RedisConfig};
#[cfg(feature = "sqlite")]
use crate::backend::{SqliteBackend, SqliteConfig};
use crate::codec::Codec;
use crate::error::Result;
use crate::event::dispatch::{DispatchConfig, Dispatcher};
use crate::layer::{CallbackLayer, LockLayer, TimeoutLayer, TraceLayer};
use crate::stack::Stack;
use crate::url::StoreUrl;

/// The default request timeout (see [`Builder::request_timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Which backend to build, with its settings.
#[derive(Debug, Clone)]
enum Target {
    Memory(MemoryConfig),
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteConfig),
    #[cfg(feature = "redis")]
    Redis(RedisConfig),
}

/// Builds a [`LiveDict`] with the default stack
/// (`TraceLayer → TimeoutLayer → LockLayer → CallbackLayer → backend`).
///
/// Options that do not apply to the chosen backend are ignored (e.g.
/// `namespace` on memory). Errors (bad URL, unreachable server) surface from
/// [`build`](Builder::build).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use std::time::Duration;
/// let d = livedict::LiveDict::<String>::builder()
///     .url("memory://")
///     .request_timeout(Duration::from_secs(2))
///     .callback_queue_capacity(1024)
///     .build()
///     .await?;
/// # let _ = d;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct Builder<V> {
    target: Result<Target>,
    default_ttl: Option<Duration>,
    request_timeout: Duration,
    dispatch: DispatchConfig,
    max_capacity: Option<u64>,
    #[cfg(feature = "sqlite")]
    sqlite_bound: SqliteBound,
    namespace: Option<String>,
    table: Option<String>,
    lock_lease: Option<Duration>,
    codec: Option<Codec>,
    verify_codec: Option<bool>,
    expire_delivery: Option<crate::Delivery>,
    expire_lease: Option<Duration>,
    expire_max_attempts: Option<u32>,
    time_to_idle: Option<Duration>,
    observer: Option<bool>,
    observer_create: Option<bool>,
    _value: PhantomData<fn() -> V>,
}

/// The builder's SQLite size-bound settings besides `max_capacity`.
#[cfg(feature = "sqlite")]
#[derive(Default)]
struct SqliteBound {
    max_bytes: Option<u64>,
    policy: Option<crate::backend::EvictionPolicy>,
}

impl<V> std::fmt::Debug for Builder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").field("target", &self.target).finish_non_exhaustive()
    }
}

impl<V: Value> Default for Builder<V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Applies the builder's delivery settings, if set, to a backend config.
macro_rules! apply_delivery {
    ($builder:expr, $config:ident) => {
        if let Some(delivery) = $builder.expire_delivery {
            $config = $config.expire_delivery(delivery);
        }
        if let Some(lease) = $builder.expire_lease {
            $config = $config.expire_lease(lease);
        }
        if let Some(attempts) = $builder.expire_max_attempts {
            $config = $config.expire_max_attempts(attempts);
        }
    };
}

impl<V: Value> Builder<V> {
    /// A builder for a memory store with default settings.
    pub fn new() -> Self {
        Builder {
            target: Ok(Target::Memory(MemoryConfig::default())),
            default_ttl: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            dispatch: DispatchConfig::default(),
            max_capacity: None,
            #[cfg(feature = "sqlite")]
            sqlite_bound: SqliteBound::default(),
            namespace: None,
            table: None,
            lock_lease: None,
            codec: None,
            verify_codec: None,
            expire_delivery: None,
            expire_lease: None,
            expire_max_attempts: None,
            time_to_idle: None,
            observer: None,
            observer_create: None,
            _value: PhantomData,
        }
    }

    /// Chooses the backend and its options from a URL (see [`LiveDict::open`]).
    pub fn url(mut self, url: &str) -> Self {
        self.target = parse_target(url);
        self
    }

    /// Uses the in-process memory backend (the default).
    pub fn memory(mut self) -> Self {
        self.target = Ok(Target::Memory(MemoryConfig::default()));
        self
    }

    /// Uses an SQLite file at `path` (`":memory:"` for a private in-memory database).
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    pub fn sqlite(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.target = Ok(Target::Sqlite(SqliteConfig::new(path)));
        self
    }

    /// Uses the Redis server at `url` (`redis://`, `rediss://`, `redis-cluster://`,
    /// `redis-sentinel://`; URL options allowed).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(self, url: &str) -> Self {
        self.url(url)
    }

    /// The TTL `set` applies (default: none, `set` stores without expiry).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Deadline of each request, including time spent waiting for another
    /// holder's lock before a write (default 5 s). `lock` waits its own timeout on top.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Bounds the entries of a memory or SQLite store (evictions fire `Evict`
    /// events; on SQLite see [`SqliteConfig::max_capacity`](crate::backend::SqliteConfig::max_capacity)).
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.max_capacity = Some(entries);
        self
    }

    /// Bounds the bytes of an SQLite store's keys and values (see
    /// [`SqliteConfig::max_bytes`](crate::backend::SqliteConfig::max_bytes); URL option `max_bytes`).
    ///
    /// ```
    /// let builder = livedict::LiveDict::<String>::builder().url("sqlite::memory:").max_bytes(1 << 20);
    /// # let _ = builder;
    /// ```
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.sqlite_bound.max_bytes = Some(bytes);
        self
    }

    /// Which entries an SQLite store with a bound evicts first (see
    /// [`EvictionPolicy`](crate::backend::EvictionPolicy); URL option `eviction_policy`).
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    pub fn eviction_policy(mut self, policy: crate::backend::EvictionPolicy) -> Self {
        self.sqlite_bound.policy = Some(policy);
        self
    }

    /// The Redis namespace: every key lives under it.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// The SQLite table, so several stores can share one file.
    pub fn table(mut self, table: &str) -> Self {
        self.table = Some(table.to_owned());
        self
    }

    /// The lease of SQLite and Redis locks (default 30 s).
    pub fn lock_lease(mut self, lease: Duration) -> Self {
        self.lock_lease = Some(lease);
        self
    }

    /// How SQLite and Redis encode values (default JSON).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// Whether SQLite and Redis decode every encoded value once before writing
    /// it (default false; URL option `verify_codec`). With it, a value whose
    /// `Serialize` output its own `Deserialize` rejects is refused with
    /// [`Error::Encode`](crate::Error::Encode) and nothing is written, instead
    /// of being stored and failing every later `get` with
    /// [`Error::Decode`](crate::Error::Decode). Costs one decode per write.
    ///
    /// ```
    /// let builder = livedict::LiveDict::<f64>::builder().url("sqlite::memory:").verify_codec(true);
    /// # let _ = builder;
    /// ```
    pub fn verify_codec(mut self, on: bool) -> Self {
        self.verify_codec = Some(on);
        self
    }

    /// How expirations reach the `Expire` callbacks, on every backend
    /// (default [`Delivery::AtMostOnce`](crate::Delivery::AtMostOnce); URL
    /// option `expire_delivery`). See [`Delivery`](crate::Delivery).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{Delivery, LiveDict};
    /// let d = LiveDict::<u32>::builder().url("sqlite::memory:").expire_delivery(Delivery::AtLeastOnce).build().await?;
    /// # d.shutdown().await }
    /// ```
    pub fn expire_delivery(mut self, delivery: crate::Delivery) -> Self {
        self.expire_delivery = Some(delivery);
        self
    }

    /// With [`Delivery::AtLeastOnce`](crate::Delivery::AtLeastOnce): how long a
    /// claimed expiration waits for its acknowledgement before it may be
    /// delivered again (default 30 s; URL option `expire_lease_ms`).
    pub fn expire_lease(mut self, lease: Duration) -> Self {
        self.expire_lease = Some(lease);
        self
    }

    /// With [`Delivery::AtLeastOnce`](crate::Delivery::AtLeastOnce): deliveries
    /// of one expiration before it is dropped unacknowledged (default 10; URL
    /// option `expire_max_attempts`).
    pub fn expire_max_attempts(mut self, attempts: u32) -> Self {
        self.expire_max_attempts = Some(attempts);
        self
    }

    /// Idle expiry, on every backend (URL option `time_to_idle_ms`): an
    /// entry also expires `idle` after its last access, at the earlier of
    /// that and its own TTL's deadline, reported as an ordinary `Expire`
    /// event with its value. An access is any write of the entry, and
    /// `get`, `exists` and a guard's `get` (not `ttl`, `keys`, `items`);
    /// [`ttl`](LiveDict::ttl) reports the remaining time to the earlier
    /// deadline. Across processes (SQLite, Redis) a read by any of them
    /// extends the deadline for all. Zero or more than 100 years is
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) at `build`.
    ///
    /// The cost of a read is the README's section "Idle expiry": nothing on
    /// memory (a compare-and-swap), a write on SQLite when the deadline
    /// moved by more than 1% of `idle`, one script call on Redis.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use std::time::Duration;
    /// let d = livedict::LiveDict::<u32>::builder().time_to_idle(Duration::from_secs(600)).build().await?;
    /// d.set("session", 7).await?;
    /// assert!(d.ttl("session").await?.is_some()); // ends 10 minutes after its last use
    /// # Ok(()) }
    /// ```
    pub fn time_to_idle(mut self, idle: Duration) -> Self {
        self.time_to_idle = Some(idle);
        self
    }

    /// Observer mode on SQLite and Redis (default false; URL option
    /// `observer`): the store is opened to look at it without taking part
    /// in it, as an operator's tool or a read-only replica would. No expiry
    /// driver or sweeper, no claimed expirations, no leases, no `CONFIG
    /// SET`, and nothing created: a missing SQLite file or table, or a Redis
    /// namespace without a key layout, is an error from
    /// [`build`](Builder::build). Reads, watches and writes work; see
    /// [`SqliteConfig::observer`](crate::backend::SqliteConfig::observer) for
    /// what a write does there. Ignored on memory (a memory store is private
    /// to its handle).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// # #[cfg(feature = "sqlite")] {
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("app.db");
    /// let app = livedict::LiveDict::<u32>::builder().sqlite(&path).build().await?;
    /// app.set("k", 1).await?;
    /// let look = livedict::LiveDict::<u32>::builder().sqlite(&path).observer(true).build().await?;
    /// assert_eq!(look.get("k").await?, Some(1));
    /// let missing = livedict::LiveDict::<u32>::builder().sqlite(dir.path().join("none.db")).observer(true);
    /// assert!(missing.build().await.is_err()); // an observer creates nothing
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn observer(mut self, on: bool) -> Self {
        self.observer = Some(on);
        self
    }

    /// Observer mode that creates a missing store (URL option
    /// `observer=create`): see
    /// [`SqliteConfig::observer_create`](crate::backend::SqliteConfig::observer_create).
    ///
    /// ```
    /// let builder = livedict::LiveDict::<u32>::builder().url("sqlite::memory:").observer_create(true);
    /// # let _ = builder;
    /// ```
    pub fn observer_create(mut self, on: bool) -> Self {
        self.observer_create = Some(on);
        self
    }

    /// Events each callback may have queued before new ones are dropped and counted.
    pub fn callback_queue_capacity(mut self, events: usize) -> Self {
        self.dispatch = self.dispatch.queue_capacity(events);
        self
    }

    /// Timeout of callbacks registered without their own (default 10 s).
    pub fn callback_timeout(mut self, timeout: Duration) -> Self {
        self.dispatch = self.dispatch.default_timeout(Some(timeout));
        self
    }

    /// How long `shutdown` waits for queued events to be delivered (default 5 s).
    pub fn shutdown_drain_timeout(mut self, timeout: Duration) -> Self {
        self.dispatch = self.dispatch.drain_timeout(timeout);
        self
    }

    /// Opens the backend and builds the stack.
    pub async fn build(mut self) -> Result<LiveDict<V>> {
        let target = std::mem::replace(&mut self.target, Ok(Target::Memory(MemoryConfig::default())))?;
        if let Some(ttl) = self.default_ttl {
            crate::request::validate_ttl(ttl)?;
        }
        if let Some(idle) = self.time_to_idle {
            crate::url::check_idle(idle)?;
        }
        let dispatcher = Dispatcher::new(self.dispatch.clone())?;
        let backend = self.open_backend(target, &dispatcher).await?;
        let name = backend.name();
        // Only Redis has single steps for `incr` / `compare_and_set` (see `atomic.rs`).
        let native_atomics = name == "redis";
        let locks = LockLayer::new().with_stats_of(&dispatcher);
        let direct = match &backend {
            AnyBackend::Memory(memory) => Some(Direct::new(Engine::Memory(memory.clone()), locks.clone())),
            #[cfg(feature = "sqlite")]
            AnyBackend::Sqlite(sqlite) => Some(Direct::new(Engine::Sqlite(sqlite.clone()), locks.clone())),
            #[allow(unreachable_patterns)]
            _ => None,
        };
        let stack = tower::ServiceBuilder::new()
            .layer(TraceLayer::new(name))
            .layer(TimeoutLayer::new(self.request_timeout))
            .layer(locks)
            .layer(CallbackLayer::new(dispatcher.clone()))
            .service(backend);
        Ok(LiveDict::from_parts(Stack::new(stack), dispatcher, self.default_ttl, native_atomics, direct))
    }

    async fn open_backend(&self, target: Target, dispatcher: &Dispatcher<V>) -> Result<AnyBackend<V>> {
        let sink = dispatcher.sink();
        Ok(match target {
            Target::Memory(mut config) => {
                if let Some(cap) = self.max_capacity {
                    config = config.max_capacity(cap);
                }
                if let Some(idle) = self.time_to_idle {
                    config = config.time_to_idle(idle);
                }
                apply_delivery!(self, config);
                AnyBackend::Memory(MemoryBackend::new(config, sink)?)
            }
            #[cfg(feature = "sqlite")]
            Target::Sqlite(mut config) => {
                if let Some(table) = &self.table {
                    config = config.table(table);
                }
                if let Some(cap) = self.max_capacity {
                    config = config.max_capacity(cap);
                }
                if let Some(bytes) = self.sqlite_bound.max_bytes {
                    config = config.max_bytes(bytes);
                }
                if let Some(policy) = self.sqlite_bound.policy {
                    config = config.eviction_policy(policy);
                }
                if let Some(idle) = self.time_to_idle {
                    config = config.time_to_idle(idle);
                }
                apply_delivery!(self, config);
                if let Some(lease) = self.lock_lease {
                    config = config.lock_lease(lease);
                }
                if let Some(codec) = self.codec {
                    config = config.codec(codec);
                }
                if let Some(on) = self.verify_codec {
                    config = config.verify_codec(on);
                }
                if let Some(on) = self.observer {
                    config = config.observer(on);
                }
                if let Some(on) = self.observer_create {
                    config = config.observer_create(on);
                }
                let share_events = config.shares_events();
                let backend = SqliteBackend::open(config, sink).await?;
                if share_events {
                    backend.share_events(dispatcher).await?;
                }
                AnyBackend::Sqlite(backend)
            }
            #[cfg(feature = "redis")]
            Target::Redis(mut config) => {
                if let Some(ns) = &self.namespace {
                    config = config.namespace(ns);
                }
                if let Some(idle) = self.time_to_idle {
                    config = config.time_to_idle(idle);
                }
                apply_delivery!(self, config);
                if let Some(lease) = self.lock_lease {
                    config = config.lock_lease(lease);
                }
                if let Some(codec) = self.codec {
                    config = config.codec(codec);
                }
                if let Some(on) = self.verify_codec {
                    config = config.verify_codec(on);
                }
                if let Some(on) = self.observer {
                    config = config.observer(on);
                }
                if let Some(on) = self.observer_create {
                    config = config.observer_create(on);
                }
                let share_events = config.shares_events();
                let backend = RedisBackend::open(config, sink).await?;
                if share_events {
                    backend.share_events(dispatcher).await?;
                }
                AnyBackend::Redis(backend)
            }
        })
    }
}

fn parse_target(raw: &str) -> Result<Target> {
    let mut url = StoreUrl::parse(raw)?;
    let target = match url.scheme() {
        "memory" => Target::Memory(MemoryConfig::from_url(&mut url)?),
        #[cfg(feature = "sqlite")]
        "sqlite" => Target::Sqlite(SqliteConfig::from_url(&mut url)?),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis-cluster" | "rediss-cluster" | "redis-sentinel" | "rediss-sentinel" => {
            Target::Redis(RedisConfig::from_url(&mut url)?)
        }
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => return Err(url.error("the `sqlite` cargo feature is not enabled")),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" | "redis-cluster" | "rediss-cluster" | "redis-sentinel" | "rediss-sentinel" => {
            return Err(url.error("the `redis` cargo feature is not enabled"));
        }
        other => {
            return Err(url.error(format!("unknown scheme `{other}` (expected memory, sqlite, redis)")));
        }
    };
    url.finish()?;
    Ok(target)
}

impl<V: Value> LiveDict<V> {
    /// Opens a store from a URL: `memory://`, `sqlite://path.db`,
    /// `sqlite::memory:`, `redis://host:port/db?namespace=name`.
    ///
    /// A bad URL, unknown scheme or option is [`Error::InvalidUrl`](crate::Error::InvalidUrl) (naming the
    /// URL without its password); an unreachable backend is an error within
    /// the connect timeout, never a hang or a panic.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use livedict::{Error, LiveDict};
    /// assert!(LiveDict::<u32>::open("memory://").await.is_ok());
    /// let err = LiveDict::<u32>::open("nosuch://x").await.unwrap_err();
    /// assert!(matches!(err, Error::InvalidUrl { .. }));
    /// # }
    /// ```
    pub async fn open(url: &str) -> Result<Self> {
        Builder::new().url(url).build().await
    }

    /// A builder for the default stack with every option.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use std::time::Duration;
    /// let d = livedict::LiveDict::<u64>::builder()
    ///     .memory()
    ///     .default_ttl(Duration::from_secs(60))
    ///     .max_capacity(100_000)
    ///     .build()
    ///     .await?;
    /// # let _ = d;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> Builder<V> {
        Builder::new()
    }
}
