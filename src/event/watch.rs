//! Live event streams: [`LiveDict::watch`](crate::LiveDict::watch) returns a
//! [`Watch`], a `Stream` of the events matching a [`WatchFilter`].
//!
//! Watches are fed from the same place callbacks are: the dispatcher
//! (`dispatch.rs`) hands every event it dispatches
//! to each watch whose filter matches. Each watch has its own bounded queue,
//! so a slow consumer never blocks a writer or another watch: when its queue
//! is full, events are skipped and the stream yields [`WatchItem::Lagged`]
//! with their number, at the place where they were skipped.
//!
//! Events are those of this process's store handle (and its clones): writes
//! made here and expirations/evictions its expiry driver reports. With
//! `share_events=true` in the URL of every process sharing a Redis namespace
//! or an SQLite file, the events of the other processes reach the stream too
//! (Redis: the namespace's pub/sub channel, see
//! [`RedisBackend::share_events`](crate::backend::RedisBackend::share_events);
//! SQLite: a change feed table, see
//! [`SqliteBackend::share_events`](crate::backend::SqliteBackend::share_events)).
//! Without it, writes of other processes are not streamed, and an expiration
//! is streamed by whichever process claimed it (exactly once in total).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};

use futures::Stream;

use crate::event::{Event, EventKind};

/// Which events a [`Watch`] receives: a set of kinds and an optional key
/// prefix, and how many events it may queue.
///
/// ```
/// use livedict::{EventKind, WatchFilter};
/// let all = WatchFilter::new(); // every kind, every key
/// let sessions = WatchFilter::kinds([EventKind::Set, EventKind::Expire])
///     .prefix("session:")
///     .capacity(256);
/// assert!(sessions.matches(EventKind::Expire, "session:42"));
/// assert!(!sessions.matches(EventKind::Get, "session:42"));
/// assert!(!sessions.matches(EventKind::Set, "user:1"));
/// # let _ = all;
/// ```
#[derive(Debug, Clone)]
pub struct WatchFilter {
    kinds: [bool; EventKind::ALL.len()],
    prefix: Option<String>,
    capacity: usize,
}

/// The default [`WatchFilter::capacity`].
const DEFAULT_CAPACITY: usize = 1024;

impl Default for WatchFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchFilter {
    /// Every kind (including `Get`, one event per hit), every key.
    ///
    /// ```
    /// use livedict::{EventKind, WatchFilter};
    /// assert!(WatchFilter::new().matches(EventKind::Get, "any"));
    /// ```
    pub fn new() -> Self {
        WatchFilter { kinds: [true; EventKind::ALL.len()], prefix: None, capacity: DEFAULT_CAPACITY }
    }

    /// Only events of these kinds, every key.
    ///
    /// ```
    /// use livedict::{EventKind, WatchFilter};
    /// let f = WatchFilter::kinds([EventKind::Expire, EventKind::Evict]);
    /// assert!(f.matches(EventKind::Evict, "k") && !f.matches(EventKind::Set, "k"));
    /// ```
    pub fn kinds(kinds: impl IntoIterator<Item = EventKind>) -> Self {
        let mut filter = WatchFilter { kinds: [false; EventKind::ALL.len()], ..Self::new() };
        for kind in kinds {
            filter.kinds[kind.index()] = true;
        }
        filter
    }

    /// Only keys starting with `prefix`.
    ///
    /// ```
    /// use livedict::{EventKind, WatchFilter};
    /// let f = WatchFilter::new().prefix("user:");
    /// assert!(f.matches(EventKind::Set, "user:7") && !f.matches(EventKind::Set, "order:7"));
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// How many events the watch may hold before it skips events and
    /// reports [`WatchItem::Lagged`] (default 1024, at least 1).
    ///
    /// ```
    /// let f = livedict::WatchFilter::new().capacity(64);
    /// # let _ = f;
    /// ```
    pub fn capacity(mut self, events: usize) -> Self {
        self.capacity = events.max(1);
        self
    }

    /// Whether an event of `kind` on `key` passes this filter.
    ///
    /// ```
    /// use livedict::{EventKind, WatchFilter};
    /// assert!(WatchFilter::kinds([EventKind::Set]).prefix("a").matches(EventKind::Set, "ab"));
    /// ```
    pub fn matches(&self, kind: EventKind, key: &str) -> bool {
        self.kinds[kind.index()] && self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
    }

    /// The kinds this filter lets through.
    pub(crate) fn wanted_kinds(&self) -> impl Iterator<Item = EventKind> + '_ {
        EventKind::ALL.into_iter().filter(|k| self.kinds[k.index()])
    }
}

/// One item of a [`Watch`] stream.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use livedict::{WatchFilter, WatchItem};
/// let d = livedict::LiveDict::<u32>::open("memory://").await?;
/// let mut w = d.watch(WatchFilter::new().capacity(1))?;
/// d.set("a", 1).await?;
/// d.set("b", 2).await?; // the queue is full: skipped
/// assert!(matches!(w.try_recv(), Some(WatchItem::Event(ev)) if ev.key() == "a"));
/// assert!(matches!(w.try_recv(), Some(WatchItem::Lagged(1))));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub enum WatchItem<V> {
    /// An event that matched the filter.
    Event(Event<V>),
    /// The consumer fell behind: this many matching events were skipped here
    /// (after the items before this one, before the items after it).
    Lagged(u64),
}

impl<V> WatchItem<V> {
    /// The event, if this item is one.
    ///
    /// ```
    /// use livedict::{Event, EventKind, WatchItem};
    /// let item = WatchItem::Event(Event::new(EventKind::Set, "k", Some(1)));
    /// assert_eq!(item.event().map(|e| e.key()), Some("k"));
    /// assert!(WatchItem::<u32>::Lagged(3).event().is_none());
    /// ```
    pub fn event(&self) -> Option<&Event<V>> {
        match self {
            WatchItem::Event(ev) => Some(ev),
            WatchItem::Lagged(_) => None,
        }
    }
}

/// A live stream of the events matching a [`WatchFilter`]; see [`LiveDict::watch`](crate::LiveDict::watch).
///
/// Implements [`futures::Stream`]; [`recv`](Watch::recv) is the same without
/// `StreamExt`. The stream ends (after yielding what it holds) when the store
/// is shut down or dropped. Dropping the watch unsubscribes it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use futures::StreamExt;
/// use livedict::{EventKind, WatchFilter};
/// let d = livedict::LiveDict::<u32>::open("memory://").await?;
/// let w = d.watch(WatchFilter::kinds([EventKind::Set]))?;
/// d.set("a", 1).await?;
/// d.set("b", 2).await?;
/// d.shutdown().await?;
/// let keys: Vec<String> = w.filter_map(|i| async move { i.event().map(|e| e.key().to_string()) }).collect().await;
/// assert_eq!(keys, ["a", "b"]);
/// # Ok(()) }
/// ```
pub struct Watch<V: Send + Sync + 'static> {
    queue: Arc<WatchQueue<V>>,
    owner: Arc<dyn WatchOwner<V>>,
}

/// Who hands a watch its events and is told when it is dropped (the
/// dispatcher, which keeps count of the kinds anyone listens to).
pub(crate) trait WatchOwner<V>: Send + Sync {
    /// Forgets a dropped watch's queue.
    fn unwatch(&self, queue: &Arc<WatchQueue<V>>);
}

impl<V: Send + Sync + 'static> fmt::Debug for Watch<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").field("filter", &self.queue.filter).finish()
    }
}

impl<V: Send + Sync + 'static> Watch<V> {
    pub(crate) fn new(queue: Arc<WatchQueue<V>>, owner: Arc<dyn WatchOwner<V>>) -> Self {
        Watch { queue, owner }
    }

    /// The filter this watch was opened with.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{EventKind, WatchFilter};
    /// let d = livedict::LiveDict::<u32>::open("memory://").await?;
    /// let w = d.watch(WatchFilter::kinds([EventKind::Delete]))?;
    /// assert!(!w.filter().matches(EventKind::Set, "k"));
    /// # Ok(()) }
    /// ```
    pub fn filter(&self) -> &WatchFilter {
        &self.queue.filter
    }

    /// The next item; `None` once the store is shut down and the queue is empty.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{EventKind, WatchFilter, WatchItem};
    /// let d = livedict::LiveDict::<u32>::open("memory://").await?;
    /// let mut w = d.watch(WatchFilter::kinds([EventKind::Set]))?;
    /// d.set("a", 1).await?;
    /// let Some(WatchItem::Event(ev)) = w.recv().await else { panic!() };
    /// assert_eq!((ev.key(), ev.value()), ("a", Some(&1)));
    /// # Ok(()) }
    /// ```
    pub async fn recv(&mut self) -> Option<WatchItem<V>> {
        std::future::poll_fn(|cx| self.queue.poll_next(cx)).await
    }

    /// The next item if one is queued, without waiting.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::WatchFilter;
    /// let d = livedict::LiveDict::<u32>::open("memory://").await?;
    /// let mut w = d.watch(WatchFilter::new())?;
    /// assert!(w.try_recv().is_none());
    /// d.set("a", 1).await?;
    /// assert_eq!(w.try_recv().and_then(|i| i.event().map(|e| e.key().to_string())).as_deref(), Some("a"));
    /// # Ok(()) }
    /// ```
    pub fn try_recv(&mut self) -> Option<WatchItem<V>> {
        self.queue.try_pop()
    }
}

impl<V: Send + Sync + 'static> Stream for Watch<V> {
    type Item = WatchItem<V>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.queue.poll_next(cx)
    }
}

impl<V: Send + Sync + 'static> Drop for Watch<V> {
    fn drop(&mut self) {
        self.owner.unwatch(&self.queue);
    }
}

/// The bounded queue of one watch, filled by emitters and drained by the stream.
pub(crate) struct WatchQueue<V> {
    filter: WatchFilter,
    /// A `std` mutex: emitters only push and never `.await` while holding it.
    state: Mutex<QueueState<V>>,
}

struct QueueState<V> {
    items: VecDeque<WatchItem<V>>,
    /// `Event` items in `items` (a trailing `Lagged` marker does not count).
    events: usize,
    waker: Option<Waker>,
    closed: bool,
}

impl<V> WatchQueue<V> {
    fn new(filter: WatchFilter) -> Self {
        let state = QueueState { items: VecDeque::new(), events: 0, waker: None, closed: false };
        WatchQueue { filter, state: Mutex::new(state) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState<V>> {
        // No code path panics while holding it; a poisoned queue is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `event`, or counts it into a `Lagged` marker when full. Never blocks.
    fn push(&self, event: &Event<V>) {
        let waker = {
            let mut st = self.state();
            if st.closed {
                return;
            }
            if st.events < self.filter.capacity {
                st.items.push_back(WatchItem::Event(event.clone()));
                st.events += 1;
            } else if let Some(WatchItem::Lagged(n)) = st.items.back_mut() {
                *n += 1;
            } else {
                st.items.push_back(WatchItem::Lagged(1));
            }
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn close(&self) {
        let waker = {
            let mut st = self.state();
            st.closed = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn pop(st: &mut QueueState<V>) -> Option<WatchItem<V>> {
        let item = st.items.pop_front()?;
        if matches!(item, WatchItem::Event(_)) {
            st.events -= 1;
        }
        Some(item)
    }

    fn try_pop(&self) -> Option<WatchItem<V>> {
        Self::pop(&mut self.state())
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<WatchItem<V>>> {
        let mut st = self.state();
        match Self::pop(&mut st) {
            Some(item) => Poll::Ready(Some(item)),
            None if st.closed => Poll::Ready(None),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The watches of one dispatcher.
pub(crate) struct Watchers<V> {
    queues: RwLock<Vec<Arc<WatchQueue<V>>>>,
    /// `queues.len()`, read without the lock so emitting costs one atomic load when nobody watches.
    count: AtomicUsize,
}

impl<V> Default for Watchers<V> {
    fn default() -> Self {
        Watchers { queues: RwLock::default(), count: AtomicUsize::new(0) }
    }
}

impl<V> Watchers<V> {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<WatchQueue<V>>>> {
        self.queues.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a watch with `filter`.
    pub(crate) fn add(&self, filter: WatchFilter) -> Arc<WatchQueue<V>> {
        let queue = Arc::new(WatchQueue::new(filter));
        let mut queues = self.write();
        queues.push(Arc::clone(&queue));
        self.count.store(queues.len(), Ordering::Release);
        queue
    }

    /// Removes a watch; false if it was not there (already closed).
    pub(crate) fn remove(&self, queue: &Arc<WatchQueue<V>>) -> bool {
        let mut queues = self.write();
        let Some(i) = queues.iter().position(|q| Arc::ptr_eq(q, queue)) else {
            return false;
        };
        queues.swap_remove(i);
        self.count.store(queues.len(), Ordering::Release);
        true
    }

    /// Hands `event` to every watch whose filter matches.
    pub(crate) fn emit(&self, event: &Event<V>) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let queues = self.queues.read().unwrap_or_else(|p| p.into_inner());
        for q in queues.iter().filter(|q| q.filter.matches(event.kind(), event.key())) {
            q.push(event);
        }
    }

    /// Ends every watch (their streams finish after draining) and forgets
    /// them; returns them so the caller can adjust its interest counts.
    pub(crate) fn close_all(&self) -> Vec<Arc<WatchQueue<V>>> {
        let queues = std::mem::take(&mut *self.write());
        self.count.store(0, Ordering::Release);
        for q in &queues {
            q.close();
        }
        queues
    }

    /// The kinds `queue` listens to (for the dispatcher's interest counts).
    pub(crate) fn kinds_of(queue: &WatchQueue<V>) -> impl Iterator<Item = EventKind> + '_ {
        queue.filter.wanted_kinds()
    }
}
