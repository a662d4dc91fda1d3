//! The in-process backend: a sharded map of its own (or moka, with a
//! capacity bound) holds the entries (`entries.rs`), a deadline table and one
//! driver task expire them on time.
//!
//! Entries are keyed by `Arc<str>` and the deadline table's rows hold a clone
//! of that key and of the entry (`timers.rs`): a `set_with_ttl` copies its key
//! once, takes the old entry's row out by the position the entry records, and
//! the driver reports an expiry from the row alone, reading the entries only
//! to remove the entry under its key's write lock. Keys are hashed with
//! foldhash (seeded per store) instead of SipHash (~160 instructions a hash).
//! Measured with callgrind: see CHANGELOG (issue 18).

mod batch;
mod entries;
mod timers;

use std::collections::BinaryHeap;
use std::future::{Ready, ready};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use moka::notification::RemovalCause;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::Value;
use crate::error::{Error, Result};
use crate::event::{Event, EventKind, EventSink, SharedValue};
use crate::request::{Gcra, LockGrant, Request, Response, Throttled};
use entries::{Cap, Entries, Entry, Hasher};
use timers::{DeadlineTable, Micros, NO_DEADLINE, Row, Timed};

/// How many expired entries the driver reports (or removes) before yielding.
const EXPIRE_BATCH: usize = 1024;

/// How many already-reported expired entries the driver removes between
/// checks for newly due deadlines (~1 ms of moka conditional removals).
const REMOVE_BATCH: usize = 64;

/// Expired entries the driver holds reported but not yet removed: past both
/// this and the number of entries the store holds, the driver removes them
/// all before it takes more due rows. However rarely it runs (an application
/// task that keeps its worker busy starves it), what it holds then stays
/// within the store's own size. Each one pins its entry (key and value) after
/// a writer replaced it; before this bound, a driver given the worker only
/// now and then took up to 1,024 rows a turn and removed 64, and a soak's RSS
/// grew linearly (issue 38: 30 -> 73 MB in 180 s). A burst (1M keys due over
/// 1 s) holds up to all its entries, as before: draining at 4,096 alone put
/// their removals in the burst's way (p99 lateness 23 -> 900 ms).
const MAX_REPORTED: usize = 4 * EXPIRE_BATCH;

/// How many deadline rows the driver stages ahead between batches (~0.3 ms).
const STAGE_BATCH: usize = 8192;

/// How many milliseconds in a row without progress of the `Expire` callbacks
/// the driver waits for room in their queues (see [`wait_for_room`]). A
/// callback thread the OS did not schedule for a few milliseconds (a loaded
/// machine: 2 cores, load ~10) is not stuck: at 5 ms, 1 run in 4 of
/// `events::a_burst_larger_than_the_callback_queue_…` dropped ~300-900 events
/// of 6,000 there; a stuck callback now holds the others up 25 ms a batch.
const ROOM_PATIENCE: u32 = 25;

/// Settings of the memory backend.
///
/// URL form: `memory://?max_capacity=10000`. Options:
///
/// | option | default | meaning |
/// | --- | --- | --- |
/// | `max_capacity` | none | most entries; beyond it moka evicts, each eviction an `Evict` event |
/// | `time_to_idle_ms` | none | an entry also expires this long after its last access (read or write); see [`MemoryConfig::time_to_idle`] |
/// | `expire_delivery` | `at_most_once` | `at_least_once`: an expiration whose `Expire` callback failed is delivered again, in-process ([`Delivery`](crate::Delivery)) |
/// | `expire_lease_ms` | 30000 | read for symmetry with SQLite and Redis (in-process, a failure is known at once) |
/// | `expire_max_attempts` | 10 | deliveries of one expiration before it is dropped |
///
/// ```
/// let config = livedict::backend::MemoryConfig::default().max_capacity(10_000);
/// # let _ = config;
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryConfig {
    max_capacity: Option<u64>,
    time_to_idle: Option<Duration>,
    delivery: crate::delivery::ExpireDelivery,
}

crate::delivery::delivery_settings!(MemoryConfig, "livedict::backend::MemoryConfig::default()");

impl MemoryConfig {
    /// Bounds the number of entries; beyond it moka evicts (TinyLFU policy,
    /// which may also reject a new entry) and each eviction is an `Evict` event.
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.max_capacity = Some(entries);
        self
    }

    /// Idle expiry: an entry also expires `idle` after its last access (a
    /// write, `get`, `exists`, a guard's `get`; not `ttl`, `keys`, `items`
    /// or a scan), at the earlier of that and its own TTL's deadline, as an
    /// ordinary `Expire` event with its value. URL option `time_to_idle_ms`.
    ///
    /// An access moves the entry's deadline in place (a compare-and-swap on
    /// it, under the shard's read lock; skipped when it would move by less
    /// than 1 ms); the expiry driver finds a moved deadline when the old one
    /// comes due and files the row again. An entry whose own TTL ends after
    /// its first idle deadline keeps that deadline in a side table (looked
    /// up by its accesses, dropped when it ends). Without it, reads cost
    /// nothing more, and no entry is larger.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = livedict::backend::MemoryConfig::default().time_to_idle(Duration::from_secs(600));
    /// # let _ = config;
    /// ```
    pub fn time_to_idle(mut self, idle: Duration) -> Self {
        self.time_to_idle = Some(idle);
        self
    }

    /// Reads options of a `memory://` URL ([`OPTIONS`]).
    pub(crate) fn from_url(url: &mut crate::url::StoreUrl<'_>) -> Result<Self> {
        if !url.body().is_empty() {
            return Err(url.error("memory:// takes no path"));
        }
        let mut config = MemoryConfig::default();
        url.apply(&mut config, OPTIONS)?;
        url.apply(&mut config, &crate::delivery::delivery_options())?;
        Ok(config)
    }
}

/// The URL options of `memory://`, in the order of the documentation tables.
const OPTIONS: &[crate::url::UrlOption<MemoryConfig>] = &[
    crate::url::UrlOption {
        name: "max_capacity",
        default: "none",
        apply: |c, v| crate::url::set(&mut c.max_capacity, Some(crate::url::parse(v)?)),
    },
    crate::url::UrlOption {
        name: "time_to_idle_ms",
        default: "none",
        apply: |c, v| crate::url::set(&mut c.time_to_idle, Some(crate::url::idle_millis(v)?)),
    },
];

/// Time-to-idle in the deadline table's micros, and how little an access
/// may leave a deadline unmoved (1 ms, or 1% of a shorter time-to-idle: a
/// deadline a few hundred microseconds short is within the wheel's 1 ms
/// ticks, and a key read by many threads is not written on every read).
#[derive(Debug, Clone, Copy)]
struct Idle {
    micros: Micros,
    slack: Micros,
}

impl Idle {
    fn new(idle: Duration) -> Self {
        let micros = u64::try_from(idle.as_micros()).unwrap_or(NO_DEADLINE - 1).max(1);
        Idle { micros, slack: (micros / 100).min(1000) }
    }
}

/// The deadlines of entries whose own TTL ends after their first idle
/// deadline ([`Cap::Table`]): key → (deadline, the entry's address). Only a
/// store with `time_to_idle` writes it; a row goes when its entry ends.
/// A `std::sync::Mutex`, taken after a shard's lock, never across an `.await`.
type Limits = std::sync::Mutex<std::collections::HashMap<Arc<str>, (Micros, usize), Hasher>>;

struct Shared<V> {
    entries: Entries<V>,
    limits: Arc<Limits>,
    /// `time_to_idle`, if set: accesses move deadlines (see [`Shared::read_live`]).
    idle: Option<Idle>,
    deadlines: Arc<DeadlineTable<Entry<V>>>,
    sink: EventSink<V>,
    /// Cancels the driver when the last backend clone (and so this) goes.
    _driver: DropGuard,
}

/// Runs for every entry with a deadline this backend replaced or removed
/// (`hash`: its key's; `row_removed`: whether its deadline row was removed
/// with it): ends it, so a row still held is dead, and reports it as expired
/// if it was already past its deadline, so each expiry is reported exactly
/// once whoever removes it.
fn ended<V: Value>(
    deadlines: &DeadlineTable<Entry<V>>,
    sink: &EventSink<V>,
    key: &str,
    hash: u64,
    old: &Entry<V>,
    row_removed: bool,
) {
    // Only entries with a deadline have a row, or need the clock.
    if old.has_deadline() && old.claim_end() {
        if !row_removed {
            // The driver holds it (it finds the entry ended and drops it).
            deadlines.ended(hash);
        }
        if !old.is_live(deadlines.micros(Instant::now())) {
            sink.expired(key, || Some(old.value.clone()));
        }
    }
}

/// moka's eviction listener (only with a capacity bound): reports an entry
/// evicted for capacity. Replacements and removals are handled by the writer
/// that made them (see [`WriteLocks`]).
fn on_eviction<V: Value>(
    deadlines: &DeadlineTable<Entry<V>>,
    limits: &Limits,
    sink: &EventSink<V>,
    key: &str,
    old: Arc<Entry<V>>,
    cause: RemovalCause,
) {
    if cause == RemovalCause::Size && old.claim_end() {
        forget_limit(limits, key, &old);
        if old.has_deadline() {
            let hash = deadlines.hash(key);
            if !deadlines.replace(hash, Some(&old), None) {
                deadlines.ended(hash);
            }
        }
        sink.evicted(key, || Some(old.value.clone()));
    }
}

/// The in-process backend: a `tower::Service<Request<V>>` over a sharded map
/// (or a moka cache, with a capacity bound).
///
/// Values are stored as `V` (never serialized). Each entry with a TTL is
/// removed by the backend's own driver task within a few milliseconds of its
/// deadline and reported exactly once as an `Expire` event carrying the value;
/// a key written again is never removed by its older deadline. Reads never
/// return an expired value, even before the driver ran. Dropping the last
/// clone stops the driver.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use livedict::{backend::{MemoryBackend, MemoryConfig}, EventSink, Request, Response};
/// use tower::ServiceExt;
/// let backend = MemoryBackend::<u32>::new(MemoryConfig::default(), EventSink::none())?;
/// backend.clone().oneshot(Request::Set { key: "a".into(), value: 1, ttl: None, lock: None }).await?;
/// let got = backend.oneshot(Request::Get { key: "a".into() }).await?;
/// assert!(matches!(got, Response::Value(Some(1))));
/// # Ok(()) }
/// ```
pub struct MemoryBackend<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Clone for MemoryBackend<V> {
    fn clone(&self) -> Self {
        MemoryBackend { shared: Arc::clone(&self.shared) }
    }
}

impl<V> std::fmt::Debug for MemoryBackend<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend").field("entries", &self.shared.entries.count()).finish()
    }
}

impl<V: Value> MemoryBackend<V> {
    /// Creates the backend and spawns its expiry driver on the current Tokio runtime.
    ///
    /// Fails with [`Error::Backend`] when called outside a Tokio runtime.
    pub fn new(config: MemoryConfig, sink: EventSink<V>) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::backend("memory", "the memory backend needs a Tokio runtime", e))?;
        if let Some(idle) = config.time_to_idle {
            crate::url::check_idle(idle)?;
        }
        let sink = sink.retrying(config.delivery);
        let deadlines = Arc::new(DeadlineTable::new());
        let limits: Arc<Limits> = Arc::default();
        let entries = match config.max_capacity {
            None => Entries::map(),
            Some(cap) => {
                let table = Arc::clone(&deadlines);
                let listener_limits = Arc::clone(&limits);
                let listener_sink = sink.clone();
                let cache = moka::sync::Cache::builder()
                    .max_capacity(cap)
                    .eviction_listener(move |key: Arc<Arc<str>>, old, cause| {
                        on_eviction(&table, &listener_limits, &listener_sink, &key, old, cause)
                    })
                    .build_with_hasher(Hasher::default());
                Entries::moka(cache)
            }
        };
        let cancel = CancellationToken::new();
        let idle = config.time_to_idle.map(Idle::new);
        let shared =
            Arc::new(Shared { entries, limits, idle, deadlines, sink, _driver: cancel.clone().drop_guard() });
        runtime.spawn(expiry_driver(Arc::downgrade(&shared), cancel));
        Ok(MemoryBackend { shared })
    }

    /// What `Request::Get` answers, without building a request (the handle's
    /// direct path: the key is not copied).
    pub(crate) fn get_value(&self, key: &str) -> Option<V> {
        self.shared.read_live(key, |e| e.value.clone())
    }

    /// What `Request::Set` does, without building a request.
    pub(crate) fn set_value(&self, key: &str, value: V, ttl: Option<Duration>) -> Result<()> {
        self.shared.set(Arc::from(key), value, ttl, false).map(drop)
    }

    /// [`set_value`](Self::set_value), and the `Set` event reporting it,
    /// which shares the key and the value with the new entry (a reference
    /// count each instead of a copy of the key and a clone of the value).
    pub(crate) fn set_reported(&self, key: &str, value: V, ttl: Option<Duration>) -> Result<Event<V>> {
        let kept = self.shared.set(Arc::from(key), value, ttl, true)?;
        // `set` with `keep` always returns them.
        let (key, entry) =
            kept.ok_or_else(|| Error::backend_msg("memory", "a reported set kept no entry"))?;
        Ok(Event::shared(EventKind::Set, key, entry))
    }

    /// What `Request::Throttle` does, without building a request (the
    /// handle's direct path): the verdict and the value stored, if any.
    #[cfg(feature = "ratelimit")]
    pub(crate) fn throttle_now(
        &self,
        key: &str,
        gcra: Gcra,
        cost: u32,
        value_of: fn(u64) -> Option<V>,
        tat_of: fn(&V) -> Option<u64>,
    ) -> Result<(Throttled, Option<V>)> {
        self.shared.throttle(key, gcra, cost, value_of, tat_of)
    }

    /// Number of pending deadlines in the timer table (for resource checks).
    #[doc(hidden)]
    pub fn pending_deadlines(&self) -> usize {
        self.shared.deadlines.len()
    }
}

/// The driver: one task, one loop; sleeps until the earliest deadline or until
/// a writer adds an earlier one (or asks for a compaction of dead rows),
/// expires what is due, and stops when the last backend clone is dropped or
/// the store shuts down.
async fn expiry_driver<V: Value>(shared: Weak<Shared<V>>, cancel: CancellationToken) {
    let Some(deadlines) = shared.upgrade().map(|s| Arc::clone(&s.deadlines)) else { return };
    let mut due: Vec<Row<Entry<V>>> = Vec::with_capacity(EXPIRE_BATCH);
    // Expired entries already reported, still to be removed from moka.
    let mut reported: Vec<(Arc<str>, Arc<Entry<V>>)> = Vec::new();
    loop {
        deadlines.compact_if_asked();
        let next = deadlines.next_deadline();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = deadlines.woken() => {}
            _ = sleep_until_opt(next) => {}
        }
        // Hold the store only while working, so dropping it stops this task.
        let Some(shared) = shared.upgrade() else { return };
        loop {
            // Past the bound, and more than the store holds (a burst of
            // expirations leaves its removals for after it: see below).
            if reported.len() >= MAX_REPORTED && reported.len() as u64 >= shared.entries.count() {
                for (key, e) in reported.drain(..) {
                    shared.remove_expired(&key, &e);
                }
            }
            let now = Instant::now();
            deadlines.take_due(now, EXPIRE_BATCH, &mut due);
            let now = deadlines.micros(now);
            let full = due.len() >= EXPIRE_BATCH;
            // Report first, remove later: a burst is reported on time and
            // removed when nothing else is due (measured with moka's removals,
            // 10k keys due at once: p99 lateness ~40 ms -> ~8-25 ms). A row
            // whose entry has not ended is the entry the store holds for its
            // key (every writer, remover and eviction ends the entry it takes out).
            wait_for_room(&shared.sink, due.len()).await;
            for row in due.drain(..) {
                // An access moved its deadline (time-to-idle): file it again.
                if let Err(later) = row.entry.seal_due(now) {
                    shared.rearm(row, later);
                    continue;
                }
                if row.entry.claim_end() {
                    forget_limit(&shared.limits, &row.key, &row.entry);
                    // The event shares the row's key and the entry's value.
                    let entry: Arc<dyn SharedValue<V>> = row.entry.clone();
                    shared.sink.expired_shared(Arc::clone(&row.key), entry);
                    reported.push((row.key, row.entry));
                } else {
                    deadlines.dropped_dead(deadlines.hash(&row.key), 1);
                }
            }
            if full {
                tokio::task::yield_now().await;
                continue;
            }
            // Between batches, large slots that start soon are split ahead.
            let staging = deadlines.stage(Instant::now(), STAGE_BATCH);
            if reported.is_empty() {
                if staging {
                    tokio::task::yield_now().await;
                    continue;
                }
                break;
            }
            let rest = reported.len().saturating_sub(REMOVE_BATCH);
            for (key, e) in reported.drain(rest..) {
                shared.remove_expired(&key, &e);
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Drops the row of `entry` (which ended) from `limits`, if it has one.
fn forget_limit<V>(limits: &Limits, key: &str, entry: &Arc<Entry<V>>) {
    if entry.cap() == Cap::Table {
        let mut limits = limits.lock().unwrap_or_else(|p| p.into_inner());
        if limits.get(key).is_some_and(|(_, at)| *at == Arc::as_ptr(entry) as usize) {
            limits.remove(key);
        }
    }
}

/// Waits, 1 ms at a time, while the `Expire` listeners' queues cannot take
/// `n` more events and their callbacks are making progress (the room grows
/// within [`ROOM_PATIENCE`] ms): the driver reports as fast as the callbacks
/// take events (measured, 1M keys due over 1 s: without it ~18% of the
/// events were dropped from full queues) instead of dropping them; a stuck
/// callback still has its events dropped (and counted), holding up the
/// others for at most [`ROOM_PATIENCE`] ms per batch.
///
/// The millisecond is real time, slept on a blocking thread: under a paused
/// Tokio clock (a test's `tokio::time::pause`) a timer does not fire while
/// other tasks keep the runtime busy, and the driver stopped for good while
/// a test polled for its events (seen: 1 run in 5 on a loaded machine).
async fn wait_for_room<V: Value>(sink: &EventSink<V>, n: usize) {
    let mut room = sink.room(EventKind::Expire);
    let mut idle = 0;
    while room < n && idle < ROOM_PATIENCE {
        let pause = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1)));
        if pause.await.is_err() {
            return; // the runtime is shutting down
        }
        let now = sink.room(EventKind::Expire);
        idle = if now > room { 0 } else { idle + 1 };
        room = now;
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<V: Value> Shared<V> {
    /// Removes the expired (and reported) `entry` of `key` if the store still
    /// holds it: checked under the key's write lock, so a newer value is
    /// never removed by an old deadline.
    fn remove_expired(&self, key: &str, entry: &Arc<Entry<V>>) {
        self.entries.write(self.deadlines.hash(key)).remove_if(key, entry);
    }

    /// Files again the due `row` of an entry whose deadline an access moved
    /// to `later`, if the store still holds that entry (checked under the
    /// key's write lock, so a writer that replaces it afterwards finds the
    /// new row); otherwise its remover counted the row dead and it is dropped.
    fn rearm(&self, row: Row<Entry<V>>, later: Micros) {
        let hash = self.deadlines.hash(&row.key);
        let write = self.entries.write(hash);
        if write.get(&row.key).is_some_and(|e| Arc::ptr_eq(&e, &row.entry)) && !row.entry.ended() {
            self.deadlines.replace(hash, None, Some((row.key, later, &row.entry)));
        } else {
            // Whoever took the entry out found no row to remove and counts
            // (or counted) this one dead: uncount it, it goes here.
            self.deadlines.dropped_dead(hash, 1);
        }
    }

    /// Removes the deadline row of `old` (if it has one and the table holds
    /// it) and reports its end: what a remover does after taking it out.
    fn removed(&self, key: &str, hash: u64, old: &Arc<Entry<V>>) {
        let row_removed = old.has_deadline() && self.deadlines.replace(hash, Some(old), None);
        ended(&self.deadlines, &self.sink, key, hash, old, row_removed);
        forget_limit(&self.limits, key, old);
    }

    /// Records the own TTL's deadline `own` of a new [`Cap::Table`] entry
    /// (before it is stored, under its key's write lock).
    fn record_limit(&self, key: &Arc<str>, own: Micros, entry: &Arc<Entry<V>>) {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits.insert(Arc::clone(key), (own, Arc::as_ptr(entry) as usize));
    }

    /// The own TTL's deadline of a [`Cap::Table`] entry (its current
    /// deadline if the table has no row for it: then nothing moves it).
    fn limit_of(&self, key: &str, entry: &Arc<Entry<V>>) -> Micros {
        let limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        match limits.get(key) {
            Some((own, at)) if *at == Arc::as_ptr(entry) as usize => *own,
            _ => entry.deadline(),
        }
    }

    /// Gives a live entry a new deadline of its own TTL (`NO_DEADLINE`:
    /// none) atomically under the key's write lock (with time-to-idle, its
    /// deadline is the earlier of that and `time_to_idle` from now: a write
    /// is an access); false if there is no live entry, or
    /// (`only_if_deadline`) it has no TTL of its own to drop.
    fn redeadline(&self, key: &str, own: Micros, only_if_deadline: bool) -> bool {
        let now = self.deadlines.micros(Instant::now());
        let hash = self.deadlines.hash(key);
        let mut write = self.entries.write(hash);
        let Some(old) = write.get(key).filter(|e| e.is_live(now)) else {
            return false;
        };
        if only_if_deadline && !old.has_own_deadline() {
            return false;
        }
        let key: Arc<str> = Arc::from(key);
        let (deadline, cap) = self.idle_deadline(now, own);
        let entry = Arc::new(Entry::idle(old.value.clone(), deadline, cap));
        if cap == Cap::Table {
            self.record_limit(&key, own, &entry);
        }
        write.insert(Arc::clone(&key), Arc::clone(&entry));
        let old_row = old.has_deadline().then_some(&old);
        let new_row = (deadline != NO_DEADLINE).then(|| (Arc::clone(&key), deadline, &entry));
        let row_removed = self.deadlines.replace(hash, old_row, new_row);
        drop(write);
        ended(&self.deadlines, &self.sink, &key, hash, &old, row_removed);
        forget_limit(&self.limits, &key, &old);
        true
    }

    /// Runs `f` on the live entry of `key`, under its read lock (`f` only
    /// copies out of it), as an **access** (`get`, `exists`, a guard's
    /// `get`, and any other read of an entry that counts as a use of it):
    /// with `time_to_idle`, it moves the entry's idle deadline
    /// ([`Entry::touch`]). Without it, only entries with a deadline need the
    /// clock. Reads that are not accesses (`ttl`) use [`peek_live`](Self::peek_live).
    fn read_live<R>(&self, key: &str, f: impl FnOnce(&Arc<Entry<V>>) -> R) -> Option<R> {
        let hash = self.deadlines.hash(key);
        if let Some(idle) = self.idle {
            let now = self.deadlines.micros(Instant::now());
            return self
                .entries
                .read(key, hash, |e| {
                    e.touch(now, idle.micros, idle.slack, || self.limit_of(key, e)).then(|| f(e))
                })
                .flatten();
        }
        let now = Instant::now();
        let live = |e: &Entry<V>| !e.has_deadline() || e.is_live(self.deadlines.micros(now));
        self.entries.read(key, hash, |e| live(e).then(|| f(e))).flatten()
    }

    /// [`read_live`](Self::read_live) without the access: moves no deadline.
    fn peek_live<R>(&self, key: &str, f: impl FnOnce(&Arc<Entry<V>>) -> R) -> Option<R> {
        let now = Instant::now();
        let hash = self.deadlines.hash(key);
        let live = |e: &Entry<V>| !e.has_deadline() || e.is_live(self.deadlines.micros(now));
        self.entries.read(key, hash, |e| live(e).then(|| f(e))).flatten()
    }

    /// The deadline of an entry written (or accessed by a write) at `now`
    /// whose own TTL ends at `own`: `own`, or with time-to-idle the earlier
    /// of it and `time_to_idle` from now.
    fn idle_deadline(&self, now: Micros, own: Micros) -> (Micros, Cap) {
        let Some(idle) = self.idle else {
            return (own, if own == NO_DEADLINE { Cap::None } else { Cap::Fixed });
        };
        let idle_at = now.saturating_add(idle.micros).min(NO_DEADLINE - 1);
        if own == NO_DEADLINE {
            (idle_at, Cap::None)
        } else if own <= idle_at {
            (own, Cap::Fixed)
        } else {
            (idle_at, Cap::Table)
        }
    }

    /// Calls `f` on every live entry (under a read lock: `f` only collects).
    fn for_each_live(&self, mut f: impl FnMut(&Arc<str>, &Arc<Entry<V>>)) {
        let now = self.deadlines.micros(Instant::now());
        self.entries.for_each(|k, e| {
            if e.is_live(now) {
                f(k, e)
            }
        });
    }

    /// One page of a prefix scan: the `limit` smallest live keys above
    /// `cursor` that start with `prefix`, in key order, with their values
    /// (`values`); the cursor of the next page is the page's last key when
    /// the page is full.
    ///
    /// The map is unordered, so every page reads every entry once, one
    /// shard's read lock at a time, keeping the `limit` smallest keys seen in
    /// a max-heap (bounded memory: one page). An entry live throughout the
    /// scan has a key above the previous page's last one until its page, so
    /// it is yielded exactly once, in key order.
    fn scan_page(&self, prefix: &str, cursor: Option<&str>, limit: usize, values: bool) -> Response<V> {
        let limit = limit.max(1);
        let now = self.deadlines.micros(Instant::now());
        let mut page: BinaryHeap<ByKey<V>> = BinaryHeap::with_capacity(limit);
        self.entries.for_each(|k, e| {
            // Key tests first: they need no read of the entry itself.
            if !k.starts_with(prefix) || cursor.is_some_and(|c| &**k <= c) {
                return;
            }
            let full = page.len() >= limit;
            if full && page.peek().is_some_and(|max| **k >= *max.0) {
                return;
            }
            if !e.is_live(now) {
                return;
            }
            if full {
                page.pop();
            }
            page.push(ByKey(Arc::clone(k), Arc::clone(e)));
        });
        let full = page.len() >= limit;
        let entries: Vec<(String, Option<V>)> = page
            .into_sorted_vec()
            .into_iter()
            .map(|ByKey(k, e)| (k.to_string(), values.then(|| e.value.clone())))
            .collect();
        let next = if full { entries.last().map(|(k, _)| k.clone()) } else { None };
        Response::ScanPage { entries, next }
    }

    fn deadline_for(&self, now: Instant, ttl: Option<Duration>) -> Result<Micros> {
        match ttl {
            None => Ok(NO_DEADLINE),
            Some(ttl) => now
                .checked_add(ttl)
                .map(|at| self.deadlines.micros(at))
                .ok_or(Error::InvalidTtl { ttl, reason: "deadline overflows the clock" }),
        }
    }

    /// Stores `value` under `key` (what `Request::Set` does); with `keep`,
    /// returns the key and the new entry (for the event reporting it).
    #[allow(clippy::type_complexity)]
    fn set(
        &self,
        key: Arc<str>,
        value: V,
        ttl: Option<Duration>,
        keep: bool,
    ) -> Result<Option<(Arc<str>, Arc<Entry<V>>)>> {
        let now = Instant::now();
        let hash = self.deadlines.hash(&key);
        let write = self.entries.write(hash);
        self.set_locked(write, hash, now, key, value, ttl, keep)
    }

    /// [`set`](Self::set) under the key's write lock, taken by the caller
    /// (`hash`: the key's) at `now`.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn set_locked(
        &self,
        mut write: entries::WriteGuard<'_, V>,
        hash: u64,
        now: Instant,
        key: Arc<str>,
        value: V,
        ttl: Option<Duration>,
        keep: bool,
    ) -> Result<Option<(Arc<str>, Arc<Entry<V>>)>> {
        let own = self.deadline_for(now, ttl)?;
        let (deadline, cap) = self.idle_deadline(self.deadlines.micros(now), own);
        let entry = Arc::new(Entry::idle(value, deadline, cap));
        let kept = keep.then(|| (Arc::clone(&key), Arc::clone(&entry)));
        if cap == Cap::Table {
            self.record_limit(&key, own, &entry);
        }
        // Only an entry with a deadline has a row to end or an expiry to report.
        let old = write.insert(Arc::clone(&key), Arc::clone(&entry)).filter(|e| e.has_deadline());
        if deadline == NO_DEADLINE && old.is_none() {
            return Ok(kept);
        }
        // The row is written after the entry is stored (the driver removes
        // an expired entry only if the store holds it), sharing the entry's
        // key; the old entry's row goes in the same lock of the shard.
        let new_row = (deadline != NO_DEADLINE).then(|| (Arc::clone(&key), deadline, &entry));
        let row_removed = self.deadlines.replace(hash, old.as_ref(), new_row);
        drop(write);
        if let Some(old) = old {
            ended(&self.deadlines, &self.sink, &key, hash, &old, row_removed);
            forget_limit(&self.limits, &key, &old);
        }
        Ok(kept)
    }

    /// `Request::Throttle`: reads the key's arrival time, decides and
    /// stores the new one in one hold of the key's write lock.
    fn throttle(
        &self,
        key: &str,
        gcra: Gcra,
        cost: u32,
        value_of: fn(u64) -> Option<V>,
        tat_of: fn(&V) -> Option<u64>,
    ) -> Result<(Throttled, Option<V>)> {
        if self.idle.is_some() {
            return Err(crate::gcra::idle_refused());
        }
        let hash = self.deadlines.hash(key);
        let write = self.entries.write(hash);
        // Read under the lock: checks of one key see the clock in the order they run.
        let at = Instant::now();
        let now = self.deadlines.micros(at);
        let stored = match write.get(key).filter(|e| e.is_live(now)) {
            Some(e) => Some(tat_of(&e.value).ok_or_else(|| crate::gcra::not_a_tat(key))?),
            None => None,
        };
        let (verdict, tat) = gcra.step(now, stored, cost);
        let Some(tat) = tat else { return Ok((verdict, None)) };
        let value = value_of(tat).ok_or_else(|| crate::gcra::not_a_tat(key))?;
        let ttl = crate::gcra::ttl_until(now, tat);
        self.set_locked(write, hash, at, Arc::from(key), value.clone(), ttl, false)?;
        Ok((verdict, Some(value)))
    }

    fn handle(&self, req: Request<V>) -> Result<Response<V>> {
        match req {
            Request::Get { key } => Ok(Response::Value(self.read_live(&key, |e| e.value.clone()))),
            Request::Exists { key } => Ok(Response::Bool(self.read_live(&key, |_| ()).is_some())),
            Request::Ttl { key } => {
                let now = Instant::now();
                Ok(Response::Ttl(
                    self.peek_live(&key, |e| e.has_deadline().then(|| self.deadlines.instant(e.deadline())))
                        .flatten()
                        .map(|d| d.saturating_duration_since(now)),
                ))
            }
            Request::Set { key, value, ttl, lock: _ } => {
                self.set(Arc::from(key), value, ttl, false)?;
                Ok(Response::Done)
            }
            Request::Delete { key, lock: _ } => {
                let hash = self.deadlines.hash(&key);
                let removed = self.entries.write(hash).remove(&key);
                // Ends its deadline row and reports an entry that had already expired.
                if let Some(old) = &removed {
                    self.removed(&key, hash, old);
                }
                let removed = removed.filter(|e| e.is_live(self.deadlines.micros(Instant::now())));
                Ok(Response::Deleted { removed: removed.is_some(), value: removed.map(|e| e.value.clone()) })
            }
            Request::Expire { key, ttl, lock: _ } => {
                let deadline = self.deadline_for(Instant::now(), Some(ttl))?;
                Ok(Response::Bool(self.redeadline(&key, deadline, false)))
            }
            Request::Persist { key, lock: _ } => Ok(Response::Bool(self.redeadline(&key, NO_DEADLINE, true))),
            Request::Keys => {
                let mut keys = Vec::new();
                self.for_each_live(|k, _| keys.push(k.to_string()));
                Ok(Response::Keys(keys))
            }
            Request::Items => {
                let mut items = Vec::new();
                self.for_each_live(|k, e| items.push((k.to_string(), e.value.clone())));
                Ok(Response::Items(items))
            }
            Request::Len => {
                let mut len = 0;
                self.for_each_live(|_, _| len += 1);
                Ok(Response::Len(len))
            }
            Request::Clear => {
                self.entries
                    .clear(|key| self.deadlines.hash(key), |key, hash, old| self.removed(key, hash, &old));
                self.deadlines.clear();
                Ok(Response::Done)
            }
            // In-process locks live in the LockLayer; the memory backend holds no lock state.
            Request::Lock { .. } => Ok(Response::Locked(LockGrant::local())),
            Request::Renew { .. } | Request::Unlock { .. } | Request::Shutdown => Ok(Response::Done),
            // Atomic through the lock layer (see `atomic.rs`): no step of its own needed.
            Request::CompareAndSet { .. } | Request::Incr { .. } => Ok(Response::Unsupported),
            Request::GetMany { keys } => Ok(Response::Values(self.get_many(&keys))),
            Request::SetMany { entries, ttl } => self.set_many(entries, ttl).map(|()| Response::Done),
            Request::DeleteMany { keys } => Ok(Response::DeletedMany(self.delete_many(&keys))),
            Request::ScanPage { prefix, cursor, limit, values } => {
                Ok(self.scan_page(&prefix, cursor.as_deref(), limit, values))
            }
            Request::Throttle { key, gcra, cost, value_of, tat_of } => {
                let (verdict, stored) = self.throttle(&key, gcra, cost, value_of, tat_of)?;
                Ok(Response::Throttled { verdict, stored })
            }
        }
    }
}

/// A scan page's entry, ordered by its key alone (for the page's max-heap).
struct ByKey<V>(Arc<str>, Arc<Entry<V>>);

impl<V> PartialEq for ByKey<V> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<V> Eq for ByKey<V> {}

impl<V> PartialOrd for ByKey<V> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<V> Ord for ByKey<V> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl<V: Value> tower::Service<Request<V>> for MemoryBackend<V> {
    type Response = Response<V>;
    type Error = Error;
    type Future = Ready<Result<Response<V>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<V>) -> Self::Future {
        ready(self.shared.handle(req))
    }
}

#[cfg(test)]
mod tests {
    use super::OPTIONS;
    use crate::delivery::delivery_options;
    use crate::url::check_documented;

    /// README, rustdoc and the parser list the same options with the same defaults.
    #[test]
    fn documented_options_are_the_parsed_ones() {
        let options: Vec<_> = OPTIONS.iter().copied().chain(delivery_options()).collect();
        check_documented(include_str!("../../../README.md"), "### Memory", &options, &[]);
        check_documented(include_str!("mod.rs"), "Settings of the memory backend", &options, &[]);
    }
}
