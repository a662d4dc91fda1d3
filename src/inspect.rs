//! [`Inspector`]: what an operator reads from a shared store (SQLite, Redis)
//! besides its entries: the locks held, the expirations awaiting delivery,
//! and health checks of its configuration. The `livedict` command line
//! (`locks`, `pending`, `doctor`) is built on it.
//!
//! An inspector opens the store as an [observer](crate::Builder::observer):
//! it starts no expiry driver or sweeper, claims nothing, writes nothing and
//! changes no server setting, so running it never changes what the
//! application sees.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::event::EventSink;
use crate::url::StoreUrl;

/// A lock held on a key, as [`Inspector::locks`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeldLock {
    /// The locked key.
    pub key: String,
    /// The fencing token its holder got (`None` if it was taken by a
    /// version of livedict that did not record it).
    pub fence: Option<u64>,
    /// How long until the lease ends, unless the holder renews it.
    pub lease_left: Duration,
}

/// An expiration under `expire_delivery=at_least_once` that is leased to a
/// process or waiting to be delivered again, as [`Inspector::pending`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingExpiration {
    /// The expired key.
    pub key: String,
    /// Deliveries so far (0: claimed, not delivered yet).
    pub attempt: u32,
    /// How long until it may be delivered again (zero: due now).
    pub lease_left: Duration,
}

/// The verdict of one [`Check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but may lose data or events, or slow down; the detail says why.
    Warn,
    /// Broken: the store cannot give its guarantees.
    Fail,
}

impl Status {
    /// `ok`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One health check of [`Inspector::doctor`]: what was checked, the verdict, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Check {
    /// What was checked (`journal_mode`, `maxmemory-policy`, …).
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found, and for a warning or failure what it means.
    pub detail: String,
}

impl Check {
    pub(crate) fn new(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
        Check { name: name.into(), status, detail: detail.into() }
    }
}

/// The store an inspector looks at.
enum Store {
    #[cfg(feature = "sqlite")]
    Sqlite(crate::backend::SqliteBackend<serde_json::Value>),
    #[cfg(feature = "redis")]
    Redis(crate::backend::RedisBackend<serde_json::Value>),
}

/// Reads a shared store's locks, pending expirations and health, opened
/// as an observer (see the [module docs](self)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// # #[cfg(feature = "sqlite")] {
/// use std::time::Duration;
/// use livedict::{LiveDict, inspect::Inspector};
/// let dir = tempfile::tempdir().unwrap();
/// let url = format!("sqlite://{}", dir.path().join("app.db").display());
/// let app = LiveDict::<u32>::open(&url).await?;
/// let guard = app.lock("job", Duration::from_secs(1)).await?;
/// let inspector = Inspector::open(&url).await?;
/// let locks = inspector.locks("").await?;
/// assert_eq!(locks[0].key, "job");
/// assert_eq!(locks[0].fence, Some(guard.fence()));
/// inspector.close().await?;
/// # }
/// # Ok(()) }
/// ```
pub struct Inspector {
    store: Store,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector").finish_non_exhaustive()
    }
}

impl Inspector {
    /// Opens the store at `url` (`sqlite://…`, `redis://…`, with any of
    /// their options) as an observer. A missing SQLite file or table, or a
    /// Redis namespace without a key layout, is an error: nothing is created.
    /// A `memory://` store is private to its process: [`Error::InvalidUrl`].
    pub async fn open(url: &str) -> Result<Inspector> {
        let mut parsed = StoreUrl::parse(url)?;
        let store = match parsed.scheme() {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                let config = crate::backend::SqliteConfig::from_url(&mut parsed)?.observer(true);
                parsed.finish()?;
                Store::Sqlite(crate::backend::SqliteBackend::open(config, EventSink::none()).await?)
            }
            #[cfg(feature = "redis")]
            "redis" | "rediss" | "redis-cluster" | "rediss-cluster" | "redis-sentinel"
            | "rediss-sentinel" => {
                let config = crate::backend::RedisConfig::from_url(&mut parsed)?.observer(true);
                parsed.finish()?;
                Store::Redis(crate::backend::RedisBackend::open(config, EventSink::none()).await?)
            }
            "memory" => {
                return Err(
                    parsed.error("a memory store lives inside its process: there is nothing to inspect")
                );
            }
            other => return Err(parsed.error(format!("cannot inspect scheme `{other}` (sqlite or redis)"))),
        };
        Ok(Inspector { store })
    }

    /// The locks held now on keys that start with `prefix` (`""`: all), by any process.
    pub async fn locks(&self, prefix: &str) -> Result<Vec<HeldLock>> {
        match &self.store {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => s.held_locks(prefix).await,
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.held_locks(prefix).await,
        }
    }

    /// The expirations leased or awaiting redelivery (`expire_delivery=at_least_once`), soonest due first.
    pub async fn pending(&self) -> Result<Vec<PendingExpiration>> {
        match &self.store {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => s.pending_expirations().await,
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.pending_expirations().await,
        }
    }

    /// Health checks of the store and its server (read-only: nothing is changed).
    ///
    /// SQLite: journal mode, `synchronous`, schema version, WAL size, file
    /// mode, network filesystem. Redis: layout version and shards,
    /// `maxmemory-policy` against eviction notifications, persistence,
    /// replicas against `replica_acks`, cluster slot coverage and spread,
    /// clock offset.
    pub async fn doctor(&self) -> Result<Vec<Check>> {
        match &self.store {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => s.doctor().await,
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.doctor().await,
        }
    }

    /// Closes the inspector's connections.
    pub async fn close(self) -> Result<()> {
        use tower::ServiceExt;
        let shutdown = crate::request::Request::<serde_json::Value>::Shutdown;
        let done = match self.store {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => s.oneshot(shutdown).await,
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.oneshot(shutdown).await,
        };
        done.map(|_| ()).map_err(|e: Error| e)
    }
}

/// Milliseconds as a [`Duration`] (negative: zero).
#[allow(dead_code)]
pub(crate) fn left(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}
