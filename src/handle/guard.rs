//! [`KeyGuard`]: a held per-key lock, released on drop.

use std::task::Context;
use std::time::Duration;

use tokio::runtime::Handle;

use super::dict::LiveDict;
use crate::Value;
use crate::error::Result;
use crate::layer::LockLayer;
use crate::request::{LockGrant, LockToken, Request, Response, validate_key};

/// A held lock on one key. Writes through the guard pass the lock; dropping
/// the guard (or [`unlock`](KeyGuard::unlock)) releases it.
///
/// On SQLite and Redis the lock has a lease; a write after the lease ran out
/// (another holder may have taken the key) fails
/// instead of overwriting ([`Error::LockLost`](crate::Error::LockLost)). [`renew`](KeyGuard::renew) extends the lease.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use std::time::Duration;
/// let d = livedict::LiveDict::<u32>::open("memory://").await?;
/// {
///     let g = d.lock("k", Duration::from_secs(1)).await?;
///     g.set(1).await?;
/// } // released here
/// let g = d.lock("k", Duration::from_millis(10)).await?;
/// assert_eq!(g.get().await?, Some(1));
/// # Ok(()) }
/// ```
pub struct KeyGuard<V> {
    dict: LiveDict<V>,
    key: String,
    token: LockToken,
    grant: LockGrant,
    release: Release,
    released: bool,
}

/// How a guard gives its lock back.
enum Release {
    /// Taken on the direct path (memory): released in the lock table, at
    /// once, without a request (see `direct.rs`).
    Table(LockLayer),
    /// Taken through the stack: an `Unlock` request through it.
    Stack(ReleaseFn),
}

impl<V> std::fmt::Debug for KeyGuard<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyGuard").field("key", &self.key).field("grant", &self.grant).finish()
    }
}

impl<V: Value> KeyGuard<V> {
    pub(crate) fn new(dict: LiveDict<V>, key: String, token: LockToken, grant: LockGrant) -> Self {
        let release = Release::Stack(release_on_drop(&dict, &key, &token));
        KeyGuard { dict, key, token, grant, release, released: false }
    }

    /// A guard for a lock the direct path took in `locks` (memory: a local grant).
    fn direct(dict: LiveDict<V>, key: String, token: LockToken, locks: LockLayer) -> Self {
        KeyGuard {
            dict,
            key,
            token,
            grant: LockGrant::local(),
            release: Release::Table(locks),
            released: false,
        }
    }

    /// The locked key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing counter of this acquisition (strictly increasing per key
    /// on SQLite and Redis; 0 on memory).
    pub fn fence(&self) -> u64 {
        self.grant.fence
    }

    /// The lease after which a distributed lock frees itself (`None` on memory).
    pub fn lease(&self) -> Option<Duration> {
        self.grant.lease
    }

    /// Reads the locked key.
    pub async fn get(&self) -> Result<Option<V>> {
        self.dict.get(&self.key).await
    }

    /// Stores a value under the locked key, without expiry.
    pub async fn set(&self, value: V) -> Result<()> {
        self.dict.write_set(&self.key, value, None, Some(self.token.clone())).await
    }

    /// Stores a value under the locked key, expiring `ttl` from now.
    pub async fn set_with_ttl(&self, value: V, ttl: Duration) -> Result<()> {
        crate::request::validate_ttl(ttl)?;
        self.dict.write_set(&self.key, value, Some(ttl), Some(self.token.clone())).await
    }

    /// Deletes the locked key; true if a live value was removed.
    pub async fn delete(&self) -> Result<bool> {
        self.dict.write_delete(&self.key, Some(self.token.clone())).await
    }

    /// Changes the deadline of the locked key.
    pub async fn expire(&self, ttl: Duration) -> Result<bool> {
        self.dict.write_expire(&self.key, ttl, Some(self.token.clone())).await
    }

    /// Extends the lease of a distributed lock; [`Error::LockLost`](crate::Error::LockLost) if it already ran out.
    pub async fn renew(&self) -> Result<()> {
        let req = Request::Renew { key: self.key.clone(), token: self.token.clone() };
        match self.dict.call(req).await? {
            Response::Done => Ok(()),
            _ => Err(Response::<V>::mismatch("renew")),
        }
    }

    /// Releases the lock now and reports a backend error, which dropping cannot.
    pub async fn unlock(mut self) -> Result<()> {
        LiveDict::<V>::yield_point().await;
        self.released = true;
        if let Release::Table(locks) = &self.release {
            locks.release(&self.key, &self.token);
            return Ok(());
        }
        let req = Request::Unlock { key: self.key.clone(), token: self.token.clone() };
        self.dict.inner.service.call(req).await.map(|_| ())
    }
}

impl<V> Drop for KeyGuard<V> {
    fn drop(&mut self) {
        if !self.released {
            self.released = true;
            match &mut self.release {
                Release::Table(locks) => locks.release(&self.key, &self.token),
                Release::Stack(release) => release(),
            }
        }
    }
}

/// Builds the release that runs when a guard is dropped: the memory backend
/// releases at once; a distributed release that must wait for I/O continues as
/// a task on the runtime the lock was taken on.
fn release_on_drop<V: Value>(dict: &LiveDict<V>, key: &str, token: &LockToken) -> ReleaseFn {
    let service = dict.inner.service.clone();
    let req = Request::Unlock { key: key.to_owned(), token: token.clone() };
    let runtime = Handle::try_current().ok();
    let mut once = Some((service, req));
    Box::new(move || {
        let Some((service, req)) = once.take() else {
            return;
        };
        let _entered = runtime.as_ref().map(Handle::enter);
        let mut release = service.call(req);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        if release.as_mut().poll(&mut cx).is_pending()
            && let Some(rt) = &runtime
        {
            rt.spawn(async move {
                if let Err(e) = release.await {
                    tracing::warn!(error = %e, "releasing a dropped lock failed; its lease will free it");
                }
            });
        }
    })
}

type ReleaseFn = Box<dyn FnMut() + Send + Sync>;

impl<V: Value> LiveDict<V> {
    /// Waits up to `timeout` for the lock of `key`, else [`Error::LockTimeout`](crate::Error::LockTimeout).
    ///
    /// While held, writes to `key` through any other handle wait (up to their
    /// request timeout); reads do not. On SQLite and Redis the lock holds
    /// across processes and carries a lease. Dropping the guard releases it.
    ///
    /// **Redis memory policy.** On a Redis server whose `maxmemory-policy`
    /// may evict (`allkeys-*`, or `volatile-*`: lock keys carry a Redis TTL),
    /// Redis can drop the lock key before its lease ends. The lock is then
    /// never silently shared: every guarded write of this guard fails with
    /// [`Error::LockLost`](crate::Error::LockLost), even after another holder
    /// took the key. But it no longer excludes the others: for mutual
    /// exclusion, run Redis with `noeviction` (or open with `eviction=refuse`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use std::time::Duration;
    /// let d = livedict::LiveDict::<u64>::open("memory://").await?;
    /// let guard = d.lock("counter", Duration::from_secs(1)).await?;
    /// let n = guard.get().await?.unwrap_or(0);
    /// guard.set(n + 1).await?;
    /// guard.unlock().await?;
    /// assert_eq!(d.get("counter").await?, Some(1));
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self, key: impl AsRef<str>, timeout: Duration) -> Result<KeyGuard<V>> {
        let key = key.as_ref();
        validate_key(key)?;
        Self::yield_point().await;
        let token = LockToken::new();
        // Uncontended on memory: taken in the lock table, without the stack.
        if let Some(locks) = self.direct().and_then(|direct| direct.try_lock(key, &token)) {
            return Ok(KeyGuard::direct(self.clone(), key.to_owned(), token, locks.clone()));
        }
        match self.call_spent(Request::Lock { key: key.to_owned(), timeout, token: token.clone() }).await? {
            Response::Locked(grant) => Ok(KeyGuard::new(self.clone(), key.to_owned(), token, grant)),
            _ => Err(Response::<V>::mismatch("lock")),
        }
    }
}
