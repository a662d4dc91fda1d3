//! Relays: what carries a store's events to the other processes sharing it
//! (the Redis pub/sub feed, the SQLite change feed), and the bounded outbox
//! between the writers and a relay's sending task. The backends' feeds
//! implement [`Relay`]; the dispatcher calls it.

#[cfg(any(feature = "sqlite", feature = "redis"))]
use std::sync::Arc;

use crate::event::Event;

/// Carries a store's events to the other processes sharing it and theirs
/// back to its watches (the Redis pub/sub feed, the SQLite change feed).
pub(crate) trait Relay<V>: Send + Sync {
    /// Sends one event of this process to the others; must never block.
    fn publish(&self, event: &Event<V>);
    /// Stops relaying (the store shut down or was dropped); the future
    /// completes once the events published before were handed over.
    fn close(&self) -> futures::future::BoxFuture<'static, ()>;
}

/// What a relay's sending task receives: an item to send, or the request to
/// finish (acknowledged once everything queued before it was sent).
#[cfg(any(feature = "sqlite", feature = "redis"))]
pub(crate) enum Outgoing<T> {
    /// One event, ready to send.
    Item(T),
    /// Finish: acknowledge, then stop.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// The bounded queue between a relay (filled by writers, never blocking)
/// and its sending task.
#[cfg(any(feature = "sqlite", feature = "redis"))]
pub(crate) struct Outbox<T> {
    tx: tokio::sync::mpsc::Sender<Outgoing<T>>,
    counters: Arc<crate::stats::Counters>,
}

#[cfg(any(feature = "sqlite", feature = "redis"))]
impl<T: Send + 'static> Outbox<T> {
    /// An outbox of `capacity` items; a full one drops items and counts them in `events_dropped`.
    pub(crate) fn new(
        capacity: usize,
        counters: Arc<crate::stats::Counters>,
    ) -> (Self, tokio::sync::mpsc::Receiver<Outgoing<T>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (Outbox { tx, counters }, rx)
    }

    /// Queues an item without waiting.
    pub(crate) fn push(&self, item: T) {
        if self.tx.try_send(Outgoing::Item(item)).is_err() {
            self.counters.events_dropped.incr();
        }
    }

    /// Completes once the sending task handled every item queued before.
    pub(crate) fn close(&self) -> futures::future::BoxFuture<'static, ()> {
        let tx = self.tx.clone();
        Box::pin(async move {
            let (ack, done) = tokio::sync::oneshot::channel();
            if tx.send(Outgoing::Close(ack)).await.is_ok() {
                let _ = done.await;
            }
        })
    }
}
