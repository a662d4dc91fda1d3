//! Single-flight loading: [`LiveDict::get_or_insert_with`] (the table of loads in flight is `flights.rs`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use super::atomic::{ATOMIC_LOCK_TIMEOUT, guarded_set, release};
use super::dict::LiveDict;
use crate::Value;
use crate::error::{Error, Result};
use crate::request::{validate_key, validate_ttl};

/// Removes its load's table entry when the load completes or is dropped.
struct FlightEntry<V: Value> {
    dict: LiveDict<V>,
    key: String,
    id: u64,
}

impl<V: Value> Drop for FlightEntry<V> {
    fn drop(&mut self) {
        self.dict.inner.flights.finish(&self.key, self.id);
    }
}

impl<V: Value> LiveDict<V> {
    /// The live value of `key`, or — if it is missing — the value `loader`
    /// produces, stored with `ttl` (`None`: like [`set`](Self::set), the
    /// builder's default TTL, else no expiry) and returned.
    ///
    /// **Single flight.** Concurrent callers for the same missing key share
    /// one load: the loader runs once and every caller gets its value. A
    /// loader error reaches every caller of that load as [`Error::Loader`]
    /// (one shared source) and nothing is stored; the next call loads afresh.
    /// Within a process this holds on every backend. Across processes on
    /// SQLite and Redis the load runs under the key's distributed lock
    /// (check, lock, re-check, load, store, unlock), so a process that finds
    /// another one loading waits for it and then reads its value instead of
    /// loading again. A load must finish within the lock lease (default
    /// 30 s), else the store fails with [`Error::LockLost`]; the lock is
    /// waited for up to [`ATOMIC_LOCK_TIMEOUT`](crate::ATOMIC_LOCK_TIMEOUT).
    ///
    /// The load runs inside the callers' futures: if every waiting caller is
    /// dropped, the load is dropped too (releasing the key's lock) and the
    /// next caller starts over. A failure of the store itself (not of the
    /// loader) also reaches every waiter of that load.
    ///
    /// The loader may return any error convertible into
    /// `Box<dyn std::error::Error + Send + Sync>` (a `std` error, `String`,
    /// `anyhow::Error`, ...).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use std::time::Duration;
    /// let d = livedict::LiveDict::<String>::open("memory://").await?;
    /// let load = || async { Ok::<_, std::io::Error>("from the database".to_string()) };
    /// let v = d.get_or_insert_with("user:1", Some(Duration::from_secs(60)), load).await?;
    /// assert_eq!(v, "from the database");
    /// // Cached now: this loader is never called.
    /// let v = d.get_or_insert_with("user:1", None, || async { Err::<String, _>("unreachable") }).await?;
    /// assert_eq!(v, "from the database");
    ///
    /// let err = d.get_or_insert_with("user:2", None, || async { Err::<String, _>("db down") }).await;
    /// assert!(matches!(err, Err(livedict::Error::Loader { .. })));
    /// assert!(!d.exists("user:2").await?); // nothing cached
    /// # Ok(()) }
    /// ```
    pub async fn get_or_insert_with<F, Fut, E>(
        &self,
        key: impl AsRef<str>,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let key = key.as_ref();
        validate_key(key)?;
        if let Some(ttl) = ttl {
            validate_ttl(ttl)?;
        }
        if let Some(value) = self.get(key).await? {
            return Ok(value);
        }
        let ttl = ttl.or(self.inner.default_ttl);
        let load = self.inner.flights.join(key, |id| {
            let entry = FlightEntry { dict: self.clone(), key: key.to_owned(), id };
            load_once(entry, ttl, loader).map(|r| r.map_err(Arc::new)).boxed()
        });
        load.await.map_err(|e| duplicate(&e))
    }
}

/// One load: lock, re-check, run the loader, store, unlock.
async fn load_once<V, F, Fut, E>(entry: FlightEntry<V>, ttl: Option<Duration>, loader: F) -> Result<V>
where
    V: Value,
    F: FnOnce() -> Fut,
    Fut: Future<Output = std::result::Result<V, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let guard = entry.dict.lock(&entry.key, ATOMIC_LOCK_TIMEOUT).await?;
    // Another process (or a load that finished just before this one started)
    // may have stored the value while this one waited for the lock.
    if let Some(value) = guard.get().await? {
        release(guard).await;
        return Ok(value);
    }
    let value =
        loader().await.map_err(|e| Error::Loader { key: entry.key.clone(), source: Arc::from(e.into()) })?;
    guarded_set(&guard, value.clone(), ttl).await?;
    release(guard).await;
    Ok(value)
}

/// A copy of a shared error for one of the callers that waited on a load.
/// Same variant and fields; a boxed source (not cloneable) is represented by
/// a wrapper that shows and chains the original.
fn duplicate(e: &Arc<Error>) -> Error {
    let shared = || -> Box<dyn std::error::Error + Send + Sync> { Box::new(SharedSource(Arc::clone(e))) };
    match &**e {
        Error::InvalidKey { reason } => Error::InvalidKey { reason },
        Error::InvalidTtl { ttl, reason } => Error::InvalidTtl { ttl: *ttl, reason },
        Error::InvalidUrl { url, reason } => Error::InvalidUrl { url: url.clone(), reason: reason.clone() },
        Error::InvalidConfig(msg) => Error::InvalidConfig(msg.clone()),
        Error::LockTimeout { key } => Error::LockTimeout { key: key.clone() },
        Error::LockLost { key } => Error::LockLost { key: key.clone() },
        Error::Timeout { op, after } => Error::Timeout { op, after: *after },
        Error::Decode { key, .. } => Error::Decode { key: key.clone(), source: shared() },
        Error::Encode { key, .. } => Error::Encode { key: key.clone(), source: shared() },
        Error::Backend { backend, context, source: inner } => {
            Error::Backend { backend, context: context.clone(), source: inner.as_ref().map(|_| shared()) }
        }
        Error::Closed => Error::Closed,
        Error::InsideRuntime => Error::InsideRuntime,
        Error::Loader { key, source } => Error::Loader { key: key.clone(), source: Arc::clone(source) },
        Error::Overflow { key, delta } => Error::Overflow { key: key.clone(), delta: *delta },
    }
}

/// Stands for the source of a shared error: displays it and chains to its source.
struct SharedSource(Arc<Error>);

impl SharedSource {
    fn original(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

impl fmt::Debug for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.original() {
            Some(s) => fmt::Debug::fmt(s, f),
            None => fmt::Debug::fmt(&*self.0, f),
        }
    }
}

impl fmt::Display for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.original() {
            Some(s) => fmt::Display::fmt(s, f),
            None => fmt::Display::fmt(&*self.0, f),
        }
    }
}

impl std::error::Error for SharedSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.original().and_then(|s| s.source())
    }
}
