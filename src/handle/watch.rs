//! [`LiveDict::watch`]: a live stream of the store's events (the stream
//! itself is `event/watch.rs`).

use crate::Value;
use crate::error::Result;
use crate::event::watch::{Watch, WatchFilter};

use super::dict::LiveDict;

impl<V: Value> LiveDict<V> {
    /// A live stream of this store's events that match `filter`, for async
    /// consumers (alongside or instead of callbacks).
    ///
    /// Each watch sees the matching events in the order the store dispatched
    /// them (the order callbacks see them), from the moment it was opened.
    /// It queues up to [`WatchFilter::capacity`] events; a consumer that falls
    /// further behind never slows the store: the skipped events are counted
    /// and reported as one [`WatchItem::Lagged`](crate::WatchItem::Lagged) at the place they were
    /// skipped. The stream ends when the store is shut down or dropped.
    ///
    /// **Scope:** events of this process (writes through this store's
    /// handles, expirations and evictions its driver reports). On Redis and
    /// SQLite with `share_events=true` in every process's URL, also the
    /// `Set`, `Delete`, `Expire` and `Evict` events of the other processes on
    /// the namespace or file (see
    /// [`RedisBackend::share_events`](crate::backend::RedisBackend::share_events),
    /// [`SqliteBackend::share_events`](crate::backend::SqliteBackend::share_events));
    /// each expiration then reaches every watch once. Fails with
    /// [`Error::Closed`](crate::Error::Closed) after shutdown.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use futures::StreamExt;
    /// use livedict::{EventKind, LiveDict, WatchFilter, WatchItem};
    /// let d = LiveDict::<u32>::open("memory://").await?;
    /// let mut orders = d.watch(WatchFilter::kinds([EventKind::Set, EventKind::Delete]).prefix("order:"))?;
    /// d.set("order:1", 10).await?;
    /// d.set("user:1", 5).await?; // other prefix: not streamed
    /// d.delete("order:1").await?;
    /// let mut seen = Vec::new();
    /// while let Some(WatchItem::Event(ev)) = orders.next().await {
    ///     seen.push((ev.kind(), ev.key().to_string()));
    ///     if seen.len() == 2 { break; }
    /// }
    /// assert_eq!(seen, [(EventKind::Set, "order:1".to_string()), (EventKind::Delete, "order:1".to_string())]);
    /// # Ok(()) }
    /// ```
    pub fn watch(&self, filter: WatchFilter) -> Result<Watch<V>> {
        if self.is_closed() {
            return Err(crate::Error::Closed);
        }
        self.inner.dispatcher.watch(filter)
    }
}
