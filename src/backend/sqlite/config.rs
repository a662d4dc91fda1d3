//! [`SqliteConfig`]: where the SQLite store lives and how it behaves.

use std::path::PathBuf;
use std::time::Duration;

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::url::{Invalid, StoreUrl, UrlOption, millis, parse, set};

/// Settings of the SQLite backend.
///
/// URL form: `sqlite://path/to/file.db?table=orders&synchronous=full&busy_timeout_ms=5000`
/// (`sqlite::memory:` for a private in-memory database). Options:
///
/// | option | default | meaning |
/// | --- | --- | --- |
/// | `table` | `livedict` | table name, so several stores share one file |
/// | `synchronous` | `normal` | `normal`: a commit survives a process crash; `full`: also power loss |
/// | `busy_timeout_ms` | 5000 | how long to wait for another process's write lock |
/// | `lock_lease_ms` | 30000 | lease of per-key locks |
/// | `poll_ms` | 100 | how often the expiry driver looks for other processes' deadlines |
/// | `readers` | 2 | read connections (reads never queue behind writes) |
/// | `max_capacity` | none | most entries; beyond it the oldest are evicted, each an `Evict` event (see [`SqliteConfig::max_capacity`]) |
/// | `max_bytes` | none | most bytes of keys and values as stored; beyond it the oldest are evicted (see [`SqliteConfig::max_bytes`]) |
/// | `eviction_policy` | `least_recently_stored` | which entries go first beyond the bound: `least_recently_stored` or `least_recently_used` (see [`EvictionPolicy`]) |
/// | `time_to_idle_ms` | none | an entry also expires this long after its last access by any process (see [`SqliteConfig::time_to_idle`]) |
/// | `codec` | `json` | value encoding |
/// | `verify_codec` | `false` | decode every encoded value once before writing it; one that does not decode back is refused (see [`SqliteConfig::verify_codec`]) |
/// | `share_events` | `false` | append events to, and stream events from, the change feed shared by the processes on this file and table (see [`SqliteBackend::share_events`](super::SqliteBackend::share_events)) |
/// | `observer` | `false` | `true`: open without taking part (`create`: and create the store if missing): no expiry driver, no claims, no leases, no table created (see [`SqliteConfig::observer`]) |
/// | `expire_delivery` | `at_most_once` | `at_least_once`: a claimed expiration stays leased until its `Expire` callbacks returned, and is delivered again if they fail or this process dies (see [`Delivery`](crate::Delivery)) |
/// | `expire_lease_ms` | 30000 | with `at_least_once`: how long an unacknowledged expiration stays with the process that claimed it |
/// | `expire_max_attempts` | 10 | with `at_least_once`: deliveries of one expiration before it is dropped (counted in `stats().expirations_abandoned`) |
///
/// ```
/// use std::time::Duration;
/// let config = livedict::backend::SqliteConfig::new("orders.db")
///     .table("orders")
///     .synchronous_full(true)
///     .busy_timeout(Duration::from_secs(2));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    pub(super) path: PathBuf,
    pub(super) table: String,
    pub(super) synchronous_full: bool,
    pub(super) busy_timeout: Duration,
    pub(super) lock_lease: Duration,
    pub(super) codec: Codec,
    pub(super) verify_codec: bool,
    pub(super) poll_interval: Duration,
    pub(super) readers: usize,
    pub(super) share_events: bool,
    /// Observer mode, and whether it creates a missing store.
    pub(super) observer: (bool, bool),
    pub(super) delivery: crate::delivery::ExpireDelivery,
    pub(super) max_capacity: Option<u64>,
    pub(super) max_bytes: Option<u64>,
    pub(super) eviction_policy: EvictionPolicy,
    pub(super) time_to_idle: Option<Duration>,
}

/// Which entries an SQLite store with a size bound
/// ([`SqliteConfig::max_capacity`], [`SqliteConfig::max_bytes`]) evicts first.
///
/// ```
/// use livedict::backend::{EvictionPolicy, SqliteConfig};
/// let config = SqliteConfig::new("cache.db").max_capacity(10_000).eviction_policy(EvictionPolicy::LeastRecentlyUsed);
/// # let _ = config;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EvictionPolicy {
    /// The default (URL `least_recently_stored`): the entries written longest
    /// ago go first, whatever was read since. A read writes nothing.
    #[default]
    LeastRecentlyStored,
    /// URL `least_recently_used`: the entries neither written nor read for
    /// the longest go first. Each `get` hit queues a small write (the entry's
    /// place in line) into the writer's next group commit, without waiting
    /// for it.
    LeastRecentlyUsed,
}

impl SqliteConfig {
    /// A store in the file at `path` (created if missing); `":memory:"` for a
    /// private in-memory database.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            table: "livedict".into(),
            synchronous_full: false,
            busy_timeout: Duration::from_secs(5),
            lock_lease: Duration::from_secs(30),
            codec: Codec::Json,
            verify_codec: false,
            poll_interval: Duration::from_millis(100),
            readers: 2,
            share_events: false,
            observer: (false, false),
            delivery: Default::default(),
            max_capacity: None,
            max_bytes: None,
            eviction_policy: EvictionPolicy::LeastRecentlyStored,
            time_to_idle: None,
        }
    }

    /// Bounds the store's entries (URL option `max_capacity`; default none).
    /// Beyond it, the writer's transaction that went over removes the
    /// least recently stored entries (or used, see
    /// [`eviction_policy`](Self::eviction_policy)) before it commits, so no
    /// reader sees more than the bound once a write was acknowledged. Each
    /// removal is one `Evict` event with its value, reported exactly once
    /// across the processes sharing the file (an entry past its deadline is
    /// reported as `Expire` instead). Every process writing to the file
    /// should open it with the same bound: one without a bound does not evict.
    /// `0` is [`Error::InvalidConfig`] when the store opens.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{backend::{SqliteBackend, SqliteConfig}, EventSink};
    /// let dir = tempfile::tempdir().unwrap();
    /// let config = SqliteConfig::new(dir.path().join("cache.db")).max_capacity(10_000);
    /// let store = SqliteBackend::<u32>::open(config, EventSink::none()).await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.max_capacity = Some(entries);
        self
    }

    /// Bounds the bytes of the store's keys and values as stored (encoded),
    /// summed (URL option `max_bytes`; default none), like diskcache's
    /// `size_limit`; SQLite's own overhead per row is not counted. Beyond it
    /// the oldest entries are evicted as with
    /// [`max_capacity`](Self::max_capacity) (both may be set: each is kept).
    /// `0` is [`Error::InvalidConfig`] when the store opens.
    ///
    /// ```
    /// let config = livedict::backend::SqliteConfig::new("cache.db").max_bytes(64 << 20);
    /// # let _ = config;
    /// ```
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Which entries go first beyond the bound (URL option
    /// `eviction_policy`; default [`EvictionPolicy::LeastRecentlyStored`]).
    pub fn eviction_policy(mut self, policy: EvictionPolicy) -> Self {
        self.eviction_policy = policy;
        self
    }

    /// Whether a size bound is set.
    pub(super) fn bounded(&self) -> bool {
        self.max_capacity.is_some() || self.max_bytes.is_some()
    }

    /// The table holding this store's entries (letters, digits and `_` only).
    pub fn table(mut self, name: &str) -> Self {
        self.table = name.to_owned();
        self
    }

    /// `synchronous=FULL`: commits survive power loss, at the cost of an fsync per batch.
    pub fn synchronous_full(mut self, on: bool) -> Self {
        self.synchronous_full = on;
        self
    }

    /// How long a statement waits for another process's lock before failing.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How often the expiry driver checks for deadlines set by other processes.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Number of read connections.
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers.max(1);
        self
    }

    /// Idle expiry: an entry also expires `idle` after its last access by
    /// any process sharing the table (a write, `get`, `exists`, a guard's
    /// `get`; not `ttl`, `keys`, `items`), at the earlier of that and its
    /// own TTL's deadline, as an ordinary `Expire` event with its value.
    /// URL option `time_to_idle_ms`.
    ///
    /// `expires_at` holds the earlier deadline, so expiry, reads and the
    /// other processes' drivers work as with any TTL; the deadline of an
    /// entry's own TTL is kept in a column `ttl_at`, added to the table
    /// when a store with a time-to-idle first opens it. A read that would
    /// move the deadline by more than 1% of `idle` (at least 1 ms) writes
    /// it (one `UPDATE`, group-committed with other writes) before it
    /// answers; a read that would move it less writes nothing. So an entry
    /// read at least once every 99% of `idle` never expires, and one left
    /// alone expires `idle` after its last write or extending read.
    /// Every process sharing a table should use the same time-to-idle.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = livedict::backend::SqliteConfig::new("sessions.db").time_to_idle(Duration::from_secs(1800));
    /// # let _ = config;
    /// ```
    pub fn time_to_idle(mut self, idle: Duration) -> Self {
        self.time_to_idle = Some(idle);
        self
    }

    pub(super) fn in_memory(&self) -> bool {
        self.path.as_os_str() == ":memory:"
    }

    /// Checks what cannot be checked while building (the table name, the bound, the time-to-idle).
    pub(super) fn validate(&self) -> Result<()> {
        if self.max_capacity == Some(0) || self.max_bytes == Some(0) {
            return Err(Error::InvalidConfig("sqlite max_capacity and max_bytes must be at least 1".into()));
        }
        if let Some(idle) = self.time_to_idle {
            crate::url::check_idle(idle)?;
        }
        let ok = !self.table.is_empty()
            && self.table.len() <= 64
            && self.table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !self.table.starts_with(|c: char| c.is_ascii_digit());
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidConfig(format!(
                "sqlite table name `{}` must be 1-64 letters, digits or `_`, not starting with a digit",
                self.table
            )))
        }
    }

    /// Reads a `sqlite://` URL's path and options.
    pub(crate) fn from_url(url: &mut StoreUrl<'_>) -> Result<Self> {
        let path = url.body();
        if path.is_empty() {
            return Err(url.error("missing database path (use sqlite://file.db or sqlite::memory:)"));
        }
        let mut config = SqliteConfig::new(path);
        url.apply(&mut config, OPTIONS)?;
        url.apply(&mut config, &crate::backend::common::setting_options())?;
        Ok(config)
    }
}

crate::backend::common::store_settings!(
    SqliteConfig,
    "livedict::backend::SqliteConfig::new(\"orders.db\")",
    "SqliteBackend"
);

/// The URL options of `sqlite://`, in the order of the documentation tables.
/// Its own URL options (the shared ones are [`setting_options`](crate::backend::common::setting_options)).
pub(super) const OPTIONS: &[UrlOption<SqliteConfig>] = &[
    UrlOption {
        name: "table",
        default: "`livedict`",
        apply: |c, v| {
            c.table = v.to_owned();
            c.validate().map_err(|e| Invalid::because(e.to_string()))
        },
    },
    UrlOption {
        name: "synchronous",
        default: "`normal`",
        apply: |c, v| match v {
            "normal" => set(&mut c.synchronous_full, false),
            "full" => set(&mut c.synchronous_full, true),
            other => Err(Invalid::because(format!("synchronous must be normal or full, not `{other}`"))),
        },
    },
    UrlOption {
        name: "busy_timeout_ms",
        default: "5000",
        apply: |c, v| set(&mut c.busy_timeout, millis(v)?),
    },
    UrlOption {
        name: "poll_ms",
        default: "100",
        apply: |c, v| set(&mut c.poll_interval, millis(v)?.max(Duration::from_millis(1))),
    },
    UrlOption { name: "readers", default: "2", apply: |c, v| set(&mut c.readers, parse::<usize>(v)?.max(1)) },
    UrlOption {
        name: "max_capacity",
        default: "none",
        apply: |c, v| set(&mut c.max_capacity, Some(at_least_one(v)?)),
    },
    UrlOption {
        name: "max_bytes",
        default: "none",
        apply: |c, v| set(&mut c.max_bytes, Some(at_least_one(v)?)),
    },
    UrlOption {
        name: "eviction_policy",
        default: "`least_recently_stored`",
        apply: |c, v| match v {
            "least_recently_stored" => set(&mut c.eviction_policy, EvictionPolicy::LeastRecentlyStored),
            "least_recently_used" => set(&mut c.eviction_policy, EvictionPolicy::LeastRecentlyUsed),
            other => Err(Invalid::because(format!(
                "eviction_policy must be least_recently_stored or least_recently_used, not `{other}`"
            ))),
        },
    },
    UrlOption {
        name: "time_to_idle_ms",
        default: "none",
        apply: |c, v| set(&mut c.time_to_idle, Some(crate::url::idle_millis(v)?)),
    },
];

/// A bound: a whole number of at least 1 (0, negative or not a number: refused).
fn at_least_one(v: &str) -> std::result::Result<u64, Invalid> {
    match parse::<u64>(v)? {
        0 => Err(Invalid::Value),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::OPTIONS;
    use crate::backend::common::setting_options;
    use crate::url::check_documented;

    /// README, rustdoc and the parser list the same options with the same defaults.
    #[test]
    fn documented_options_are_the_parsed_ones() {
        let options: Vec<_> = OPTIONS.iter().copied().chain(setting_options()).collect();
        check_documented(include_str!("../../../README.md"), "### SQLite", &options, &[]);
        check_documented(include_str!("config.rs"), "Settings of the SQLite backend", &options, &[]);
    }
}
