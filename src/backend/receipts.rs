//! The acknowledgements of leased expirations (`expire_delivery=at_least_once`)
//! on their way from the callbacks to the store: each settled receipt is
//! queued here, and the backend's acker task writes them in batches (one
//! SQLite transaction, one Redis script per shard).

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::event::EventSink;
use crate::event::receipt::Settle;

/// Settled receipts waiting to be written (`T`: what identifies one lease, and whether it succeeded).
pub(crate) struct Receipts<T> {
    /// The queued receipts, and how many were ever queued.
    queue: Mutex<(Vec<T>, u64)>,
    wake: Notify,
    /// How many queued receipts the acker has written (or given up on).
    written: watch::Sender<u64>,
}

impl<T: Send + 'static> Receipts<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Receipts { queue: Mutex::default(), wake: Notify::new(), written: watch::Sender::new(0) })
    }

    /// The settle callback of one leased expiration: queues `make(ok)`. Holds
    /// the queue weakly, so a store that is gone does not live on in its
    /// events (an acknowledgement that finds it gone is lost; the expiration
    /// is delivered again when its lease runs out).
    pub(crate) fn settle(self: &Arc<Self>, make: impl FnOnce(bool) -> T + Send + 'static) -> Settle {
        let queue: Weak<Self> = Arc::downgrade(self);
        Box::new(move |ok| {
            if let Some(queue) = queue.upgrade() {
                let mut q = queue.queue.lock().unwrap_or_else(|p| p.into_inner());
                q.0.push(make(ok));
                q.1 += 1;
                drop(q);
                queue.wake.notify_one();
            }
        })
    }

    /// Waits for receipts (or `stop`), then takes every queued one. Returns
    /// them, the mark to pass to [`Self::written`] once they are written,
    /// and whether `stop` fired (write the batch, then finish).
    pub(crate) async fn next(&self, stop: &CancellationToken) -> (Vec<T>, u64, bool) {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = self.wake.notified() => false,
        };
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut q.0), q.1, stopping)
    }

    /// The acker wrote every receipt up to `mark` (see [`Self::next`]).
    pub(crate) fn written(&self, mark: u64) {
        self.written.send_replace(mark);
    }

    /// Has [`LiveDict::shutdown`](crate::LiveDict::shutdown), once the
    /// callbacks drained, wait until every receipt queued by then is written,
    /// so a clean shutdown leaves nothing to redeliver.
    pub(crate) fn flush_at_shutdown<V: 'static>(self: &Arc<Self>, sink: &EventSink<V>) {
        let receipts = Arc::clone(self);
        sink.after_drain(move || {
            let receipts = Arc::clone(&receipts);
            Box::pin(async move { receipts.flush().await })
        });
    }

    /// Waits until every receipt queued so far is written (the dispatcher bounds the wait).
    async fn flush(&self) {
        let target = self.queue.lock().unwrap_or_else(|p| p.into_inner()).1;
        self.wake.notify_one();
        let mut written = self.written.subscribe();
        let _ = written.wait_for(|&w| w >= target).await;
    }
}
