//! The acknowledgements of leased expirations (`expire_delivery=at_least_once`)
//! on their way from the callbacks to the store: each settled receipt is
//! queued here, and the backend's acker task writes them in batches (one
//! SQLite transaction, one Redis script per shard).

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::event::receipt::Settle;

/// Settled receipts waiting to be written (`T`: what identifies one lease, and whether it succeeded).
pub(crate) struct Receipts<T> {
    queue: Mutex<Vec<T>>,
    wake: Notify,
}

impl<T: Send + 'static> Receipts<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Receipts { queue: Mutex::new(Vec::new()), wake: Notify::new() })
    }

    /// The settle callback of one leased expiration: queues `make(ok)`. Holds
    /// the queue weakly, so a store that is gone does not live on in its
    /// events (an acknowledgement that finds it gone is lost; the expiration
    /// is delivered again when its lease runs out).
    pub(crate) fn settle(self: &Arc<Self>, make: impl FnOnce(bool) -> T + Send + 'static) -> Settle {
        let queue: Weak<Self> = Arc::downgrade(self);
        Box::new(move |ok| {
            if let Some(queue) = queue.upgrade() {
                queue.queue.lock().unwrap_or_else(|p| p.into_inner()).push(make(ok));
                queue.wake.notify_one();
            }
        })
    }

    /// Waits for receipts (or `stop`), then takes every queued one. The
    /// flag is true once `stop` fired: write the batch, then finish.
    pub(crate) async fn next(&self, stop: &CancellationToken) -> (Vec<T>, bool) {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = self.wake.notified() => false,
        };
        (std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner())), stopping)
    }
}
