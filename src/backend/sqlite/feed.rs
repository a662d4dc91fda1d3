//! The change feed: every process sharing a file appends its events to the
//! table `<table>_events`, and polls it for the events of the others, which
//! it hands to its watches, so a [`Watch`](crate::Watch) sees the whole store.
//!
//! Rows are appended in batches (one transaction each) after the writes they
//! describe committed, and kept for [`RETENTION`]; each process reads the
//! rows past the last one it saw every [`POLL`], skipping its own (by origin).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rusqlite::{OpenFlags, params};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{SqliteBackend, now_ms, open_error, schema};
use crate::Value;
use crate::codec::Codec;
use crate::error::Result;
use crate::event::dispatch::Dispatcher;
use crate::event::relay::{Outbox, Outgoing, Relay};
use crate::event::watch::Watchers;
use crate::event::{Event, EventKind};

/// How often each process reads the feed.
const POLL: Duration = Duration::from_millis(10);
/// How long a row stays in the feed (a process that falls further behind misses rows).
const RETENTION: Duration = Duration::from_secs(60);
/// Rows waiting to be appended before new ones are dropped.
const OUTBOX: usize = 8192;
/// Rows appended per transaction, and read per poll, at most.
const BATCH: usize = 512;

/// A row read from the feed: seq, origin, kind, key, encoded value.
type FeedRow = (i64, i64, i64, String, Option<Vec<u8>>);

/// One event on its way into the feed.
struct Row {
    kind: EventKind,
    key: String,
    value: Option<Vec<u8>>,
}

/// The statements of one store's feed.
struct FeedSql {
    create: String,
    insert: String,
    trim: String,
    head: String,
    read: String,
}

impl FeedSql {
    fn new(t: &str) -> Self {
        // `t` is validated to [A-Za-z0-9_]+, so quoting it is enough.
        let e = format!("\"{t}_events\"");
        FeedSql {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {e} (seq INTEGER PRIMARY KEY AUTOINCREMENT, origin INTEGER NOT NULL, \
                 kind INTEGER NOT NULL, key TEXT NOT NULL, value BLOB, at INTEGER NOT NULL)"
            ),
            insert: format!("INSERT INTO {e} (origin, kind, key, value, at) VALUES (?1, ?2, ?3, ?4, ?5)"),
            trim: format!("DELETE FROM {e} WHERE at < ?1"),
            head: format!("SELECT coalesce(max(seq), 0) FROM {e}"),
            read: format!(
                "SELECT seq, origin, kind, key, value FROM {e} WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ),
        }
    }
}

/// Queues this process's events for the feed; [`Relay`] for the dispatcher.
struct SqliteRelay {
    codec: Codec,
    outbox: Outbox<Row>,
    /// Stops the poll task when taken (close) or dropped.
    stop: Mutex<Option<DropGuard>>,
}

impl<V: Value> Relay<V> for SqliteRelay {
    fn publish(&self, event: &Event<V>) {
        // It was stored, so it encodes; if not, the event is shared without it.
        let value = event.value().and_then(|v| self.codec.encode(event.key(), v).ok());
        self.outbox.push(Row { kind: event.kind(), key: event.key().to_owned(), value });
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.outbox.close()
    }
}

impl<V: Value> SqliteBackend<V> {
    /// Shares events across every process that uses this file and table:
    /// this store's `Set`, `Delete`, `Expire` and `Evict` events are appended
    /// to the change feed table `<table>_events`, and those of other
    /// processes reach this store's [`watch`](crate::LiveDict::watch)
    /// streams (read every 10 ms). Callbacks keep seeing only this process's
    /// events, so each expiration still reaches callbacks exactly once in
    /// total; every watch in every sharing process sees it once. `Get`
    /// events are not shared.
    ///
    /// Enabled by the URL option `share_events=true` (or
    /// [`SqliteConfig::share_events`](super::SqliteConfig::share_events)); call
    /// this yourself only for a stack built with
    /// [`LiveDict::from_service`](crate::LiveDict::from_service). Processes
    /// that only write must enable it too. Rows are appended in the
    /// background after the write they describe committed (a crash in
    /// between loses the event; [`shutdown`](crate::LiveDict::shutdown)
    /// appends those still queued, so call it before the process exits) and
    /// are kept for 60 s. A private `sqlite::memory:` database has no other process to
    /// share with: this does nothing there.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{EventKind, LiveDict, WatchFilter};
    /// let dir = tempfile::tempdir().unwrap();
    /// let url = format!("sqlite://{}?share_events=true", dir.path().join("s.db").display());
    /// let a = LiveDict::<u32>::open(&url).await?;
    /// let b = LiveDict::<u32>::open(&url).await?; // another process, as far as `a` can tell
    /// let mut w = a.watch(WatchFilter::kinds([EventKind::Set]))?;
    /// b.set("k", 1).await?;
    /// let item = w.recv().await.unwrap();
    /// assert_eq!(item.event().unwrap().key(), "k");
    /// # Ok(()) }
    /// ```
    pub async fn share_events(&self, dispatcher: &Dispatcher<V>) -> Result<()> {
        let shared = &self.shared;
        let config = &shared.config;
        if config.in_memory() {
            return Ok(());
        }
        let label = Arc::clone(&shared.label);
        let flags =
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = tokio_rusqlite::Connection::open_with_flags(&config.path, flags)
            .await
            .map_err(|e| open_error(&label, "opening the change feed", e))?;
        let sql = Arc::new(FeedSql::new(&config.table));
        let (setup, q) = (config.clone(), Arc::clone(&sql));
        let head: i64 = conn
            .call(move |c| -> rusqlite::Result<i64> {
                if !setup.observer_creates() {
                    // An observer reads the feed the other processes keep; it never creates it.
                    c.busy_timeout(setup.busy_timeout)?;
                    let t = format!("{}_events", setup.table);
                    let exists: bool = c.query_row(
                        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                        [&t],
                        |r| r.get(0),
                    )?;
                    if !exists {
                        return Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                            Some(format!(
                                "no change feed `{t}` (no process opened the store with share_events=true)"
                            )),
                        ));
                    }
                } else {
                    schema::configure(c, &setup)?;
                    c.execute_batch(&q.create)?;
                }
                c.query_row(&q.head, [], |r| r.get(0))
            })
            .await
            .map_err(|e| open_error(&label, "creating the change feed", e))?;
        let cancel = CancellationToken::new();
        let (outbox, rows) = Outbox::new(OUTBOX, Arc::clone(dispatcher.counters()));
        let relay = Arc::new(SqliteRelay {
            codec: config.codec,
            outbox,
            stop: Mutex::new(Some(cancel.clone().drop_guard())),
        });
        let watchers = dispatcher.attach_relay(relay)?;
        let origin: i64 = rand::random();
        let feed = Feed { conn, sql, origin, label };
        tokio::spawn(feed.clone().append(rows));
        tokio::spawn(feed.poll(watchers, config.codec, head, cancel));
        Ok(())
    }
}

/// One process's end of the feed: its connection and origin.
#[derive(Clone)]
struct Feed {
    conn: tokio_rusqlite::Connection,
    sql: Arc<FeedSql>,
    origin: i64,
    label: Arc<str>,
}

impl Feed {
    /// Appends this process's events in batches, trimming old rows now and
    /// then, until closed (or the relay is gone).
    async fn append(self, mut rows: mpsc::Receiver<Outgoing<Row>>) {
        let mut last_trim = Instant::now();
        let mut closed = None;
        while closed.is_none() {
            let mut batch = Vec::new();
            match rows.recv().await {
                Some(Outgoing::Item(r)) => batch.push(r),
                Some(Outgoing::Close(ack)) => closed = Some(ack),
                None => break,
            }
            while closed.is_none() && batch.len() < BATCH {
                match rows.try_recv() {
                    Ok(Outgoing::Item(r)) => batch.push(r),
                    Ok(Outgoing::Close(ack)) => closed = Some(ack),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            let trim = last_trim.elapsed() > Duration::from_secs(1);
            if trim {
                last_trim = Instant::now();
            }
            let (sql, origin) = (Arc::clone(&self.sql), self.origin);
            let appended = self
                .conn
                .call(move |c| -> rusqlite::Result<()> {
                    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let now = now_ms();
                    {
                        let mut insert = tx.prepare_cached(&sql.insert)?;
                        for r in &batch {
                            insert.execute(params![origin, r.kind.index() as i64, r.key, r.value, now])?;
                        }
                    }
                    if trim {
                        tx.execute(&sql.trim, [now - RETENTION.as_millis() as i64])?;
                    }
                    tx.commit()
                })
                .await;
            if let Err(e) = appended {
                tracing::warn!(path = %self.label, error = %e, "appending events to the change feed failed");
            }
        }
        if let Some(ack) = closed {
            let _ = ack.send(());
        }
    }

    /// Hands the events other processes appended to this store's watches.
    async fn poll<V: Value>(
        self,
        watchers: Arc<Watchers<V>>,
        codec: Codec,
        mut after: i64,
        cancel: CancellationToken,
    ) {
        let mut full = false;
        loop {
            if !full {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
            } else if cancel.is_cancelled() {
                break;
            }
            let sql = Arc::clone(&self.sql);
            let read = self
                .conn
                .call(move |c| -> rusqlite::Result<Vec<FeedRow>> {
                    let mut st = c.prepare_cached(&sql.read)?;
                    let rows = st.query_map(params![after, BATCH as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?;
                    rows.collect()
                })
                .await;
            let rows = match read {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(path = %self.label, error = %e, "reading the change feed failed");
                    continue;
                }
            };
            full = rows.len() == BATCH;
            for (seq, origin, kind, key, value) in rows {
                after = seq;
                let Some(&kind) = EventKind::ALL.get(kind as usize) else { continue };
                if origin == self.origin {
                    continue;
                }
                // An undecodable value (e.g. another codec) is shared as an event without a value.
                let value = value.and_then(|v| codec.decode::<V>(&key, &v).ok());
                watchers.emit(&Event::new(kind, key, value));
            }
        }
    }
}
