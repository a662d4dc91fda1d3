//! Export of the [`Stats`] counters through the [`metrics`](https://docs.rs/metrics)
//! facade (cargo feature `metrics`).
//!
//! livedict keeps its counters itself (see [`LiveDict::stats`]); this module
//! copies them into whatever `metrics` recorder the application installed
//! (Prometheus, StatsD, …), as monotonic counters set to the store's totals
//! (`Counter::absolute`), each labelled `store = <the name you give>` so several
//! stores in one process stay apart. It keeps no state of its own: call
//! [`LiveDict::export_metrics`] whenever you like (e.g. before a scrape), or let
//! [`LiveDict::spawn_metrics_exporter`] call it on an interval. From the
//! blocking facade, call `d.as_async().export_metrics(..)`.
//!
//! | metric | [`Stats`] field |
//! | --- | --- |
//! | `livedict_hits_total` | `hits` |
//! | `livedict_misses_total` | `misses` |
//! | `livedict_sets_total` | `sets` |
//! | `livedict_deletes_total` | `deletes` |
//! | `livedict_expirations_total` | `expirations` |
//! | `livedict_evictions_total` | `evictions` |
//! | `livedict_events_delivered_total` | `events_delivered` |
//! | `livedict_events_dropped_total` | `events_dropped` |
//! | `livedict_callbacks_panicked_total` | `callbacks_panicked` |
//! | `livedict_callbacks_failed_total` | `callbacks_failed` |
//! | `livedict_callbacks_timed_out_total` | `callbacks_timed_out` |
//! | `livedict_lock_waits_total` | `lock_waits` |
//! | `livedict_lock_timeouts_total` | `lock_timeouts` |
//! | `livedict_expirations_redelivered_total` | `expirations_redelivered` |
//! | `livedict_expirations_abandoned_total` | `expirations_abandoned` |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
//! let d = livedict::LiveDict::<u32>::open("memory://").await?;
//! livedict::metrics::describe(); // once, after installing your recorder
//! d.set("a", 1).await?;
//! d.export_metrics("sessions"); // livedict_sets_total{store="sessions"} = 1
//! # Ok(()) }
//! ```

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::Value;
use crate::error::{Error, Result};
use crate::handle::dict::{Inner, LiveDict};
use crate::stats::Stats;

/// Every exported metric: its name, and what it counts (its description).
pub const COUNTERS: [(&str, &str); 15] = [
    ("livedict_hits_total", "reads that found a live value"),
    ("livedict_misses_total", "reads that found nothing"),
    ("livedict_sets_total", "values stored"),
    ("livedict_deletes_total", "deletes that removed something"),
    ("livedict_expirations_total", "values removed at their deadline"),
    ("livedict_evictions_total", "values evicted for capacity"),
    ("livedict_events_delivered_total", "events handed to callbacks (one per callback per event)"),
    ("livedict_events_dropped_total", "events dropped: a callback queue was full or the store shut down"),
    ("livedict_callbacks_panicked_total", "callback invocations that panicked (caught)"),
    ("livedict_callbacks_failed_total", "fallible callback invocations that returned an error"),
    ("livedict_callbacks_timed_out_total", "callback invocations abandoned at their timeout"),
    ("livedict_lock_waits_total", "lock acquisitions or writes that waited for another holder"),
    ("livedict_lock_timeouts_total", "lock acquisitions that gave up with LockTimeout"),
    ("livedict_expirations_redelivered_total", "expirations delivered again (at-least-once delivery)"),
    ("livedict_expirations_abandoned_total", "expirations dropped after expire_max_attempts deliveries"),
];

/// The values of `stats`, in the order of [`COUNTERS`]. The exhaustive
/// destructuring makes a new `Stats` field a compile error here until it is exported.
fn values(stats: &Stats) -> [u64; 15] {
    let Stats {
        hits,
        misses,
        sets,
        deletes,
        expirations,
        evictions,
        events_delivered,
        events_dropped,
        callbacks_panicked,
        callbacks_failed,
        callbacks_timed_out,
        lock_waits,
        lock_timeouts,
        expirations_redelivered,
        expirations_abandoned,
    } = *stats;
    [
        hits,
        misses,
        sets,
        deletes,
        expirations,
        evictions,
        events_delivered,
        events_dropped,
        callbacks_panicked,
        callbacks_failed,
        callbacks_timed_out,
        lock_waits,
        lock_timeouts,
        expirations_redelivered,
        expirations_abandoned,
    ]
}

/// Describes every livedict metric (unit: count) to the current recorder.
/// Optional; call it once after installing the recorder.
pub fn describe() {
    for (name, help) in COUNTERS {
        ::metrics::describe_counter!(name, ::metrics::Unit::Count, help);
    }
}

/// Sets every livedict counter of the current recorder, labelled `store`, to the totals in `stats`.
///
/// ```
/// livedict::metrics::record(&livedict::Stats::default(), "sessions");
/// ```
pub fn record(stats: &Stats, store: &str) {
    for ((name, _), value) in COUNTERS.iter().zip(values(stats)) {
        ::metrics::counter!(*name, "store" => store.to_owned()).absolute(value);
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
impl<V: Value> LiveDict<V> {
    /// Copies this store's [`stats`](LiveDict::stats) into the `metrics`
    /// facade's current recorder (cargo feature `metrics`): each counter of
    /// [`metrics::COUNTERS`](crate::handle::metrics::COUNTERS), labelled `store`, is
    /// set to the store's total. Cheap (twelve counter updates); call it as
    /// often as you like.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// let d = livedict::LiveDict::<u32>::open("memory://").await?;
    /// d.get("missing").await?;
    /// d.export_metrics("cache"); // livedict_misses_total{store="cache"} = 1
    /// # Ok(()) }
    /// ```
    pub fn export_metrics(&self, store: &str) {
        record(&self.stats(), store);
    }

    /// Spawns a Tokio task that calls [`export_metrics`](LiveDict::export_metrics)
    /// every `every` (first at once). It ends, at its first tick (after a last
    /// export) once the store is shut down, or once every handle to it is dropped (it does not keep
    /// the store alive). Fails with [`Error::InvalidConfig`] for a zero interval
    /// and [`Error::Backend`] outside a Tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use std::time::Duration;
    /// let d = livedict::LiveDict::<u32>::open("memory://").await?;
    /// let exporter = d.spawn_metrics_exporter("cache", Duration::from_secs(10))?;
    /// // … serve; the exporter ends at its first tick after `d.shutdown()`,
    /// // or stop it at once:
    /// exporter.abort();
    /// # Ok(()) }
    /// ```
    pub fn spawn_metrics_exporter(
        &self,
        store: &str,
        every: Duration,
    ) -> Result<tokio::task::JoinHandle<()>> {
        if every.is_zero() {
            return Err(Error::InvalidConfig("metrics export interval must be non-zero".into()));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::backend("memory", "the metrics exporter needs a Tokio runtime", e))?;
        let weak: Weak<Inner<V>> = Arc::downgrade(&self.inner);
        let store = store.to_owned();
        Ok(runtime.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let dict = LiveDict { inner };
                dict.export_metrics(&store);
                if dict.is_closed() {
                    return;
                }
            }
        }))
    }
}
