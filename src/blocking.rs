//! The blocking facade: the same store without `.await`, for sync code.
//!
//! [`LiveDict`] owns a private multi-thread Tokio runtime that runs the
//! background work (expiry drivers, callback dispatch, I/O) and runs each
//! operation with `Runtime::block_on` on the calling thread, so a memory
//! `get` costs no thread hop.
//!
//! **Do not call it from async code.** Inside a Tokio runtime every method
//! returns [`Error::InsideRuntime`] instead of panicking or deadlocking; use
//! the async [`crate::LiveDict`] there.
//!
//! ```
//! use std::time::Duration;
//! use livedict::blocking::LiveDict;
//! let d: LiveDict<String> = LiveDict::open("memory://")?;
//! d.set_with_ttl("k", "v".to_string(), Duration::from_secs(5))?;
//! assert_eq!(d.get("k")?.as_deref(), Some("v"));
//! let guard = d.lock("k", Duration::from_secs(1))?;
//! guard.set("w".to_string())?;
//! drop(guard);
//! # Ok::<(), livedict::Error>(())
//! ```

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};

use crate::Value;
use crate::callback::{Callback, CallbackId};
use crate::caller::BlockingCall;
use crate::error::{Error, Result};
use crate::event::EventKind;
use crate::event::watch::{WatchFilter, WatchItem};
use crate::handle::builder::Builder;
use crate::stats::Stats;

/// Owns the runtime; shuts it down without blocking when the last handle goes
/// (so dropping a handle inside async code does not panic).
struct OwnedRuntime(Option<Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl OwnedRuntime {
    fn runtime(&self) -> &Runtime {
        // Invariant: the runtime is only taken in `drop`.
        self.0.as_ref().expect("runtime present until drop")
    }

    /// [`Error::InsideRuntime`] when called from async code.
    fn check_caller() -> Result<()> {
        if Handle::try_current().is_ok() {
            return Err(Error::InsideRuntime);
        }
        Ok(())
    }

    fn block_on<F: Future>(&self, f: F) -> Result<F::Output> {
        Self::check_caller()?;
        let rt = self.runtime();
        let _blocking = BlockingCall::enter();
        let mut f = pin!(f);
        {
            // Most memory operations finish on their first poll: try that inside
            // the runtime's context before paying for `block_on`'s parking setup
            // (measured: ~60 ns less per `get`).
            let _entered = rt.enter();
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return Ok(out);
            }
        }
        Ok(rt.block_on(f))
    }
}

/// The blocking twin of [`crate::LiveDict`]: same methods, no `.await`.
/// Cheap to clone; clones share the store and its runtime.
pub struct LiveDict<V> {
    inner: crate::LiveDict<V>,
    // Declared after `inner` so the store is dropped before its runtime.
    runtime: Arc<OwnedRuntime>,
}

impl<V> Clone for LiveDict<V> {
    fn clone(&self) -> Self {
        LiveDict { inner: self.inner.clone(), runtime: Arc::clone(&self.runtime) }
    }
}

impl<V> std::fmt::Debug for LiveDict<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::LiveDict").field("inner", &self.inner).finish()
    }
}

fn new_runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("livedict-blocking")
        .enable_all()
        .build()
        .map_err(|e| Error::backend("memory", "cannot start the blocking facade's runtime", e))
}

impl<V: Value> LiveDict<V> {
    /// Opens a store from a URL (see [`crate::LiveDict::open`]).
    pub fn open(url: &str) -> Result<Self> {
        Self::from_builder(Builder::new().url(url))
    }

    /// A builder; finish it with [`Builder::build_blocking`].
    pub fn builder() -> Builder<V> {
        Builder::new()
    }

    pub(crate) fn from_builder(builder: Builder<V>) -> Result<Self> {
        if Handle::try_current().is_ok() {
            return Err(Error::InsideRuntime);
        }
        let runtime = OwnedRuntime(Some(new_runtime()?));
        let inner = runtime.block_on(builder.build())??;
        Ok(LiveDict { inner, runtime: Arc::new(runtime) })
    }

    /// The async handle of the same store (for use on the facade's runtime).
    pub fn as_async(&self) -> &crate::LiveDict<V> {
        &self.inner
    }

    /// See [`crate::LiveDict::set`].
    pub fn set(&self, key: impl AsRef<str>, value: V) -> Result<()> {
        let key = key.as_ref();
        OwnedRuntime::check_caller()?;
        match self.inner.set_now(key, value, self.inner.inner.default_ttl) {
            Ok(done) => done,
            Err(value) => self.runtime.block_on(self.inner.set(key, value))?,
        }
    }

    /// See [`crate::LiveDict::set_with_ttl`].
    pub fn set_with_ttl(&self, key: impl AsRef<str>, value: V, ttl: Duration) -> Result<()> {
        let key = key.as_ref();
        OwnedRuntime::check_caller()?;
        crate::request::validate_ttl(ttl)?;
        match self.inner.set_now(key, value, Some(ttl)) {
            Ok(done) => done,
            Err(value) => self.runtime.block_on(self.inner.set_with_ttl(key, value, ttl))?,
        }
    }

    /// See [`crate::LiveDict::get`].
    pub fn get(&self, key: impl AsRef<str>) -> Result<Option<V>> {
        let key = key.as_ref();
        OwnedRuntime::check_caller()?;
        match self.inner.get_now(key) {
            Some(got) => got,
            None => self.runtime.block_on(self.inner.get(key))?,
        }
    }

    /// See [`crate::LiveDict::delete`].
    pub fn delete(&self, key: impl AsRef<str>) -> Result<bool> {
        self.runtime.block_on(self.inner.delete(key))?
    }

    /// See [`crate::LiveDict::exists`].
    pub fn exists(&self, key: impl AsRef<str>) -> Result<bool> {
        self.runtime.block_on(self.inner.exists(key))?
    }

    /// See [`crate::LiveDict::keys`].
    pub fn keys(&self) -> Result<Vec<String>> {
        self.runtime.block_on(self.inner.keys())?
    }

    /// See [`crate::LiveDict::items`].
    pub fn items(&self) -> Result<Vec<(String, V)>> {
        self.runtime.block_on(self.inner.items())?
    }

    /// See [`crate::LiveDict::len`].
    pub fn len(&self) -> Result<usize> {
        self.runtime.block_on(self.inner.len())?
    }

    /// See [`crate::LiveDict::is_empty`].
    pub fn is_empty(&self) -> Result<bool> {
        self.runtime.block_on(self.inner.is_empty())?
    }

    /// See [`crate::LiveDict::clear`].
    pub fn clear(&self) -> Result<()> {
        self.runtime.block_on(self.inner.clear())?
    }

    /// See [`crate::LiveDict::ttl`].
    pub fn ttl(&self, key: impl AsRef<str>) -> Result<Option<Duration>> {
        self.runtime.block_on(self.inner.ttl(key))?
    }

    /// See [`crate::LiveDict::expire`].
    pub fn expire(&self, key: impl AsRef<str>, ttl: Duration) -> Result<bool> {
        self.runtime.block_on(self.inner.expire(key, ttl))?
    }

    /// See [`crate::LiveDict::persist`].
    pub fn persist(&self, key: impl AsRef<str>) -> Result<bool> {
        self.runtime.block_on(self.inner.persist(key))?
    }

    /// See [`crate::LiveDict::update`]: atomic under the key's lock.
    ///
    /// ```
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// assert_eq!(d.update("n", |n| Some(n.unwrap_or(0) + 5))?, Some(5));
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn update<F>(&self, key: impl AsRef<str>, f: F) -> Result<Option<V>>
    where
        F: FnMut(Option<V>) -> Option<V>,
    {
        self.runtime.block_on(self.inner.update(key, f))?
    }

    /// See [`crate::LiveDict::update_with_ttl`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// d.update_with_ttl("n", Duration::from_secs(5), |_| Some(1))?;
    /// assert!(d.ttl("n")?.is_some());
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn update_with_ttl<F>(&self, key: impl AsRef<str>, ttl: Duration, f: F) -> Result<Option<V>>
    where
        F: FnMut(Option<V>) -> Option<V>,
    {
        self.runtime.block_on(self.inner.update_with_ttl(key, ttl, f))?
    }

    /// See [`crate::LiveDict::incr`].
    ///
    /// ```
    /// let d = livedict::blocking::LiveDict::<i64>::open("memory://")?;
    /// assert_eq!(d.incr("n", -2)?, -2);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn incr(&self, key: impl AsRef<str>, delta: i64) -> Result<V>
    where
        V: TryFrom<i64> + TryInto<i64>,
    {
        self.runtime.block_on(self.inner.incr(key, delta))?
    }

    /// See [`crate::LiveDict::compare_and_set`].
    ///
    /// ```
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// assert!(d.compare_and_set("k", None, 1)?);
    /// assert!(!d.compare_and_set("k", Some(&7), 2)?);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn compare_and_set(&self, key: impl AsRef<str>, expected: Option<&V>, new: V) -> Result<bool>
    where
        V: PartialEq,
    {
        self.runtime.block_on(self.inner.compare_and_set(key, expected, new))?
    }

    /// See [`crate::LiveDict::compare_and_set_with_ttl`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// assert!(d.compare_and_set_with_ttl("k", None, 1, Duration::from_secs(5))?);
    /// assert!(d.ttl("k")?.is_some());
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn compare_and_set_with_ttl(
        &self,
        key: impl AsRef<str>,
        expected: Option<&V>,
        new: V,
        ttl: Duration,
    ) -> Result<bool>
    where
        V: PartialEq,
    {
        self.runtime.block_on(self.inner.compare_and_set_with_ttl(key, expected, new, ttl))?
    }

    /// See [`crate::LiveDict::get_or_insert_with`]; the loader is a plain
    /// closure, run on the thread of one of the waiting callers.
    ///
    /// ```
    /// let d = livedict::blocking::LiveDict::<String>::open("memory://")?;
    /// let v = d.get_or_insert_with("k", None, || Ok::<_, std::io::Error>("loaded".to_string()))?;
    /// assert_eq!(v, "loaded");
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn get_or_insert_with<F, E>(
        &self,
        key: impl AsRef<str>,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<V>
    where
        F: FnOnce() -> std::result::Result<V, E> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.runtime.block_on(self.inner.get_or_insert_with(key, ttl, move || async move { loader() }))?
    }

    /// See [`crate::LiveDict::watch`]; the blocking [`Watch`] is read with
    /// [`Watch::recv`] or iterated.
    ///
    /// ```
    /// use livedict::{EventKind, WatchFilter};
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// let mut w = d.watch(WatchFilter::kinds([EventKind::Set]))?;
    /// d.set("a", 1)?;
    /// let item = w.recv()?.unwrap();
    /// assert_eq!(item.event().unwrap().key(), "a");
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn watch(&self, filter: WatchFilter) -> Result<Watch<V>> {
        Ok(Watch { inner: self.inner.watch(filter)?, runtime: Arc::clone(&self.runtime) })
    }

    /// See [`crate::LiveDict::lock`].
    pub fn lock(&self, key: impl AsRef<str>, timeout: Duration) -> Result<KeyGuard<V>> {
        let guard = self.runtime.block_on(self.inner.lock(key, timeout))??;
        Ok(KeyGuard { guard: Some(guard), runtime: Arc::clone(&self.runtime) })
    }

    /// See [`crate::LiveDict::register_callback`]; callbacks are plain
    /// closures, fallible ones too ([`Callback::fallible`]: an `Err` is a
    /// failed delivery, retried under `expire_delivery=at_least_once`).
    ///
    /// ```
    /// use livedict::blocking::LiveDict;
    /// use livedict::{Callback, Event, EventKind};
    /// let d: LiveDict<u32> = LiveDict::open("memory://?expire_delivery=at_least_once")?;
    /// d.register_callback(
    ///     EventKind::Expire,
    ///     Callback::fallible(|ev: &Event<u32>| {
    ///         if ev.attempt() == 1 { Err("not yet") } else { Ok(()) }
    ///     }),
    /// )?;
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn register_callback(&self, kind: EventKind, callback: Callback<V>) -> Result<CallbackId> {
        self.inner.register_callback(kind, callback)
    }

    /// See [`crate::LiveDict::set_callback_enabled`].
    pub fn set_callback_enabled(&self, id: CallbackId, enabled: bool) -> Result<()> {
        self.inner.set_callback_enabled(id, enabled)
    }

    /// See [`crate::LiveDict::unregister_callback`].
    pub fn unregister_callback(&self, id: CallbackId) -> Result<()> {
        self.inner.unregister_callback(id)
    }

    /// See [`crate::LiveDict::stats`].
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// See [`crate::LiveDict::shutdown`].
    pub fn shutdown(&self) -> Result<()> {
        self.runtime.block_on(self.inner.shutdown())?
    }
}

// Batches (`get_many`, `set_many`, `delete_many`): the twins of `handle/batch.rs`.
impl<V: Value> LiveDict<V> {
    /// See [`crate::LiveDict::get_many`].
    ///
    /// ```
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// d.set("a", 1)?;
    /// assert_eq!(d.get_many(&["a", "b"])?, [Some(1), None]);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        self.runtime.block_on(self.inner.get_many(keys))?
    }

    /// See [`crate::LiveDict::set_many`].
    ///
    /// ```
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// d.set_many(vec![("a", 1), ("b", 2)], None)?;
    /// assert_eq!(d.len()?, 2);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn set_many<K: AsRef<str>>(&self, entries: Vec<(K, V)>, ttl: Option<Duration>) -> Result<()> {
        self.runtime.block_on(self.inner.set_many(entries, ttl))?
    }

    /// See [`crate::LiveDict::delete_many`].
    ///
    /// ```
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// d.set_many(vec![("a", 1), ("b", 2)], None)?;
    /// assert_eq!(d.delete_many(&["a", "b", "c"])?, 2);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn delete_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<usize> {
        self.runtime.block_on(self.inner.delete_many(keys))?
    }
}

/// The blocking twin of [`crate::Watch`]: a live event stream read without `.await`.
///
/// As an [`Iterator`] it yields items until the store is shut down (and,
/// if it is misused inside an async runtime, ends at once).
///
/// ```
/// use livedict::{EventKind, WatchFilter};
/// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
/// let w = d.watch(WatchFilter::kinds([EventKind::Delete]))?;
/// d.set("a", 1)?;
/// d.delete("a")?;
/// d.shutdown()?;
/// let deleted: Vec<_> = w.filter_map(|i| i.event().map(|e| e.key().to_string())).collect();
/// assert_eq!(deleted, ["a"]);
/// # Ok::<(), livedict::Error>(())
/// ```
pub struct Watch<V: Send + Sync + 'static> {
    inner: crate::Watch<V>,
    runtime: Arc<OwnedRuntime>,
}

impl<V: Send + Sync + 'static> std::fmt::Debug for Watch<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::Watch").field("inner", &self.inner).finish()
    }
}

impl<V: Send + Sync + 'static> Watch<V> {
    /// Waits for the next item; `Ok(None)` once the store is shut down and
    /// the queue is empty. See [`crate::Watch::recv`].
    ///
    /// ```
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// let mut w = d.watch(livedict::WatchFilter::new())?;
    /// d.set("k", 1)?;
    /// assert_eq!(w.recv()?.unwrap().event().unwrap().key(), "k");
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn recv(&mut self) -> Result<Option<WatchItem<V>>> {
        self.runtime.block_on(self.inner.recv())
    }

    /// The next item if one is queued, without waiting.
    ///
    /// ```
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// let mut w = d.watch(livedict::WatchFilter::new())?;
    /// assert!(w.try_recv().is_none());
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn try_recv(&mut self) -> Option<WatchItem<V>> {
        self.inner.try_recv()
    }
}

impl<V: Send + Sync + 'static> Iterator for Watch<V> {
    type Item = WatchItem<V>;

    fn next(&mut self) -> Option<WatchItem<V>> {
        self.recv().ok().flatten()
    }
}

/// The blocking twin of [`crate::KeyGuard`]; dropping it releases the lock.
pub struct KeyGuard<V> {
    guard: Option<crate::KeyGuard<V>>,
    runtime: Arc<OwnedRuntime>,
}

impl<V> std::fmt::Debug for KeyGuard<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::KeyGuard").field("guard", &self.guard).finish()
    }
}

impl<V: Value> KeyGuard<V> {
    fn guard(&self) -> &crate::KeyGuard<V> {
        // Invariant: `guard` is only taken by `unlock(self)` and `drop`.
        self.guard.as_ref().expect("guard present until unlock or drop")
    }

    /// The locked key.
    pub fn key(&self) -> &str {
        self.guard().key()
    }

    /// See [`crate::KeyGuard::fence`].
    pub fn fence(&self) -> u64 {
        self.guard().fence()
    }

    /// See [`crate::KeyGuard::get`].
    pub fn get(&self) -> Result<Option<V>> {
        self.runtime.block_on(self.guard().get())?
    }

    /// See [`crate::KeyGuard::set`].
    pub fn set(&self, value: V) -> Result<()> {
        self.runtime.block_on(self.guard().set(value))?
    }

    /// See [`crate::KeyGuard::set_with_ttl`].
    pub fn set_with_ttl(&self, value: V, ttl: Duration) -> Result<()> {
        self.runtime.block_on(self.guard().set_with_ttl(value, ttl))?
    }

    /// See [`crate::KeyGuard::delete`].
    pub fn delete(&self) -> Result<bool> {
        self.runtime.block_on(self.guard().delete())?
    }

    /// See [`crate::KeyGuard::renew`].
    pub fn renew(&self) -> Result<()> {
        self.runtime.block_on(self.guard().renew())?
    }

    /// See [`crate::KeyGuard::unlock`].
    pub fn unlock(mut self) -> Result<()> {
        match self.guard.take() {
            Some(guard) => self.runtime.block_on(guard.unlock())?,
            None => Ok(()),
        }
    }
}

impl<V> Drop for KeyGuard<V> {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            // Release needs the runtime's context (timers, spawning).
            let _entered = self.runtime.0.as_ref().map(Runtime::enter);
            drop(guard);
        }
    }
}

impl<V: Value> Builder<V> {
    /// Builds a blocking `LiveDict` on its own runtime.
    ///
    /// ```
    /// let d = livedict::LiveDict::<u32>::builder().memory().build_blocking()?;
    /// d.set("a", 1)?;
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn build_blocking(self) -> Result<LiveDict<V>> {
        LiveDict::from_builder(self)
    }
}

// --- Streaming prefix scans (`scan`, `scan_keys`) ---

impl<V: Value> LiveDict<V> {
    /// See [`crate::LiveDict::scan`]: the live entries whose key starts with
    /// `prefix`, as an iterator that reads one page at a time on the facade's
    /// runtime (exactly once in key order on memory and SQLite).
    ///
    /// ```
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// d.set("user:2", 2)?;
    /// d.set("user:1", 1)?;
    /// d.set("order:1", 9)?;
    /// let users = d.scan("user:").collect::<livedict::Result<Vec<_>>>()?;
    /// assert_eq!(users, [("user:1".to_string(), 1), ("user:2".to_string(), 2)]);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn scan(&self, prefix: &str) -> Scan<(String, V)> {
        Scan { stream: Box::pin(self.inner.scan(prefix)), runtime: Arc::clone(&self.runtime), done: false }
    }

    /// See [`crate::LiveDict::scan_keys`]: the live keys that start with
    /// `prefix`, read one page at a time.
    ///
    /// ```
    /// let d = livedict::blocking::LiveDict::<u32>::open("memory://")?;
    /// d.set("b", 2)?;
    /// d.set("a", 1)?;
    /// let keys = d.scan_keys("").collect::<livedict::Result<Vec<_>>>()?;
    /// assert_eq!(keys, ["a", "b"]);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn scan_keys(&self, prefix: &str) -> Scan<String> {
        Scan {
            stream: Box::pin(self.inner.scan_keys(prefix)),
            runtime: Arc::clone(&self.runtime),
            done: false,
        }
    }
}

/// The iterator of a blocking [`LiveDict::scan`] or [`LiveDict::scan_keys`]:
/// each `next` that needs a new page reads it on the facade's runtime (at
/// most one page is held). An error is the last item; inside an async
/// runtime the first item is [`Error::InsideRuntime`].
pub struct Scan<T> {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = Result<T>> + Send>>,
    runtime: Arc<OwnedRuntime>,
    done: bool,
}

impl<T> std::fmt::Debug for Scan<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::Scan").field("done", &self.done).finish()
    }
}

impl<T> Iterator for Scan<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        let item = match self.runtime.block_on(futures::StreamExt::next(&mut self.stream)) {
            Ok(item) => item,
            Err(e) => Some(Err(e)),
        };
        self.done = matches!(item, None | Some(Err(_)));
        item
    }
}
