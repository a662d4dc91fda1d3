//! The [`LiveDict`] handle: the typed async API over a Tower stack.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::direct::Direct;
use super::flights::Flights;
use crate::Value;
use crate::callback::{Callback, CallbackId};
use crate::error::{Error, Result};
use crate::event::EventKind;
use crate::event::dispatch::Dispatcher;
use crate::request::{LockToken, Request, Response, validate_key, validate_ttl};
use crate::stack::Stack;
use crate::stats::Stats;

/// A TTL key-value store: a typed, cloneable async handle over a Tower stack.
///
/// Clones share the store. Open one with [`LiveDict::open`] (a URL) or
/// [`LiveDict::builder`]; compose your own stack with [`LiveDict::from_service`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use std::time::Duration;
/// use livedict::LiveDict;
/// let d: LiveDict<String> = LiveDict::open("memory://").await?;
/// d.set_with_ttl("session", "alice".to_string(), Duration::from_secs(30)).await?;
/// assert_eq!(d.get("session").await?.as_deref(), Some("alice"));
/// assert!(d.ttl("session").await?.unwrap() <= Duration::from_secs(30));
/// assert!(d.delete("session").await?);
/// # Ok(()) }
/// ```
pub struct LiveDict<V> {
    pub(crate) inner: Arc<Inner<V>>,
}

pub(crate) struct Inner<V> {
    pub(crate) service: Stack<V>,
    pub(crate) dispatcher: Dispatcher<V>,
    pub(crate) default_ttl: Option<Duration>,
    closed: AtomicBool,
    /// Loads of `get_or_insert_with` in flight (see `single_flight`).
    pub(crate) flights: Flights<V>,
    /// Whether to offer the backend `Incr` / `CompareAndSet` as one step
    /// (cleared the first time it answers `Unsupported`; see `atomic.rs`).
    pub(crate) native_incr: AtomicBool,
    pub(crate) native_cas: AtomicBool,
    /// `get` and `set` without the stack, on the default memory stack (see `direct.rs`).
    direct: Option<Direct<V>>,
}

impl<V> Drop for Inner<V> {
    fn drop(&mut self) {
        // The last handle is gone: end the watch streams rather than leave them waiting.
        self.dispatcher.close_watchers();
    }
}

impl<V> Clone for LiveDict<V> {
    fn clone(&self) -> Self {
        LiveDict { inner: Arc::clone(&self.inner) }
    }
}

impl<V> std::fmt::Debug for LiveDict<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveDict").field("closed", &self.inner.closed.load(Ordering::Relaxed)).finish()
    }
}

impl<V: Value> LiveDict<V> {
    /// Wraps a user-composed stack. `dispatcher` must be the one its
    /// [`CallbackLayer`](crate::layer::CallbackLayer) and backend report to;
    /// `register_callback` and `stats` go through it.
    ///
    /// Third-party middleware that boxes its errors (`tower::buffer`,
    /// `tower::load_shed`) needs a `.map_err(Error::from)` above it ([`Error`]
    /// implements `From<tower::BoxError>`, unboxing livedict's own errors).
    /// Put concurrency limits below the [`LockLayer`](crate::layer::LockLayer):
    /// a `lock` call waits for its key inside that layer, and a limit above it
    /// would let waiters hold every permit while the holder's own writes queue
    /// behind them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use std::time::Duration;
    /// use livedict::{backend::{MemoryBackend, MemoryConfig}, layer::*, LiveDict};
    /// let dispatcher = Dispatcher::<u32>::new(DispatchConfig::default())?;
    /// let backend = MemoryBackend::new(MemoryConfig::default(), dispatcher.sink())?;
    /// let stack = tower::ServiceBuilder::new()
    ///     .layer(TraceLayer::new("memory"))
    ///     .layer(TimeoutLayer::new(Duration::from_secs(1)))
    ///     .layer(LockLayer::new().with_stats_of(&dispatcher))
    ///     // third-party limits below the LockLayer, where lock waiters hold no permit
    ///     .layer(tower::limit::ConcurrencyLimitLayer::new(64))
    ///     .layer(CallbackLayer::new(dispatcher.clone()))
    ///     .service(backend);
    /// let d = LiveDict::from_service(stack, dispatcher);
    /// d.set("a", 1).await?;
    /// assert_eq!(d.get("a").await?, Some(1));
    /// # Ok(()) }
    /// ```
    pub fn from_service<S>(service: S, dispatcher: Dispatcher<V>) -> Self
    where
        S: tower::Service<Request<V>, Response = Response<V>, Error = Error> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        // A custom service may not know the one-step atomic requests.
        Self::from_parts(Stack::new_boxed(service), dispatcher, None, false, None)
    }

    pub(crate) fn from_parts(
        service: Stack<V>,
        dispatcher: Dispatcher<V>,
        default_ttl: Option<Duration>,
        native_atomics: bool,
        direct: Option<Direct<V>>,
    ) -> Self {
        LiveDict {
            inner: Arc::new(Inner {
                service,
                dispatcher,
                default_ttl,
                closed: AtomicBool::new(false),
                flights: Flights::default(),
                native_incr: AtomicBool::new(native_atomics),
                native_cas: AtomicBool::new(native_atomics),
                direct,
            }),
        }
    }

    /// The direct path, unless the store is closed (then the stack answers `Closed`).
    pub(crate) fn direct(&self) -> Option<&Direct<V>> {
        let direct = self.inner.direct.as_ref()?;
        (!self.inner.closed.load(Ordering::Acquire)).then_some(direct)
    }

    /// `get` when it can be answered at once without the stack (see `direct.rs`).
    pub(crate) fn get_now(&self, key: &str) -> Option<Result<Option<V>>> {
        if let Err(e) = validate_key(key) {
            return Some(Err(e));
        }
        self.direct()?.get(&self.inner.dispatcher, key)
    }

    /// A plain `set` (no lock token) when it can be done at once without the
    /// stack; else the value back.
    pub(crate) fn set_now(
        &self,
        key: &str,
        value: V,
        ttl: Option<Duration>,
    ) -> std::result::Result<Result<()>, V> {
        if let Err(e) = validate_key(key) {
            return Ok(Err(e));
        }
        match self.direct() {
            Some(direct) => direct.set(&self.inner.dispatcher, key, value, ttl),
            None => Err(value),
        }
    }

    /// Sends `req` through the stack after spending one unit of Tokio's
    /// cooperative budget (see [`yield_point`](Self::yield_point)).
    pub(crate) async fn call(&self, req: Request<V>) -> Result<Response<V>> {
        Self::yield_point().await;
        self.call_spent(req).await
    }

    /// [`call`](Self::call) for a caller that already spent the budget of this operation.
    pub(crate) async fn call_spent(&self, req: Request<V>) -> Result<Response<V>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.inner.service.request(req).await
    }

    /// Stores `value` under `key` with no expiry (or the builder's default
    /// TTL), replacing any earlier value and deadline.
    pub async fn set(&self, key: impl AsRef<str>, value: V) -> Result<()> {
        let key = key.as_ref();
        Self::yield_point().await;
        match self.set_now(key, value, self.inner.default_ttl) {
            Ok(done) => done,
            Err(value) => self.write_set_spent(key, value, self.inner.default_ttl, None).await,
        }
    }

    /// Stores `value` under `key`, expiring `ttl` from now (millisecond
    /// precision). A zero TTL or one above [`MAX_TTL`](crate::MAX_TTL) is
    /// [`Error::InvalidTtl`].
    pub async fn set_with_ttl(&self, key: impl AsRef<str>, value: V, ttl: Duration) -> Result<()> {
        validate_ttl(ttl)?;
        let key = key.as_ref();
        Self::yield_point().await;
        match self.set_now(key, value, Some(ttl)) {
            Ok(done) => done,
            Err(value) => self.write_set_spent(key, value, Some(ttl), None).await,
        }
    }

    /// Spends one unit of Tokio's cooperative budget
    /// ([`tokio::task::coop`]), yielding first when the task has none left.
    ///
    /// Every operation of the handle calls this exactly once, before its
    /// work, whether or not it then waits: an answer that is ready at once
    /// (a memory `get`, an uncontended lock, an SQLite read on the calling
    /// thread, a near-cache hit) would otherwise never give the worker back,
    /// and a loop of them would starve every other task on it (lock waiters,
    /// the store's own expiry driver, the application's handlers). Outside a
    /// Tokio task (the blocking facade's `block_on` gives each call a fresh
    /// budget) it costs a thread-local read and never yields.
    pub(crate) async fn yield_point() {
        tokio::task::coop::consume_budget().await;
    }

    pub(crate) async fn write_set(
        &self,
        key: &str,
        value: V,
        ttl: Option<Duration>,
        lock: Option<LockToken>,
    ) -> Result<()> {
        Self::yield_point().await;
        self.write_set_spent(key, value, ttl, lock).await
    }

    /// [`write_set`](Self::write_set) once the budget was spent.
    async fn write_set_spent(
        &self,
        key: &str,
        value: V,
        ttl: Option<Duration>,
        lock: Option<LockToken>,
    ) -> Result<()> {
        validate_key(key)?;
        match self.call_spent(Request::Set { key: key.to_owned(), value, ttl, lock }).await? {
            Response::Done => Ok(()),
            _ => Err(Response::<V>::mismatch("set")),
        }
    }

    /// The live value of `key`; never a value past its deadline.
    pub async fn get(&self, key: impl AsRef<str>) -> Result<Option<V>> {
        let key = key.as_ref();
        Self::yield_point().await;
        if let Some(got) = self.get_now(key) {
            return got;
        }
        validate_key(key)?;
        match self.call_spent(Request::Get { key: key.to_owned() }).await? {
            Response::Value(v) => Ok(v),
            _ => Err(Response::<V>::mismatch("get")),
        }
    }

    /// Removes `key`; true if a live value was removed (only then is a
    /// `Delete` event fired).
    pub async fn delete(&self, key: impl AsRef<str>) -> Result<bool> {
        self.write_delete(key.as_ref(), None).await
    }

    pub(crate) async fn write_delete(&self, key: &str, lock: Option<LockToken>) -> Result<bool> {
        validate_key(key)?;
        match self.call(Request::Delete { key: key.to_owned(), lock }).await? {
            Response::Deleted { removed, .. } => Ok(removed),
            _ => Err(Response::<V>::mismatch("delete")),
        }
    }

    /// Whether `key` has a live value.
    pub async fn exists(&self, key: impl AsRef<str>) -> Result<bool> {
        let key = key.as_ref();
        validate_key(key)?;
        self.bool_op(Request::Exists { key: key.to_owned() }).await
    }

    /// Every live key (in no particular order).
    ///
    /// Everything in memory at once; use [`scan_keys`](Self::scan_keys) for
    /// large stores.
    pub async fn keys(&self) -> Result<Vec<String>> {
        match self.call(Request::Keys).await? {
            Response::Keys(k) => Ok(k),
            _ => Err(Response::<V>::mismatch("keys")),
        }
    }

    /// Every live entry (in no particular order).
    ///
    /// Everything in memory at once; use [`scan`](Self::scan) for large stores.
    pub async fn items(&self) -> Result<Vec<(String, V)>> {
        match self.call(Request::Items).await? {
            Response::Items(i) => Ok(i),
            _ => Err(Response::<V>::mismatch("items")),
        }
    }

    /// The number of live entries.
    pub async fn len(&self) -> Result<usize> {
        match self.call(Request::Len).await? {
            Response::Len(n) => Ok(n),
            _ => Err(Response::<V>::mismatch("len")),
        }
    }

    /// Whether the store has no live entries.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Removes every entry of this store (its namespace on Redis, its table
    /// on SQLite). Fires no per-key events.
    pub async fn clear(&self) -> Result<()> {
        match self.call(Request::Clear).await? {
            Response::Done => Ok(()),
            _ => Err(Response::<V>::mismatch("clear")),
        }
    }

    /// The remaining time to live of `key`; `None` if it is missing or has no deadline.
    pub async fn ttl(&self, key: impl AsRef<str>) -> Result<Option<Duration>> {
        let key = key.as_ref();
        validate_key(key)?;
        match self.call(Request::Ttl { key: key.to_owned() }).await? {
            Response::Ttl(t) => Ok(t),
            _ => Err(Response::<V>::mismatch("ttl")),
        }
    }

    /// Gives a live `key` a new deadline `ttl` from now; false if it is missing.
    pub async fn expire(&self, key: impl AsRef<str>, ttl: Duration) -> Result<bool> {
        self.write_expire(key.as_ref(), ttl, None).await
    }

    pub(crate) async fn write_expire(
        &self,
        key: &str,
        ttl: Duration,
        lock: Option<LockToken>,
    ) -> Result<bool> {
        validate_key(key)?;
        validate_ttl(ttl)?;
        self.bool_op(Request::Expire { key: key.to_owned(), ttl, lock }).await
    }

    /// Drops the deadline of a live `key`; false if it is missing or had none.
    pub async fn persist(&self, key: impl AsRef<str>) -> Result<bool> {
        let key = key.as_ref();
        validate_key(key)?;
        self.bool_op(Request::Persist { key: key.to_owned(), lock: None }).await
    }

    async fn bool_op(&self, req: Request<V>) -> Result<bool> {
        let op = req.op();
        match self.call(req).await? {
            Response::Bool(b) => Ok(b),
            _ => Err(Response::<V>::mismatch(op)),
        }
    }

    /// Registers `callback` for events of `kind`. See [`Callback`] for the sandbox rules.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{Callback, Event, EventKind, LiveDict};
    /// let d = LiveDict::<u32>::open("memory://").await?;
    /// let id = d.register_callback(EventKind::Set, Callback::new(|ev: &Event<u32>| {
    ///     println!("{} = {:?}", ev.key(), ev.value());
    /// }))?;
    /// d.set_callback_enabled(id, false)?;
    /// d.unregister_callback(id)?;
    /// # Ok(()) }
    /// ```
    pub fn register_callback(&self, kind: EventKind, callback: Callback<V>) -> Result<CallbackId> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.inner.dispatcher.register(kind, callback)
    }

    /// Enables or disables a callback; a disabled one is not given events.
    pub fn set_callback_enabled(&self, id: CallbackId, enabled: bool) -> Result<()> {
        self.inner.dispatcher.set_enabled(id, enabled)
    }

    /// Removes a callback; it is never called again.
    pub fn unregister_callback(&self, id: CallbackId) -> Result<()> {
        self.inner.dispatcher.unregister(id)
    }

    /// The store's counters.
    pub fn stats(&self) -> Stats {
        self.inner.dispatcher.stats()
    }

    /// Flushes pending writes, stops expiry drivers, delivers queued events
    /// (or counts them as dropped past the drain timeout). Later calls on any
    /// handle return [`Error::Closed`].
    pub async fn shutdown(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Err(Error::Closed);
        }
        let flushed = self.inner.service.request(Request::Shutdown).await;
        self.inner.dispatcher.shutdown().await;
        flushed.map(|_| ())
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }
}
