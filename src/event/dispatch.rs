//! The [`Dispatcher`]: the registry of callbacks and the bounded queue of each.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::callback::{Callback, CallbackBody, CallbackId};
use crate::error::{Error, Result};
use crate::event::relay::Relay;
use crate::event::sandbox::{self, WorkerContext};
use crate::event::watch::{Watch, WatchFilter, WatchOwner, WatchQueue, Watchers};
use crate::event::{AfterDrain, Event, EventKind, EventSink, EventTarget};
use crate::stats::{Counters, Stats};

/// Settings of a [`Dispatcher`].
///
/// ```
/// use std::time::Duration;
/// let config = livedict::layer::DispatchConfig::default()
///     .queue_capacity(4096)
///     .default_timeout(Some(Duration::from_secs(2)));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    queue_capacity: usize,
    default_timeout: Option<Duration>,
    drain_timeout: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            queue_capacity: 8192,
            default_timeout: Some(Duration::from_secs(10)),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

impl DispatchConfig {
    /// Events each callback may have queued; beyond it events are dropped and
    /// counted in `stats().events_dropped` (default 8192).
    pub fn queue_capacity(mut self, events: usize) -> Self {
        self.queue_capacity = events.max(1);
        self
    }

    /// Timeout of callbacks registered without their own (default 10 s; `None`: no limit).
    pub fn default_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// How long `shutdown` waits for queued events to be delivered (default 5 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }
}

/// One registered callback: its queue and switches.
struct Subscriber<V> {
    id: CallbackId,
    kind: EventKind,
    enabled: bool,
    alive: Arc<AtomicBool>,
    queue: mpsc::Sender<Event<V>>,
    done: oneshot::Receiver<()>,
}

struct Registry<V> {
    subscribers: RwLock<Vec<Subscriber<V>>>,
    /// Enabled subscribers per kind, so emitters skip building unwanted events.
    interest: [AtomicUsize; EventKind::ALL.len()],
    counters: Arc<Counters>,
    next_id: AtomicU64,
    config: DispatchConfig,
    runtime: Handle,
    closed: AtomicBool,
    /// The live event streams ([`Watch`]); fed from `emit` like the callbacks.
    watchers: Arc<Watchers<V>>,
    /// Carries this store's events to other processes sharing it, if attached.
    relay: OnceLock<Arc<dyn Relay<V>>>,
    /// Backend work for after the drain at shutdown (see [`AfterDrain`]).
    after_drain: Arc<AfterDrain>,
}

/// Delivers events to registered callbacks, off the caller's path.
///
/// Each callback gets its own bounded queue and worker (see
/// [`Callback`](crate::Callback)), so it sees its events in order and exactly
/// once; a full queue drops the event and counts it, it never blocks the
/// writer. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use livedict::{layer::{DispatchConfig, Dispatcher}, Callback, Event, EventKind};
/// let dispatcher = Dispatcher::<u32>::new(DispatchConfig::default())?;
/// let id = dispatcher.register(EventKind::Set, Callback::new(|ev: &Event<u32>| {
///     println!("set {}", ev.key());
/// }))?;
/// dispatcher.unregister(id)?;
/// # Ok(()) }
/// ```
pub struct Dispatcher<V> {
    registry: Arc<Registry<V>>,
}

impl<V> Clone for Dispatcher<V> {
    fn clone(&self) -> Self {
        Dispatcher { registry: Arc::clone(&self.registry) }
    }
}

impl<V> std::fmt::Debug for Dispatcher<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("config", &self.registry.config).finish()
    }
}

impl<V: Send + Sync + 'static> Dispatcher<V> {
    /// A dispatcher whose workers run on the current Tokio runtime.
    ///
    /// Fails with [`Error::Backend`] outside a Tokio runtime.
    pub fn new(config: DispatchConfig) -> Result<Self> {
        let runtime = Handle::try_current()
            .map_err(|e| Error::backend("memory", "callbacks need a Tokio runtime", e))?;
        Ok(Dispatcher {
            registry: Arc::new(Registry {
                subscribers: RwLock::new(Vec::new()),
                interest: Default::default(),
                counters: Arc::default(),
                next_id: AtomicU64::new(1),
                config,
                runtime,
                closed: AtomicBool::new(false),
                watchers: Arc::default(),
                relay: OnceLock::new(),
                after_drain: Arc::default(),
            }),
        })
    }

    /// The sink a backend reports its `Expire` and `Evict` events to.
    pub fn sink(&self) -> EventSink<V> {
        let target: Arc<dyn EventTarget<V>> = Arc::new(self.clone());
        EventSink::new(target, Arc::clone(&self.registry.counters), Arc::clone(&self.registry.after_drain))
    }

    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.registry.counters
    }

    /// The counters of the store this dispatcher serves.
    pub fn stats(&self) -> Stats {
        self.registry.counters.snapshot()
    }

    /// Registers `callback` for events of `kind`; it is enabled at once.
    pub fn register(&self, kind: EventKind, callback: Callback<V>) -> Result<CallbackId> {
        let reg = &self.registry;
        let mut subscribers = write(&reg.subscribers);
        if reg.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let id = CallbackId(reg.next_id.fetch_add(1, Ordering::Relaxed));
        let (queue, events) = mpsc::channel(reg.config.queue_capacity);
        let (done_tx, done) = oneshot::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let cx = WorkerContext {
            counters: Arc::clone(&reg.counters),
            alive: Arc::clone(&alive),
            timeout: callback.timeout.or(reg.config.default_timeout),
            fallible: callback.fallible,
            done: done_tx,
        };
        match callback.body {
            CallbackBody::Sync(f) => sandbox::spawn_sync(f, events, cx),
            CallbackBody::Async(f) => sandbox::spawn_async(&reg.runtime, f, events, cx),
        }
        subscribers.push(Subscriber { id, kind, enabled: true, alive, queue, done });
        reg.interest[kind.index()].fetch_add(1, Ordering::AcqRel);
        Ok(id)
    }

    /// Enables or disables a callback; while disabled it is not given events.
    pub fn set_enabled(&self, id: CallbackId, enabled: bool) -> Result<()> {
        let mut subscribers = write(&self.registry.subscribers);
        let sub = subscribers
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| Error::InvalidConfig(format!("no callback with id {}", id.0)))?;
        if sub.enabled != enabled {
            sub.enabled = enabled;
            let interest = &self.registry.interest[sub.kind.index()];
            if enabled {
                interest.fetch_add(1, Ordering::AcqRel);
            } else {
                interest.fetch_sub(1, Ordering::AcqRel);
            }
        }
        Ok(())
    }

    /// Removes a callback; it is never called again (queued events are discarded).
    pub fn unregister(&self, id: CallbackId) -> Result<()> {
        let mut subscribers = write(&self.registry.subscribers);
        let i = subscribers
            .iter()
            .position(|s| s.id == id)
            .ok_or_else(|| Error::InvalidConfig(format!("no callback with id {}", id.0)))?;
        let sub = subscribers.remove(i);
        sub.alive.store(false, Ordering::Release);
        if sub.enabled {
            self.registry.interest[sub.kind.index()].fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Opens a live stream of the events matching `filter` (see
    /// [`LiveDict::watch`](crate::LiveDict::watch)).
    pub fn watch(&self, filter: WatchFilter) -> Result<Watch<V>> {
        let reg = &self.registry;
        // Under the registry lock, like `register`, so `shutdown` sees every watch.
        let _subscribers = write(&reg.subscribers);
        if reg.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let queue = reg.watchers.add(filter);
        for kind in Watchers::kinds_of(&queue) {
            reg.interest[kind.index()].fetch_add(1, Ordering::AcqRel);
        }
        Ok(Watch::new(queue, Arc::new(self.clone())))
    }

    /// Removes a dropped watch (unless `shutdown` already did).
    fn forget_watch(&self, queue: &Arc<WatchQueue<V>>) {
        let reg = &self.registry;
        let _subscribers = write(&reg.subscribers);
        if reg.watchers.remove(queue) {
            for kind in Watchers::kinds_of(queue) {
                reg.interest[kind.index()].fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Stops accepting events, lets every callback drain its queue (up to the
    /// configured drain timeout), and counts what was left as dropped.
    pub async fn shutdown(&self) {
        let reg = &self.registry;
        let subscribers = {
            let mut subs = write(&reg.subscribers);
            reg.closed.store(true, Ordering::Release);
            for i in reg.interest.iter() {
                i.store(0, Ordering::Release);
            }
            reg.watchers.close_all();
            std::mem::take(&mut *subs)
        };
        // Events this process still has to hand to other processes go first.
        if let Some(relay) = reg.relay.get()
            && tokio::time::timeout(reg.config.drain_timeout, relay.close()).await.is_err()
        {
            tracing::warn!("events not yet shared with other processes were dropped at shutdown");
        }
        // Measured on the wall clock: callbacks run on real threads, and a
        // paused Tokio clock (tests) must not make the drain give up early.
        let started = std::time::Instant::now();
        for sub in subscribers {
            let Subscriber { queue, mut done, alive, .. } = sub;
            drop(queue); // closes the queue: the worker drains it and finishes
            loop {
                tokio::select! {
                    _ = &mut done => break,
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                }
                if started.elapsed() > reg.config.drain_timeout {
                    // Past the drain timeout: the worker counts the rest as dropped.
                    alive.store(false, Ordering::Release);
                    break;
                }
            }
        }
        // Then what the backend does with the callbacks' outcomes (acknowledgements).
        reg.after_drain.run(reg.config.drain_timeout).await;
    }
}

impl<V: Send + Sync + 'static> WatchOwner<V> for Dispatcher<V> {
    fn unwatch(&self, queue: &Arc<WatchQueue<V>>) {
        self.forget_watch(queue);
    }
}

impl<V: Send + Sync + 'static> EventTarget<V> for Dispatcher<V> {
    fn wants(&self, kind: EventKind) -> bool {
        self.registry.interest[kind.index()].load(Ordering::Relaxed) > 0
            || (kind != EventKind::Get && self.registry.relay.get().is_some())
    }

    fn room(&self, kind: EventKind) -> usize {
        let subscribers = self.registry.subscribers.read().unwrap_or_else(|p| p.into_inner());
        subscribers
            .iter()
            .filter(|s| s.enabled && s.kind == kind)
            .map(|s| s.queue.capacity())
            .min()
            .unwrap_or(usize::MAX)
    }

    fn emit(&self, event: Event<V>) {
        let reg = &self.registry;
        let subscribers = reg.subscribers.read().unwrap_or_else(|p| p.into_inner());
        for sub in subscribers.iter().filter(|s| s.enabled && s.kind == event.kind()) {
            // A leased expiration is acknowledged once every callback it enters returned.
            let held = event.hold();
            if sub.queue.try_send(event.clone()).is_err() {
                reg.counters.events_dropped.incr();
                if held {
                    event.release(false);
                }
            }
        }
        drop(subscribers);
        reg.watchers.emit(&event);
        if event.kind() != EventKind::Get
            && let Some(relay) = reg.relay.get()
        {
            relay.publish(&event);
        }
    }
}

impl<V> Dispatcher<V> {
    /// Attaches the relay that carries this store's `Set`, `Delete`, `Expire`
    /// and `Evict` events to other processes; returns the watches that events
    /// of other processes are handed to. Only one relay per dispatcher.
    #[cfg(any(feature = "sqlite", feature = "redis"))]
    pub(crate) fn attach_relay(&self, relay: Arc<dyn Relay<V>>) -> Result<Arc<Watchers<V>>> {
        self.registry
            .relay
            .set(relay)
            .map_err(|_| Error::InvalidConfig("this store already shares its events".into()))?;
        Ok(Arc::clone(&self.registry.watchers))
    }

    /// Ends every watch stream (the store's last handle is gone).
    pub(crate) fn close_watchers(&self) {
        let reg = &self.registry;
        if let Some(relay) = reg.relay.get() {
            // Not awaited (a drop): the relay still hands over what it holds if the runtime lives on.
            drop(relay.close());
        }
        let _subscribers = write(&reg.subscribers);
        for queue in reg.watchers.close_all() {
            for kind in Watchers::kinds_of(&queue) {
                reg.interest[kind.index()].fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Locks the registry for writing; the registry stays consistent even if a
/// panic happened while it was held (no code path here panics while holding it).
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
