//! The table of loads in flight (one per key), shared by a store's handles;
//! [`single_flight`](super::single_flight) runs the loads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};

use crate::Value;
use crate::error::Error;

/// One load's outcome, shared by every caller waiting on it.
pub(crate) type Outcome<V> = std::result::Result<V, Arc<Error>>;
pub(crate) type Load<V> = Shared<BoxFuture<'static, Outcome<V>>>;

/// The loads in flight in this process, one per key.
///
/// Entries hold the load weakly: the callers awaiting it own it. If every
/// caller gives up (drops its future), the load is dropped with them — its
/// lock guard releases the key — and the next caller starts a new one.
pub(crate) struct Flights<V> {
    /// A `std` mutex (no `.await` while held): held only to look up or swap an entry.
    table: Mutex<HashMap<String, Flight<V>>>,
    next_id: AtomicU64,
}

struct Flight<V> {
    id: u64,
    load: WeakShared<BoxFuture<'static, Outcome<V>>>,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Flights { table: Mutex::default(), next_id: AtomicU64::new(0) }
    }
}

impl<V: Value> Flights<V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight<V>>> {
        // No code path panics while holding it; a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the load in flight for `key`, or starts one with `start(id)`.
    pub(crate) fn join(
        &self,
        key: &str,
        start: impl FnOnce(u64) -> BoxFuture<'static, Outcome<V>>,
    ) -> Load<V> {
        let mut table = self.lock();
        if let Some(load) = table.get(key).and_then(|f| f.load.upgrade()) {
            return load;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let load = start(id).shared();
        // Invariant: `downgrade` is `None` only once the load has completed, and it has not been polled.
        let weak = load.downgrade().expect("a fresh load is not complete");
        table.insert(key.to_owned(), Flight { id, load: weak });
        load
    }

    /// Removes the entry of load `id` (a newer load may have replaced it).
    pub(crate) fn finish(&self, key: &str, id: u64) {
        let mut table = self.lock();
        if table.get(key).is_some_and(|f| f.id == id) {
            table.remove(key);
        }
    }
}
