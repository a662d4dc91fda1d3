//! The SQLite backend: a file (or `:memory:`) shared by any number of
//! processes, with group-committed writes, parallel reads and exactly-once
//! expiry.
//!
//! # Layout
//!
//! One table per store (`table` option, default `livedict`):
//! `key TEXT PRIMARY KEY, value BLOB, expires_at INTEGER` (ms since the Unix
//! epoch, indexed; `NULL` = no expiry), plus `<table>_locks` (key, owner
//! token, lease end) and a shared `livedict_meta` table holding the schema
//! version and each store's fencing counter. Values are encoded by the
//! store's [`Codec`](crate::Codec) (JSON by default, readable with `sqlite3`).
//! With `share_events=true`, `<table>_events` is the change feed
//! ([`SqliteBackend::share_events`]).
//!
//! Each row also has a `seq` (schema version 2): its place in the size
//! bound's eviction order. A store opened with a bound (`max_capacity`,
//! `max_bytes`) is *sized* from then on: an index on `seq`, and
//! `<table>_size` holding its entries and bytes, kept exact by triggers.
//!
//! # Guarantees
//!
//! - A write is acknowledged after the transaction holding it committed
//!   (WAL, `synchronous=NORMAL`): it survives a crash of the process;
//!   `synchronous=full` makes it survive power loss too. Concurrent writes
//!   share a transaction (group commit, on the writer thread); a lone caller
//!   that finds the writer idle commits its write in a transaction of its own
//!   on its own thread: a [`blocking`](crate::blocking) caller always, an
//!   async task only with `synchronous=normal` (no fsync in the commit), and
//!   never waiting for another process's write lock (it queues instead).
//!   Checkpoints never run inside such a commit.
//! - A new database file is created with mode `0600` (its `-wal` and `-shm`
//!   files get the same); an existing file's mode is left alone.
//! - Reads filter on `expires_at`, so an expired value is never returned.
//! - Each expiration is reported exactly once across every process using
//!   the file (the expiry driver, and the writer's batches on the way,
//!   claim due rows with an atomic `DELETE … RETURNING`, reported once
//!   their transaction committed; rows that came due while no process ran
//!   are claimed at the next open).
//! - A value that does not decode is [`Error::Decode`] and stays in the file.
//! - With a size bound, the write transaction that went over it deletes the
//!   oldest rows (`DELETE … RETURNING`) before it commits: no reader sees more
//!   than the bound once a write was acknowledged, and each eviction is
//!   reported once across every process using the file.

mod batch;
mod config;
mod driver;
mod feed;
mod inspect;
mod schema;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use rusqlite::{OpenFlags, OptionalExtension, params};
use tokio_util::sync::{CancellationToken, DropGuard};

pub use config::{EvictionPolicy, SqliteConfig};

use crate::Value;
use crate::backend::receipts::Receipts;
use crate::error::{Error, Result};
use crate::event::EventSink;
use crate::request::{LockGrant, Request, Response};
use driver::DriverSignal;
use schema::Sql;
use writer::{Applied, Inline, Leased, TatCodec, WriteOp, WriteOutcome, Writer};

/// Rows fetched per query when listing keys or items.
const PAGE: i64 = 1000;

/// Milliseconds since the Unix epoch, the clock every process shares.
pub(super) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A TTL in whole milliseconds, rounded up (so a deadline is never early).
fn ttl_ms(ttl: Duration) -> i64 {
    ttl.as_nanos().div_ceil(1_000_000).min(i64::MAX as u128) as i64
}

struct Shared<V> {
    config: SqliteConfig,
    sql: Arc<Sql>,
    writer: Arc<Writer>,
    /// Settled leases waiting for the acker task (`at_least_once`).
    receipts: Arc<Receipts<(i64, u32, bool)>>,
    readers: Vec<tokio_rusqlite::Connection>,
    next_reader: AtomicUsize,
    /// Connections for point reads on the calling task (see [`Shared::read_point`]).
    inline: Vec<Mutex<rusqlite::Connection>>,
    next_inline: AtomicUsize,
    sink: EventSink<V>,
    signal: Arc<DriverSignal>,
    closed: AtomicBool,
    /// The path, for error messages.
    label: Arc<str>,
    /// Stops the expiry driver when the last backend clone goes.
    driver: DropGuard,
    /// Stops the acker when the last backend clone goes (not at `Shutdown`:
    /// callbacks drained after it still acknowledge their expirations).
    _acker: DropGuard,
}

/// The SQLite backend: a `tower::Service<Request<V>>` over one table of an
/// SQLite file. See the [module docs](self) for its layout and guarantees.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use livedict::{backend::{SqliteBackend, SqliteConfig}, EventSink, Request, Response};
/// use tower::ServiceExt;
/// let dir = tempfile::tempdir().unwrap();
/// let backend = SqliteBackend::<u32>::open(SqliteConfig::new(dir.path().join("s.db")), EventSink::none()).await?;
/// backend.clone().oneshot(Request::Set { key: "a".into(), value: 1, ttl: None, lock: None }).await?;
/// let got = backend.oneshot(Request::Get { key: "a".into() }).await?;
/// assert!(matches!(got, Response::Value(Some(1))));
/// # Ok(()) }
/// ```
pub struct SqliteBackend<V> {
    shared: Arc<Shared<V>>,
}

crate::backend::common::shared_handle!(SqliteBackend, "path");

fn open_error(label: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::backend_msg("sqlite", format!("cannot open {label}: {what}: {e}"))
}

/// Opens the writer connection, sets the pragmas and creates the schema.
///
/// Several processes opening a brand-new file at once race on switching it to
/// WAL and creating its tables; SQLite answers the losers `SQLITE_BUSY`/`LOCKED`
/// (the busy handler does not cover a journal-mode change) or, while the
/// `-wal`/`-shm` files appear, an I/O error. Those are retried with a fresh
/// connection until the busy timeout; anything else fails at once. Runs on a
/// blocking thread (it may wait for another process's lock).
async fn open_writer(
    target: String,
    flags: OpenFlags,
    config: SqliteConfig,
    label: Arc<str>,
) -> Result<rusqlite::Connection> {
    let opening = tokio::task::spawn_blocking(move || open_writer_blocking(&target, flags, &config, &label));
    opening.await.map_err(|e| Error::backend_msg("sqlite", format!("opening the writer: {e}")))?
}

fn open_writer_blocking(
    target: &str,
    flags: OpenFlags,
    config: &SqliteConfig,
    label: &str,
) -> Result<rusqlite::Connection> {
    let give_up = std::time::Instant::now() + config.busy_timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let mut c = rusqlite::Connection::open_with_flags(target, flags)
            .map_err(|e| open_error(label, "open failed", e))?;
        let transient = |e: rusqlite::Error| {
            use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, SystemIoFailure};
            let retry =
                matches!(e.sqlite_error_code(), Some(DatabaseBusy | DatabaseLocked | SystemIoFailure));
            (retry, e.to_string())
        };
        let outcome = (|| -> Result<(), (bool, String)> {
            // Checkpoints run on a connection of their own (see `checkpointer`), and on
            // the writer thread past a WAL size (the writer takes over the WAL hook).
            let to_outcome = |e| match e {
                schema::CreateError::Sqlite(e) => transient(e),
                schema::CreateError::Version(msg) => (false, msg),
            };
            if !config.observer_creates() {
                // Connection settings only: no journal-mode switch (it writes the file), no schema.
                c.busy_timeout(config.busy_timeout).map_err(transient)?;
                c.pragma_update(None, "synchronous", if config.synchronous_full { "FULL" } else { "NORMAL" })
                    .map_err(transient)?;
                return schema::check(&c, config).map_err(to_outcome);
            }
            schema::configure(&c, config).map_err(transient)?;
            schema::create(&mut c, config).map_err(to_outcome)
        })();
        match outcome {
            Ok(()) => return Ok(c),
            Err((true, _)) if std::time::Instant::now() < give_up => {
                drop(c);
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err((_, msg)) => return Err(open_error(label, "not a usable livedict database", msg)),
        }
    }
}

impl<V: Value> SqliteBackend<V> {
    /// What `Request::Get` answers, read on the calling thread from a free
    /// inline connection without building a request (the handle's direct
    /// path); `None` (nothing read) if the backend is shut down, or the read
    /// cannot be done at once (every inline connection in use, a lock to wait
    /// for, an in-memory database): then the request goes through the stack.
    pub(crate) fn get_now(&self, key: &str) -> Option<Result<Option<V>>> {
        self.shared.get_now(key)
    }

    /// Opens (creating if needed) the store and starts its writer and expiry driver.
    ///
    /// A path in a missing directory, a file that is not an SQLite database,
    /// or a read-only file is an [`Error::Backend`] naming the path.
    ///
    /// In [observer mode](SqliteConfig::observer) nothing is created and no
    /// expiry driver starts: a missing file or table is an [`Error::Backend`].
    pub async fn open(mut config: SqliteConfig, sink: EventSink<V>) -> Result<Self> {
        config.validate()?;
        let label: Arc<str> = config.path.display().to_string().into();
        let observer = config.observer.0;
        let creates = config.observer_creates();
        let mut flags =
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if observer {
            if config.in_memory() && !creates {
                return Err(Error::InvalidConfig(
                    "an observer needs a database file (sqlite::memory: is private to its store)".into(),
                ));
            }
            if !creates && !config.path.is_file() {
                return Err(open_error(&label, "no such database file", "an observer never creates one"));
            }
            // No leases, no size bound to enforce: an observer takes part in neither.
            config.delivery = Default::default();
            config.max_capacity = None;
            config.max_bytes = None;
        }
        if creates {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let target = if config.in_memory() {
            // A named shared-cache database, private to this backend (random name).
            format!("file:livedict-{:016x}?mode=memory&cache=shared", rand::random::<u64>())
        } else {
            config.path.display().to_string()
        };
        if !config.in_memory() && creates {
            create_private(&config.path);
        }
        let conn = open_writer(target.clone(), flags, config.clone(), Arc::clone(&label)).await?;

        // In memory: no readers; reads run on the writer's connection (shared-cache memory
        // databases lock per table, not per WAL snapshot, so a second connection would wait).
        let mut readers = Vec::new();
        if !config.in_memory() {
            for _ in 0..config.readers {
                let reader = tokio_rusqlite::Connection::open_with_flags(&target, flags)
                    .await
                    .map_err(|e| open_error(&label, "open failed", e))?;
                let setup = config.clone();
                reader
                    .call(move |c| -> rusqlite::Result<()> {
                        c.busy_timeout(setup.busy_timeout)?;
                        c.pragma_update(None, "query_only", true)
                    })
                    .await
                    .map_err(|e| open_error(&label, "configuring a reader", e))?;
                readers.push(reader);
            }
        }
        let mut inline = Vec::new();
        if !config.in_memory() {
            for _ in 0..config.readers {
                let c = rusqlite::Connection::open_with_flags(&target, flags)
                    .and_then(|c| {
                        // Never wait here: a read that would goes to the reader threads.
                        c.busy_timeout(Duration::ZERO)?;
                        c.pragma_update(None, "query_only", true)?;
                        Ok(c)
                    })
                    .map_err(|e| open_error(&label, "configuring a reader", e))?;
                inline.push(Mutex::new(c));
            }
        }
        // The expiry driver's own connection, for claims while the writer
        // connection checkpoints (see `Writer::claim_aside`); none in memory.
        let aside = if config.in_memory() || observer {
            None
        } else {
            let c = rusqlite::Connection::open_with_flags(&target, flags)
                .and_then(|c| writer::configure_aside(&c, &config).map(|()| c))
                .map_err(|e| open_error(&label, "configuring the expiry driver's connection", e))?;
            Some(c)
        };
        let mut sql = Sql::new(&config.table, &config.delivery)
            .with_idle(&config.table, config.time_to_idle.map(ttl_ms));
        sql.bound = config.bounded().then(|| schema::Bound {
            entries: config.max_capacity.unwrap_or(u64::MAX),
            bytes: config.max_bytes.unwrap_or(u64::MAX),
            lru: config.eviction_policy == EvictionPolicy::LeastRecentlyUsed,
        });
        sql.claim_in_batch = !observer;
        if !schema::has_column(&conn, &format!("{}_locks", config.table), "fence")
            .map_err(|e| open_error(&label, "reading the schema", e))?
        {
            sql.lock_fence = None;
        }
        let sql = Arc::new(sql);
        // Async callers write inline only where a commit does not fsync.
        let inline_async = !config.synchronous_full || config.in_memory();
        // Expirations and evictions a write transaction took are reported by the writer (see `Reporter`).
        let report: writer::Reporter = {
            let (sink, codec) = (sink.clone(), config.codec);
            Arc::new(move |removal, key, bytes| match removal {
                writer::Removal::Expired => sink.expired(key, || codec.decode_expired(key, bytes)),
                writer::Removal::Evicted => sink.evicted(key, || codec.decode_expired(key, bytes)),
            })
        };
        let writer = Writer::spawn(
            conn,
            aside,
            Arc::clone(&sql),
            Arc::clone(&label),
            inline_async,
            config.busy_timeout,
            report,
        )
        .map_err(|e| open_error(&label, "starting the writer thread", e))?;
        let writer = Arc::new(writer);
        let cancel = CancellationToken::new();
        if !config.in_memory() && !observer {
            let checkpoints = tokio_rusqlite::Connection::open_with_flags(&target, flags)
                .await
                .map_err(|e| open_error(&label, "open failed", e))?;
            let busy = config.busy_timeout;
            checkpoints
                .call(move |c| c.busy_timeout(busy))
                .await
                .map_err(|e| open_error(&label, "configuring the checkpointer", e))?;
            tokio::spawn(checkpointer(checkpoints, cancel.clone()));
        }
        let acker_stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            config,
            sql,
            writer,
            receipts: Receipts::new(),
            readers,
            next_reader: AtomicUsize::new(0),
            inline,
            next_inline: AtomicUsize::new(0),
            sink,
            signal: Arc::new(DriverSignal::new()),
            closed: AtomicBool::new(false),
            label,
            driver: cancel.clone().drop_guard(),
            _acker: acker_stop.clone().drop_guard(),
        });
        if shared.sql.pending.is_some() {
            shared.receipts.flush_at_shutdown(&shared.sink);
            let (writer, receipts, signal) =
                (Arc::clone(&shared.writer), Arc::clone(&shared.receipts), Arc::clone(&shared.signal));
            tokio::spawn(driver::acker(writer, receipts, signal, acker_stop));
        }
        if !observer {
            tokio::spawn(driver::expiry_driver(Arc::downgrade(&shared), cancel));
        }
        Ok(SqliteBackend { shared })
    }
}

/// Creates the database file readable and writable by its owner only (mode
/// `0600`, whatever the umask) if it does not exist yet; an existing file's
/// mode is left alone. SQLite gives the `-wal` and `-shm` files it creates
/// next to it the same mode. Sessions and tokens live in these files, so a
/// new one must not be world-readable (SQLite alone creates it `0644` under
/// the usual umask).
///
/// A path that cannot be created here (a missing directory, say) is left to
/// SQLite, which reports it with the usual open error.
fn create_private(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // `create_new`: never touches a file that exists, even one created a moment ago by
        // another process opening the same new file.
        let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
        if let Ok(file) = created {
            // The umask can only have removed bits from 0600; put back exactly 0600.
            if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(0o600)) {
                tracing::warn!(path = %path.display(), error = %e, "cannot set mode 0600 on a new database file");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Copies the WAL back into the database file (a `PASSIVE` checkpoint, which
/// waits for no reader or writer) every [`CHECKPOINT_EVERY`], on a connection
/// and thread of its own, until the backend is dropped or shut down.
///
/// With SQLite's default (a checkpoint inside the commit that takes the WAL
/// past 1,000 pages), every ~1,000 pages one batch also paid for the
/// checkpoint and its fsyncs, and the expiry driver's claims queued behind it
/// (measured: expire lateness p99 ~50 ms with p50 ~1 ms). Only the writer can
/// start the WAL over, and only once a checkpoint caught up with it, which a
/// concurrent one rarely does under sustained writes; so the writer still
/// checkpoints itself past [`writer::CHECKPOINT_PAGES`] (measured without
/// it: the WAL grew to 90 MB in a 10-second write burst). Durability is
/// unchanged: a commit is durable (or, with `synchronous=NORMAL`,
/// crash-safe) once in the WAL, checkpointed or not.
async fn checkpointer(conn: tokio_rusqlite::Connection, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
        // A failed checkpoint is logged there; only a closed connection is left here.
        let done = conn
            .call(|c| {
                writer::checkpoint(c);
                Ok::<_, rusqlite::Error>(())
            })
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "sqlite checkpoint failed; retrying");
        }
    }
}

impl<V: Value> Shared<V> {
    /// Runs a read on the next reader connection (never queued behind writes).
    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut rusqlite::Connection, &Sql) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let sql = Arc::clone(&self.sql);
        let read = |e: &dyn std::fmt::Display| {
            Error::backend_msg("sqlite", format!("read from {}: {e}", self.label))
        };
        if self.readers.is_empty() {
            return self.writer.call(move |c| f(c, &sql)).await?.map_err(|e| read(&e));
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i].call(move |c| f(c, &sql)).await.map_err(|e| read(&e))
    }

    /// Runs a point read (one primary-key lookup) on the calling task when an
    /// inline connection is free, else on a reader thread.
    ///
    /// SQLite answers such a lookup from its page cache in a microsecond or
    /// two, far less than the hop to a reader thread and back (measured: ~10
    /// µs per read, and get with 8 tasks at 0.2x a raw prepared `SELECT`). The
    /// inline connections never wait for a lock (`busy_timeout` 0): a read
    /// that would (another process recovering the WAL, say), or that finds
    /// every inline connection in use, goes to the reader threads as before.
    async fn read_point<R, F>(&self, f: F) -> Result<R>
    where
        F: Fn(&rusqlite::Connection, &Sql) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        match self.read_inline(&f) {
            Some(result) => result,
            None => self.read(move |c, sql| f(c, sql)).await,
        }
    }

    /// A point read on a free inline connection, on the calling thread;
    /// `None` (nothing read) if every one is in use or the read would wait
    /// for a lock.
    fn read_inline<R>(
        &self,
        f: &impl Fn(&rusqlite::Connection, &Sql) -> rusqlite::Result<R>,
    ) -> Option<Result<R>> {
        let n = self.inline.len();
        let start = self.next_inline.fetch_add(1, Ordering::Relaxed);
        for j in 0..n {
            let Ok(conn) = self.inline[(start + j) % n].try_lock() else { continue };
            return match f(&conn, &self.sql) {
                Err(e) if writer::is_busy(&e) => None,
                result => Some(
                    result
                        .map_err(|e| Error::backend_msg("sqlite", format!("read from {}: {e}", self.label))),
                ),
            };
        }
        None
    }

    /// `Request::Get` on the calling thread (see [`SqliteBackend::get_now`]).
    fn get_now(&self, key: &str) -> Option<Result<Option<V>>> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        if let Some(idle) = &self.sql.idle {
            // Answered here only when the access moves no deadline (see `idle_extension`).
            let row = self.read_inline(&|c, _| {
                c.prepare_cached(&idle.get)?.query_row(params![key, now_ms()], idle_row).optional()
            })?;
            return match row {
                Err(e) => Some(Err(e)),
                Ok(None) => Some(Ok(None)),
                Ok(Some((_, at, ttl_at))) if self.idle_extension(now_ms(), at, ttl_at).is_some() => None,
                Ok(Some((bytes, _, _))) => Some(self.config.codec.decode(key, &bytes).map(Some)),
            };
        }
        let row = self.read_inline(&|c, sql| {
            c.prepare_cached(&sql.get)?
                .query_row(params![key, now_ms()], |r| r.get::<_, Vec<u8>>(0))
                .optional()
        })?;
        if let Ok(Some(_)) = &row {
            self.mark_used(key);
        }
        Some(row.and_then(|row| row.map(|b| self.config.codec.decode(key, &b)).transpose()))
    }

    /// A `get` hit under `eviction_policy=least_recently_used`: queues the
    /// entry's move to the back of the eviction order into the next group
    /// commit, without waiting for it.
    fn mark_used(&self, key: &str) {
        if self.sql.bound.is_some_and(|b| b.lru) {
            self.writer.write_detached(WriteOp::MarkUsed { key: key.to_owned() });
        }
    }

    /// Sends a write, waiting (with backoff) while another owner holds the key's lock.
    async fn write(&self, op: WriteOp) -> Result<WriteOutcome> {
        let mut backoff = Duration::from_millis(1);
        loop {
            // A lone caller writes inline when the writer is idle (see `Writer::write_inline`);
            // everyone else joins the group commit.
            let Applied { outcome, held } = if crate::caller::may_block() {
                match self.writer.write_inline(&op, Inline::MayBlock) {
                    Some(applied) => applied?,
                    None => self.writer.write(op.clone()).await?,
                }
            } else {
                self.writer.write_async(op.clone()).await?
            };
            if held {
                // Expirations this write found are leased by the driver, now.
                self.signal.deadline_written(now_ms());
            }
            match outcome {
                WriteOutcome::KeyLocked => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
                WriteOutcome::LockLost => {
                    let key = match op {
                        WriteOp::Set { key, .. }
                        | WriteOp::Delete { key, .. }
                        | WriteOp::Expire { key, .. }
                        | WriteOp::Persist { key, .. }
                        | WriteOp::Renew { key, .. } => key,
                        _ => String::new(),
                    };
                    return Err(Error::LockLost { key });
                }
                other => return Ok(other),
            }
        }
    }

    fn report_expired(&self, key: &str, bytes: &[u8]) {
        self.sink.expired(key, || self.config.codec.decode_expired(key, bytes));
    }

    /// Reports a leased expiration (`at_least_once`); the acker writes its receipt.
    fn report_leased(&self, leased: Leased) {
        let Leased { id, key, value, attempt } = leased;
        let settle = self.receipts.settle(move |ok| (id, attempt, ok));
        let most = self.config.delivery.max_attempts;
        self.sink.expired_leased(
            &key,
            || self.config.codec.decode_expired(&key, &value),
            attempt,
            most,
            settle,
        );
    }

    /// The earliest deadline in the table (any process's).
    async fn earliest_deadline(&self) -> Result<Option<i64>> {
        self.read(|c, sql| c.prepare_cached(&sql.earliest)?.query_row([], |r| r.get(0))).await
    }

    /// Time-to-idle: the deadline an access at `now` must write for a live
    /// entry whose deadline is `at` and own TTL's deadline `ttl_at`, or
    /// `None` if it need not write: the entry has no deadline, or the new
    /// one would be at most 1% of the time-to-idle (at least 1 ms) later.
    /// Skipping those writes keeps a hot key from costing a write per read;
    /// an entry read at least once every 99% of the time-to-idle is still
    /// never expired.
    fn idle_extension(&self, now: i64, at: Option<i64>, ttl_at: Option<i64>) -> Option<i64> {
        let idle = self.sql.idle.as_ref()?;
        let target = now.saturating_add(idle.idle_ms).min(ttl_at.unwrap_or(i64::MAX));
        let slack = (idle.idle_ms / 100).max(1);
        (target > at?.saturating_add(slack)).then_some(target)
    }

    /// An **access** to `key` (`get`, `exists`, a guard's `get`, and any
    /// other read that counts as a use), given what the read found: the
    /// live entry's deadline `at` and its own TTL's deadline `ttl_at`
    /// (from `IdleSql::get` or `IdleSql::deadline`). With time-to-idle,
    /// writes the moved deadline (see [`idle_extension`](Self::idle_extension))
    /// before the read answers, so every process sees it; false if the
    /// entry stopped being live meanwhile (the read then answers nothing).
    async fn accessed(&self, key: &str, at: Option<i64>, ttl_at: Option<i64>) -> Result<bool> {
        // An observer's reads are not uses: they never keep an idle entry alive.
        if self.config.observer.0 {
            return Ok(true);
        }
        let Some(expires_at) = self.idle_extension(now_ms(), at, ttl_at) else { return Ok(true) };
        let outcome = self.write(WriteOp::Touch { key: key.to_owned(), expires_at }).await?;
        Ok(bool_of(outcome))
    }

    /// A `get` with time-to-idle: the live value of `key`, its read an
    /// access ([`accessed`](Self::accessed)).
    async fn get_accessed(&self, key: String) -> Result<Option<V>> {
        let k = key.clone();
        let row = self
            .read_point(move |c, sql| {
                let idle = sql.idle.as_ref().ok_or(rusqlite::Error::InvalidQuery)?;
                c.prepare_cached(&idle.get)?.query_row(params![k, now_ms()], idle_row).optional()
            })
            .await?;
        let Some((bytes, at, ttl_at)) = row else { return Ok(None) };
        if !self.accessed(&key, at, ttl_at).await? {
            return Ok(None);
        }
        self.mark_used(&key);
        Ok(Some(self.config.codec.decode(&key, &bytes)?))
    }

    fn deadline(&self, ttl: Duration) -> i64 {
        let at = now_ms().saturating_add(ttl_ms(ttl));
        self.signal.deadline_written(at);
        at
    }

    async fn handle(&self, req: Request<V>) -> Result<Response<V>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let codec = self.config.codec;
        match req {
            Request::Get { key } if self.sql.idle.is_some() => {
                Ok(Response::Value(self.get_accessed(key).await?))
            }
            Request::GetMany { keys } if self.sql.idle.is_some() => {
                // Each read is an access: one idle read per key, their
                // deadline writes joining one group commit.
                let reads = keys.into_iter().map(|key| self.get_accessed(key));
                Ok(Response::Values(futures::future::try_join_all(reads).await?))
            }
            Request::Exists { key } if self.sql.idle.is_some() => {
                let k = key.clone();
                let row: Option<(Option<i64>, Option<i64>)> = self
                    .read_point(move |c, sql| {
                        let idle = sql.idle.as_ref().ok_or(rusqlite::Error::InvalidQuery)?;
                        c.prepare_cached(&idle.deadline)?
                            .query_row(params![k, now_ms()], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                    })
                    .await?;
                let Some((at, ttl_at)) = row else { return Ok(Response::Bool(false)) };
                Ok(Response::Bool(self.accessed(&key, at, ttl_at).await?))
            }
            Request::Get { key } => {
                let k = key.clone();
                let row: Option<Vec<u8>> = self
                    .read_point(move |c, sql| {
                        c.prepare_cached(&sql.get)?.query_row(params![k, now_ms()], |r| r.get(0)).optional()
                    })
                    .await?;
                if row.is_some() {
                    self.mark_used(&key);
                }
                Ok(Response::Value(row.map(|b| codec.decode(&key, &b)).transpose()?))
            }
            Request::Exists { key } => Ok(Response::Bool(self.read_deadline(key).await?.is_some())),
            Request::Ttl { key } => {
                let at = self.read_deadline(key).await?.flatten();
                Ok(Response::Ttl(
                    at.map(|at| Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64)),
                ))
            }
            Request::Set { key, value, ttl, lock } => {
                let value = self.config.encoder().encode(&key, &value)?;
                let expires_at = ttl.map(|t| self.deadline(t));
                if let Some(idle) = &self.sql.idle {
                    // The upsert starts the idle period (see `Sql::with_idle`).
                    self.signal.deadline_written(now_ms().saturating_add(idle.idle_ms));
                }
                let owner = lock.map(|t| t.as_str().to_owned());
                self.write(WriteOp::Set { key, value, expires_at, owner }).await?;
                Ok(Response::Done)
            }
            Request::Delete { key, lock } => {
                let owner = lock.map(|t| t.as_str().to_owned());
                let outcome = self.write(WriteOp::Delete { key: key.clone(), owner }).await?;
                let removed = matches!(outcome, WriteOutcome::Deleted(Some(_)));
                let value = match outcome {
                    WriteOutcome::Deleted(Some(bytes)) => codec.decode(&key, &bytes).ok(),
                    _ => None,
                };
                Ok(Response::Deleted { removed, value })
            }
            Request::Expire { key, ttl, lock } => {
                let expires_at = self.deadline(ttl);
                if let Some(idle) = &self.sql.idle {
                    self.signal.deadline_written(now_ms().saturating_add(idle.idle_ms));
                }
                let owner = lock.map(|t| t.as_str().to_owned());
                Ok(Response::Bool(bool_of(self.write(WriteOp::Expire { key, expires_at, owner }).await?)))
            }
            Request::Persist { key, lock } => {
                if let Some(idle) = &self.sql.idle {
                    self.signal.deadline_written(now_ms().saturating_add(idle.idle_ms));
                }
                let owner = lock.map(|t| t.as_str().to_owned());
                Ok(Response::Bool(bool_of(self.write(WriteOp::Persist { key, owner }).await?)))
            }
            Request::Keys => Ok(Response::Keys(self.pages(page_keys).await?)),
            Request::Items => {
                let rows = self.pages(page_items).await?;
                let items = rows
                    .into_iter()
                    .map(|(k, b)| codec.decode(&k, &b).map(|v| (k, v)))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Response::Items(items))
            }
            Request::Len => {
                let n: i64 = self
                    .read(|c, sql| c.prepare_cached(&sql.count)?.query_row([now_ms()], |r| r.get(0)))
                    .await?;
                Ok(Response::Len(n as usize))
            }
            Request::Clear => {
                self.write(WriteOp::Clear).await?;
                Ok(Response::Done)
            }
            Request::Lock { key, timeout, token } => self.lock(key, timeout, token.as_str().to_owned()).await,
            Request::Renew { key, token } => {
                let lease_until = now_ms().saturating_add(ttl_ms(self.config.lock_lease));
                let op = WriteOp::Renew { key: key.clone(), owner: token.as_str().to_owned(), lease_until };
                match self.write(op).await? {
                    WriteOutcome::Bool(true) => Ok(Response::Done),
                    _ => Err(Error::LockLost { key }),
                }
            }
            Request::Unlock { key, token } => {
                self.write(WriteOp::Unlock { key, owner: token.as_str().to_owned() }).await?;
                Ok(Response::Done)
            }
            // Atomic through the cross-process lock (see `atomic.rs`).
            Request::CompareAndSet { .. } | Request::Incr { .. } => Ok(Response::Unsupported),
            Request::Throttle { .. } if self.sql.idle.is_some() => Err(crate::gcra::idle_refused()),
            Request::Throttle { key, gcra, cost, value_of, tat_of } => {
                let tat = TatCodec {
                    decode: Arc::new(move |b| codec.decode::<V>("", b).ok().and_then(|v| tat_of(&v))),
                    encode: Arc::new(move |t| value_of(t).and_then(|v| codec.encode("", &v).ok())),
                };
                let op = WriteOp::Throttle { key: key.clone(), gcra, cost, tat };
                match self.write(op).await? {
                    WriteOutcome::Throttled { verdict, stored } => {
                        let stored = match stored {
                            Some((tat, expires_at)) => {
                                self.signal.deadline_written(expires_at);
                                value_of(tat)
                            }
                            None => None,
                        };
                        Ok(Response::Throttled { verdict, stored })
                    }
                    WriteOutcome::NotATat => Err(crate::gcra::not_a_tat(&key)),
                    _ => Err(Response::<V>::mismatch("throttle")),
                }
            }
            Request::GetMany { keys } => {
                let (keys, rows) = self.get_many(keys).await?;
                for (key, _) in keys.iter().zip(&rows).filter(|(_, row)| row.is_some()) {
                    self.mark_used(key);
                }
                let values =
                    keys.iter().zip(rows).map(|(k, row)| row.map(|b| codec.decode(k, &b)).transpose());
                Ok(Response::Values(values.collect::<Result<_>>()?))
            }
            Request::SetMany { entries, ttl } => {
                // Every value is encoded before anything is written.
                let encoder = self.config.encoder();
                let encoded = entries
                    .into_iter()
                    .map(|(key, value)| encoder.encode(&key, &value).map(|value| (key, value)))
                    .collect::<Result<Vec<_>>>()?;
                let expires_at = ttl.map(|t| self.deadline(t));
                if let Some(idle) = &self.sql.idle {
                    // The upsert starts each idle period (see `Sql::with_idle`).
                    self.signal.deadline_written(now_ms().saturating_add(idle.idle_ms));
                }
                let ops = encoded
                    .into_iter()
                    .map(|(key, value)| WriteOp::Set { key, value, expires_at, owner: None })
                    .collect();
                self.write_many(ops).await?;
                Ok(Response::Done)
            }
            Request::DeleteMany { keys } => {
                let ops = keys.iter().map(|key| WriteOp::Delete { key: key.clone(), owner: None }).collect();
                let outcomes = self.write_many(ops).await?;
                let removed = keys.iter().zip(outcomes).map(|(key, outcome)| match outcome {
                    WriteOutcome::Deleted(Some(bytes)) => (true, codec.decode(key, &bytes).ok()),
                    _ => (false, None),
                });
                Ok(Response::DeletedMany(removed.collect()))
            }
            Request::ScanPage { prefix, cursor, limit, values } => {
                self.scan_page(prefix, cursor, limit, values).await
            }
            Request::Shutdown => {
                // Every acknowledged write is already committed; stop the driver.
                self.closed.store(true, Ordering::Release);
                self.driver_cancel();
                Ok(Response::Done)
            }
        }
    }

    fn driver_cancel(&self) {
        // The guard's token is the driver's; cancelling it early is idempotent.
        self.driver_token().cancel();
    }

    fn driver_token(&self) -> &CancellationToken {
        self.driver.token()
    }

    async fn read_deadline(&self, key: String) -> Result<Option<Option<i64>>> {
        self.read_point(move |c, sql| {
            c.prepare_cached(&sql.deadline)?.query_row(params![key, now_ms()], |r| r.get(0)).optional()
        })
        .await
    }

    /// Reads a whole listing page by page (by key order), so a large table is
    /// never read in one statement.
    async fn pages<T, F>(&self, page: F) -> Result<Vec<T>>
    where
        T: Send + 'static + KeyOf,
        F: Fn(&mut rusqlite::Connection, &Sql, String) -> rusqlite::Result<Vec<T>>
            + Send
            + Sync
            + Copy
            + 'static,
    {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let from = std::mem::take(&mut after);
            let rows = self.read(move |c, sql| page(c, sql, from)).await?;
            let done = (rows.len() as i64) < PAGE;
            if let Some(last) = rows.last() {
                after = last.key().to_owned();
            }
            all.extend(rows);
            if done {
                return Ok(all);
            }
        }
    }

    /// One page of a prefix scan: a range read on the key's index (see
    /// [`schema::Scan`]) from just above the cursor (the previous page's
    /// last key) on, on a reader connection; the next cursor is the page's
    /// last key when the page is full.
    async fn scan_page(
        &self,
        prefix: String,
        cursor: Option<String>,
        limit: usize,
        values: bool,
    ) -> Result<Response<V>> {
        // The smallest key above the cursor is the cursor and a NUL.
        let from = match cursor {
            Some(mut last) if last.as_str() >= prefix.as_str() => {
                last.push('\0');
                last
            }
            _ => prefix.clone(),
        };
        let to = schema::prefix_end(&prefix);
        // At most [`PAGE`] rows: the rows are read on a reader thread (its
        // own malloc arena) and decoded on the caller's, so a page's bytes
        // count twice in the RSS (measured, 1M entries: 10,000-row pages
        // grew the peak RSS by 17 MB during a scan).
        let limit = limit.clamp(1, PAGE as usize) as i64;
        let rows: Vec<(String, Option<Vec<u8>>)> = self
            .read(move |c, sql| {
                let mut stmt = c.prepare_cached(sql.scan.page(values, to.is_some()))?;
                let row =
                    |r: &rusqlite::Row<'_>| Ok((r.get(0)?, if values { Some(r.get(1)?) } else { None }));
                let rows = match &to {
                    Some(to) => stmt.query_map(params![from, now_ms(), limit, to], row)?,
                    None => stmt.query_map(params![from, now_ms(), limit], row)?,
                };
                rows.collect()
            })
            .await?;
        let next = if rows.len() as i64 >= limit { rows.last().map(|(k, _)| k.clone()) } else { None };
        let codec = self.config.codec;
        let entries = rows
            .into_iter()
            .map(|(k, b)| match b {
                Some(b) => codec.decode(&k, &b).map(|v| (k, Some(v))),
                None => Ok((k, None)),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Response::ScanPage { entries, next })
    }

    async fn lock(&self, key: String, timeout: Duration, owner: String) -> Result<Response<V>> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(1);
        loop {
            let lease_until = now_ms().saturating_add(ttl_ms(self.config.lock_lease));
            let op = WriteOp::TryLock { key: key.clone(), owner: owner.clone(), lease_until };
            if let WriteOutcome::Locked(Some(fence)) = self.write(op).await? {
                return Ok(Response::Locked(LockGrant::distributed(fence, self.config.lock_lease)));
            }
            if started.elapsed() + backoff > timeout {
                return Err(Error::LockTimeout { key });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }
}

/// Rows of a listing page know their key (to fetch the next page).
trait KeyOf {
    fn key(&self) -> &str;
}

impl KeyOf for String {
    fn key(&self) -> &str {
        self
    }
}

impl KeyOf for (String, Vec<u8>) {
    fn key(&self) -> &str {
        &self.0
    }
}

fn page_keys(c: &mut rusqlite::Connection, sql: &Sql, after: String) -> rusqlite::Result<Vec<String>> {
    let mut stmt = c.prepare_cached(&sql.page_keys)?;
    let rows = stmt.query_map(params![after, now_ms(), PAGE], |r| r.get(0))?;
    rows.collect()
}

fn page_items(
    c: &mut rusqlite::Connection,
    sql: &Sql,
    after: String,
) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
    let mut stmt = c.prepare_cached(&sql.page_items)?;
    let rows = stmt.query_map(params![after, now_ms(), PAGE], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// A row of `IdleSql::get`: value, expires_at, ttl_at.
type IdleRow = (Vec<u8>, Option<i64>, Option<i64>);

fn idle_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IdleRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn bool_of(outcome: WriteOutcome) -> bool {
    matches!(outcome, WriteOutcome::Bool(true))
}

impl<V: Value> tower::Service<Request<V>> for SqliteBackend<V> {
    type Response = Response<V>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Response<V>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<V>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.handle(req).await })
    }
}
