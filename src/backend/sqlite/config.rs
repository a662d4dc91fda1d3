//! [`SqliteConfig`]: where the SQLite store lives and how it behaves.

use std::path::PathBuf;
use std::time::Duration;

use crate::codec::{Codec, Encoder};
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
/// | `codec` | `json` | value encoding |
/// | `verify_codec` | `false` | decode every encoded value once before writing it; one that does not decode back is refused (see [`SqliteConfig::verify_codec`]) |
/// | `share_events` | `false` | append events to, and stream events from, the change feed shared by the processes on this file and table (see [`SqliteBackend::share_events`](super::SqliteBackend::share_events)) |
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
        }
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

    /// Lease of per-key locks: a holder that vanished frees the key after it.
    pub fn lock_lease(mut self, lease: Duration) -> Self {
        self.lock_lease = lease;
        self
    }

    /// Value encoding (default JSON).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Decodes every encoded value once (into `V`) before writing it
    /// (default false). A value whose `Serialize` output its own
    /// `Deserialize` rejects is then refused with
    /// [`Error::Encode`](crate::Error::Encode) and nothing is written, instead
    /// of being stored and failing every later read with
    /// [`Error::Decode`](crate::Error::Decode). Non-finite floats under JSON
    /// are refused without it. Costs one decode per write. URL option: `verify_codec`.
    ///
    /// ```
    /// let config = livedict::backend::SqliteConfig::new("orders.db").verify_codec(true);
    /// # let _ = config;
    /// ```
    pub fn verify_codec(mut self, on: bool) -> Self {
        self.verify_codec = on;
        self
    }

    /// The encoder of written values (codec and `verify_codec`).
    pub(super) fn encoder(&self) -> Encoder {
        Encoder::new(self.codec, self.verify_codec)
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

    /// Whether [`LiveDict::open`](crate::LiveDict::open) and the builder
    /// call [`SqliteBackend::share_events`](super::SqliteBackend::share_events)
    /// (default false): events of every sharing process reach the watch
    /// streams of every other.
    ///
    /// ```
    /// let config = livedict::backend::SqliteConfig::new("orders.db").share_events(true);
    /// assert!(config.shares_events());
    /// ```
    pub fn share_events(mut self, share: bool) -> Self {
        self.share_events = share;
        self
    }

    /// Whether events are shared with other processes (see [`share_events`](Self::share_events)).
    pub fn shares_events(&self) -> bool {
        self.share_events
    }

    pub(super) fn in_memory(&self) -> bool {
        self.path.as_os_str() == ":memory:"
    }

    /// Checks what cannot be checked while building (the table name).
    pub(super) fn validate(&self) -> Result<()> {
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
        Ok(config)
    }
}

/// The URL options of `sqlite://`, in the order of the documentation tables.
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
    UrlOption { name: "lock_lease_ms", default: "30000", apply: |c, v| set(&mut c.lock_lease, millis(v)?) },
    UrlOption {
        name: "poll_ms",
        default: "100",
        apply: |c, v| set(&mut c.poll_interval, millis(v)?.max(Duration::from_millis(1))),
    },
    UrlOption { name: "readers", default: "2", apply: |c, v| set(&mut c.readers, parse::<usize>(v)?.max(1)) },
    UrlOption { name: "share_events", default: "`false`", apply: |c, v| set(&mut c.share_events, parse(v)?) },
    UrlOption {
        name: "codec",
        default: "`json`",
        apply: |c, v| {
            c.codec = Codec::from_name(v).ok_or_else(|| Invalid::because(format!("unknown codec `{v}`")))?;
            Ok(())
        },
    },
    UrlOption { name: "verify_codec", default: "`false`", apply: |c, v| set(&mut c.verify_codec, parse(v)?) },
];

#[cfg(test)]
mod tests {
    use super::OPTIONS;
    use crate::url::check_documented;

    /// README, rustdoc and the parser list the same options with the same defaults.
    #[test]
    fn documented_options_are_the_parsed_ones() {
        check_documented(include_str!("../../../README.md"), "### SQLite", OPTIONS, &[]);
        check_documented(include_str!("config.rs"), "Settings of the SQLite backend", OPTIONS, &[]);
    }
}
