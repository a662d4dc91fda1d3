//! Events (set, get, delete, expire, evict), the sink backends report them
//! to, and their delivery: the dispatcher (`dispatch.rs`) hands each event to
//! the callbacks (run in the sandbox, `sandbox.rs`), the watch streams
//! (`watch.rs`) and the relay to other processes (`relay.rs`).
//!
//! This folder sits below the layers and the backends: both reach events
//! only through the types here.

pub(crate) mod dispatch;
pub(crate) mod receipt;
pub(crate) mod relay;
pub(crate) mod sandbox;
pub(crate) mod watch;

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

use crate::delivery::ExpireDelivery;
use crate::stats::Counters;
use receipt::{Receipt, Settle};

/// The kind of an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A value was stored.
    Set,
    /// A read found a live value (misses fire nothing).
    Get,
    /// A delete removed a live value (deleting a missing key fires nothing).
    Delete,
    /// A value reached its deadline and was removed; the event carries it.
    Expire,
    /// An entry left the store before its deadline because the storage ran
    /// out of room: the memory backend's capacity bound, or a Redis server
    /// evicting under its `maxmemory-policy` (then the event carries no value:
    /// Redis dropped it before livedict could read it).
    Evict,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 5] =
        [EventKind::Set, EventKind::Get, EventKind::Delete, EventKind::Expire, EventKind::Evict];

    /// A dense index (0..5), for per-kind tables.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The kind's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Set => "set",
            EventKind::Get => "get",
            EventKind::Delete => "delete",
            EventKind::Expire => "expire",
            EventKind::Evict => "evict",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened to one key. Cheap to clone (one `Arc`).
///
/// ```
/// use livedict::{Event, EventKind};
/// let ev = Event::new(EventKind::Set, "k", Some(7));
/// assert_eq!(ev.kind(), EventKind::Set);
/// assert_eq!(ev.key(), "k");
/// assert_eq!(ev.value(), Some(&7));
/// ```
pub struct Event<V> {
    inner: Arc<EventData<V>>,
}

struct EventData<V> {
    kind: EventKind,
    /// Shared with the memory backend's entry when it reports a `Set` (a
    /// reference count instead of a copy of the key).
    key: Arc<str>,
    value: Payload<V>,
    at: SystemTime,
    /// 1 on a first delivery, n on the n-th (leased expirations only).
    attempt: u32,
    /// Settled when every callback it was handed to returned (leased expirations only).
    /// Boxed: every other event pays one word for it, not a whole receipt
    /// (measured: the unboxed receipt made every event 48 bytes larger, and
    /// set + 1 callback started dropping events).
    receipt: Option<Box<Receipt>>,
}

/// A stored value an event reads in place instead of holding a clone of it:
/// the memory backend's entry (see [`Event::shared`]).
pub(crate) trait SharedValue<V>: Send + Sync {
    /// The value.
    fn value(&self) -> &V;
}

/// The value of an event: its own, or one it shares with the store.
enum Payload<V> {
    Owned(Option<V>),
    /// `AssertUnwindSafe`: the value is only ever read through `&V`, and
    /// `Event` keeps the unwind-safety it had with an owned value (the trait
    /// object alone would lose it whatever `V`).
    Shared(AssertUnwindSafe<Arc<dyn SharedValue<V>>>),
}

impl<V> Event<V> {
    /// A new event stamped with the current wall-clock time.
    pub fn new(kind: EventKind, key: impl Into<String>, value: Option<V>) -> Self {
        Self::keyed(kind, Arc::from(key.into()), value)
    }

    /// A new event on a key already in an `Arc<str>` (no copy of the key).
    pub(crate) fn keyed(kind: EventKind, key: Arc<str>, value: Option<V>) -> Self {
        Self::build(kind, key, Payload::Owned(value), 1, None)
    }

    /// A new event that shares its key and its value with the store (the
    /// memory backend's `Set`): neither is copied.
    pub(crate) fn shared(kind: EventKind, key: Arc<str>, value: Arc<dyn SharedValue<V>>) -> Self {
        Self::build(kind, key, Payload::Shared(AssertUnwindSafe(value)), 1, None)
    }

    fn build(
        kind: EventKind,
        key: Arc<str>,
        value: Payload<V>,
        attempt: u32,
        receipt: Option<Box<Receipt>>,
    ) -> Self {
        Event { inner: Arc::new(EventData { kind, key, value, at: SystemTime::now(), attempt, receipt }) }
    }

    /// An `Expire` event of delivery `attempt` that settles `receipt` once delivered.
    fn leased(key: Arc<str>, value: Option<V>, attempt: u32, receipt: Receipt) -> Self {
        Self::build(EventKind::Expire, key, Payload::Owned(value), attempt, Some(Box::new(receipt)))
    }

    /// Which delivery of this event this is: 1 on a first delivery, `n` on
    /// the `n`-th. Only `Expire` events under
    /// [`Delivery::AtLeastOnce`](crate::Delivery::AtLeastOnce) are ever
    /// delivered again (a callback failed, or the process that claimed the
    /// expiration died before acknowledging it); every other event is 1.
    ///
    /// ```
    /// use livedict::{Event, EventKind};
    /// assert_eq!(Event::new(EventKind::Expire, "k", Some(1)).attempt(), 1);
    /// ```
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Whether this event settles a receipt (a leased expiration).
    pub(crate) fn is_leased(&self) -> bool {
        self.inner.receipt.is_some()
    }

    /// One more callback must return before this event is acknowledged (if it is leased).
    pub(crate) fn hold(&self) -> bool {
        match &self.inner.receipt {
            Some(r) => {
                r.hold();
                true
            }
            None => false,
        }
    }

    /// A callback handed this event returned (`ok`) or failed (if it is leased).
    pub(crate) fn release(&self, ok: bool) {
        if let Some(r) = &self.inner.receipt {
            r.release(ok);
        }
    }

    /// A callback handed this event failed, for the reason `cause` describes
    /// (if it is leased; `cause` is only called then).
    pub(crate) fn fail(&self, cause: impl FnOnce() -> String) {
        if let Some(r) = &self.inner.receipt {
            r.fail(cause());
        }
    }

    /// What happened.
    pub fn kind(&self) -> EventKind {
        self.inner.kind
    }

    /// The key it happened to.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The value involved: the stored value (`Set`), the value read (`Get`),
    /// the removed value (`Delete`, when the backend had it), the expired or
    /// evicted value (`Expire`, `Evict`). `None` where the value was already
    /// gone: an `Evict` from Redis (which drops the value itself), or an
    /// `Expire` whose value Redis dropped after `grace_ms` or evicted after
    /// its deadline.
    pub fn value(&self) -> Option<&V> {
        match &self.inner.value {
            Payload::Owned(value) => value.as_ref(),
            Payload::Shared(shared) => Some(shared.value()),
        }
    }

    /// When it happened (wall clock).
    pub fn at(&self) -> SystemTime {
        self.inner.at
    }
}

impl<V> Clone for Event<V> {
    fn clone(&self) -> Self {
        Event { inner: Arc::clone(&self.inner) }
    }
}

impl<V: fmt::Debug> fmt::Debug for Event<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("kind", &self.kind())
            .field("key", &self.key())
            .field("value", &self.value())
            .field("attempt", &self.attempt())
            .finish()
    }
}

/// Receives events; implemented by the callback [`Dispatcher`](crate::layer::callback::Dispatcher).
pub trait EventTarget<V>: Send + Sync + 'static {
    /// Whether anything listens to `kind` (lets emitters skip building events).
    fn wants(&self, kind: EventKind) -> bool;
    /// Delivers one event; must never block.
    fn emit(&self, event: Event<V>);
    /// How many events of `kind` every listener's queue can take now without
    /// dropping one (`usize::MAX`: no bound). An emitter that can wait (the
    /// memory backend's expiry driver) waits while this is short, so a burst
    /// of expirations is delivered late rather than dropped.
    fn room(&self, kind: EventKind) -> usize {
        let _ = kind;
        usize::MAX
    }
}

/// Where a backend reports the events it originates (`Expire`, `Evict`) and
/// counts what it did. Cheap to clone. [`EventSink::none`] discards events.
pub struct EventSink<V> {
    target: Option<Arc<dyn EventTarget<V>>>,
    counters: Arc<Counters>,
    /// Redeliver expirations whose callbacks failed, in-process (the memory
    /// backend under `AtLeastOnce`; the others lease them in their storage).
    retry: Option<ExpireDelivery>,
    /// What the dispatcher runs after draining the callbacks at shutdown.
    after_drain: Option<Arc<AfterDrain>>,
}

/// Work backends hand the dispatcher for after the callbacks drained at
/// shutdown (writing the acknowledgements of leased expirations), bounded
/// here by the drain timeout.
#[derive(Default)]
pub(crate) struct AfterDrain {
    hooks: Mutex<Vec<DrainHook>>,
}

/// One [`AfterDrain`] hook: the work to await.
type DrainHook = Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

impl AfterDrain {
    /// Runs every hook, one after the other, within `limit` in all.
    pub(crate) async fn run(&self, limit: Duration) {
        let started = std::time::Instant::now();
        let work: Vec<_> = {
            let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
            hooks.iter().map(|hook| hook()).collect()
        };
        for w in work {
            let left = limit.saturating_sub(started.elapsed());
            if tokio::time::timeout(left, w).await.is_err() {
                tracing::warn!(
                    "acknowledgements not written at shutdown; those expirations are delivered again after their lease"
                );
            }
        }
    }
}

impl<V: 'static> EventSink<V> {
    /// A sink that discards every event (counters are still kept).
    pub fn none() -> Self {
        EventSink { target: None, counters: Arc::default(), retry: None, after_drain: None }
    }

    /// A sink delivering to `target` and counting into `counters`.
    pub(crate) fn new(
        target: Arc<dyn EventTarget<V>>,
        counters: Arc<Counters>,
        after_drain: Arc<AfterDrain>,
    ) -> Self {
        EventSink { target: Some(target), counters, retry: None, after_drain: Some(after_drain) }
    }

    /// Whether anything listens to `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.target.as_ref().is_some_and(|t| t.wants(kind))
    }

    /// See [`EventTarget::room`] (`usize::MAX` on a sink without a target).
    pub(crate) fn room(&self, kind: EventKind) -> usize {
        self.target.as_ref().map_or(usize::MAX, |t| t.room(kind))
    }

    /// Builds and delivers an event, if anything listens to its kind.
    pub fn emit_with(&self, kind: EventKind, key: &str, value: impl FnOnce() -> Option<V>) {
        self.emit_built(kind, || Event::keyed(kind, Arc::from(key), value()));
    }

    /// Delivers the event `build` makes, built only if anything listens to `kind`.
    fn emit_built(&self, kind: EventKind, build: impl FnOnce() -> Event<V>) {
        if let Some(target) = &self.target
            && target.wants(kind)
        {
            target.emit(build());
        }
    }

    /// Records that a value expired and reports it as an `Expire` event.
    pub fn expired(&self, key: &str, value: impl FnOnce() -> Option<V>)
    where
        V: Clone + Send + Sync,
    {
        match self.retry {
            Some(delivery) => self.expired_retrying(key, value(), 1, delivery),
            None => {
                self.counters.expirations.incr();
                self.emit_with(EventKind::Expire, key, value);
            }
        }
    }

    /// [`expired`](Self::expired) for an entry the store shares (the memory
    /// backend's): the event holds its key and its value, neither copied
    /// (an at-least-once sink clones the value, which it may deliver again).
    pub(crate) fn expired_shared(&self, key: Arc<str>, value: Arc<dyn SharedValue<V>>)
    where
        V: Clone + Send + Sync,
    {
        match self.retry {
            Some(delivery) => self.expired_retrying(&key, Some(value.value().clone()), 1, delivery),
            None => {
                self.counters.expirations.incr();
                self.emit_built(EventKind::Expire, || Event::shared(EventKind::Expire, key, value));
            }
        }
    }

    /// Reports delivery `attempt` (of at most `max_attempts`) of a leased
    /// expiration: `settle` is called once, with `true` when every `Expire`
    /// callback returned `Ok` for it in time without panicking (at once if
    /// none listens), else `false`. A failed last attempt is logged at error
    /// level with its cause (the expiration is abandoned).
    pub(crate) fn expired_leased(
        &self,
        key: &str,
        value: impl FnOnce() -> Option<V>,
        attempt: u32,
        max_attempts: u32,
        settle: Settle,
    ) {
        if attempt <= 1 {
            self.counters.expirations.incr();
        } else {
            self.counters.expirations_redelivered.incr();
        }
        match &self.target {
            Some(target) if target.wants(EventKind::Expire) => {
                let key: Arc<str> = Arc::from(key);
                let mut receipt = Receipt::new(settle);
                if attempt >= max_attempts {
                    receipt = receipt.last_attempt(Arc::clone(&key), attempt);
                }
                let event = Event::leased(key, value(), attempt, receipt);
                target.emit(event.clone());
                event.release(true); // the emitter's hold
            }
            _ => settle(true),
        }
    }

    /// Has the dispatcher run `hook` after it drained the callbacks at
    /// shutdown (within the drain timeout). Nothing happens on a sink without a dispatcher.
    #[cfg(any(feature = "sqlite", feature = "redis"))]
    pub(crate) fn after_drain(&self, hook: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static) {
        if let Some(after) = &self.after_drain {
            after.hooks.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(hook));
        }
    }

    /// Records expirations dropped after their last unacknowledged delivery.
    #[cfg(any(feature = "sqlite", feature = "redis"))]
    pub(crate) fn abandoned(&self, n: usize) {
        for _ in 0..n {
            self.counters.expirations_abandoned.incr();
        }
    }

    /// Delivers an expiration again in-process while its callbacks fail (memory backend).
    fn expired_retrying(&self, key: &str, value: Option<V>, attempt: u32, delivery: ExpireDelivery)
    where
        V: Clone + Send + Sync,
    {
        let (sink, owned_key, again) = (self.clone(), key.to_owned(), value.clone());
        let settle: Settle = Box::new(move |ok| {
            if ok {
                return;
            }
            if attempt < delivery.max_attempts {
                sink.expired_retrying(&owned_key, again, attempt + 1, delivery);
            } else {
                // The receipt logged it, with the last failure's cause.
                sink.counters.expirations_abandoned.incr();
            }
        });
        self.expired_leased(key, || value, attempt, delivery.max_attempts, settle);
    }

    /// This sink, redelivering failed expirations in-process under `AtLeastOnce`.
    pub(crate) fn retrying(mut self, delivery: ExpireDelivery) -> Self {
        self.retry = delivery.at_least_once().then_some(delivery);
        self
    }

    /// Records that a value was evicted and reports it as an `Evict` event.
    pub fn evicted(&self, key: &str, value: impl FnOnce() -> Option<V>) {
        self.counters.evictions.incr();
        self.emit_with(EventKind::Evict, key, value);
    }
}

impl<V> Clone for EventSink<V> {
    fn clone(&self) -> Self {
        EventSink {
            target: self.target.clone(),
            counters: Arc::clone(&self.counters),
            retry: self.retry,
            after_drain: self.after_drain.clone(),
        }
    }
}

impl<V> fmt::Debug for EventSink<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSink").field("connected", &self.target.is_some()).finish()
    }
}
