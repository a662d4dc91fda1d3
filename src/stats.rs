//! Operation and event counters, and their snapshot [`Stats`].

use std::sync::atomic::{AtomicU64, Ordering};

use crate::stripe::{STRIPES, stripe};

/// A snapshot of a store's counters since it was opened.
///
/// Counters only grow. Hits, misses, sets and deletes are counted by the
/// [`CallbackLayer`](crate::layer::CallbackLayer), lock waits and timeouts by
/// the [`LockLayer`](crate::layer::LockLayer) (when built with
/// [`with_stats_of`](crate::layer::LockLayer::with_stats_of), as the default
/// stack is), expirations and evictions by the backend, and the event
/// counters by the callback sandbox. With the cargo feature `metrics`,
/// `LiveDict::export_metrics` copies them into the `metrics` facade.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// let d = livedict::LiveDict::<u32>::open("memory://").await?;
/// d.set("a", 1).await?;
/// d.get("a").await?;
/// d.get("b").await?;
/// let s = d.stats();
/// assert_eq!((s.sets, s.hits, s.misses), (1, 1, 1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Reads that found a live value.
    pub hits: u64,
    /// Reads that found nothing.
    pub misses: u64,
    /// Values stored.
    pub sets: u64,
    /// Deletes that removed something.
    pub deletes: u64,
    /// Values removed at their deadline.
    pub expirations: u64,
    /// Values evicted for capacity.
    pub evictions: u64,
    /// Events handed to callbacks (one per callback per event).
    pub events_delivered: u64,
    /// Events dropped because a callback's queue was full or the store shut down.
    pub events_dropped: u64,
    /// Callback invocations that panicked (caught).
    pub callbacks_panicked: u64,
    /// Invocations of fallible callbacks ([`Callback::fallible`](crate::Callback::fallible),
    /// [`Callback::fallible_async`](crate::Callback::fallible_async)) that returned `Err`.
    pub callbacks_failed: u64,
    /// Callback invocations abandoned at their timeout.
    pub callbacks_timed_out: u64,
    /// Lock acquisitions or writes that had to wait for another holder.
    pub lock_waits: u64,
    /// Lock acquisitions that gave up with `LockTimeout`.
    pub lock_timeouts: u64,
    /// Expirations delivered again (attempt 2 or later) under
    /// [`Delivery::AtLeastOnce`](crate::Delivery::AtLeastOnce): a callback failed
    /// or the process that claimed them died before acknowledging them.
    pub expirations_redelivered: u64,
    /// Expirations dropped after `expire_max_attempts` unacknowledged deliveries.
    pub expirations_abandoned: u64,
}

/// A counter striped over cache lines so that threads do not contend on one
/// atomic (measured: a single shared `AtomicU64` halves 2-thread get throughput).
#[derive(Default)]
pub(crate) struct Counter {
    stripes: [Padded; STRIPES],
}

#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Counter {
    /// Adds one.
    pub(crate) fn incr(&self) {
        self.stripes[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` (a batch's count).
    pub(crate) fn add(&self, n: u64) {
        if n > 0 {
            self.stripes[stripe()].0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The current total.
    pub(crate) fn get(&self) -> u64 {
        self.stripes.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// The live counters shared by the backend, the layers and the dispatcher of one store.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) sets: Counter,
    pub(crate) deletes: Counter,
    pub(crate) expirations: Counter,
    pub(crate) evictions: Counter,
    pub(crate) events_delivered: Counter,
    pub(crate) events_dropped: Counter,
    pub(crate) callbacks_panicked: Counter,
    pub(crate) callbacks_failed: Counter,
    pub(crate) callbacks_timed_out: Counter,
    pub(crate) lock_waits: Counter,
    pub(crate) lock_timeouts: Counter,
    pub(crate) expirations_redelivered: Counter,
    pub(crate) expirations_abandoned: Counter,
}

impl Counters {
    /// A consistent-enough snapshot (each counter read once).
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            sets: self.sets.get(),
            deletes: self.deletes.get(),
            expirations: self.expirations.get(),
            evictions: self.evictions.get(),
            events_delivered: self.events_delivered.get(),
            events_dropped: self.events_dropped.get(),
            callbacks_panicked: self.callbacks_panicked.get(),
            callbacks_failed: self.callbacks_failed.get(),
            callbacks_timed_out: self.callbacks_timed_out.get(),
            lock_waits: self.lock_waits.get(),
            lock_timeouts: self.lock_timeouts.get(),
            expirations_redelivered: self.expirations_redelivered.get(),
            expirations_abandoned: self.expirations_abandoned.get(),
        }
    }
}
