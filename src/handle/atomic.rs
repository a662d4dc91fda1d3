//! Atomic read-modify-write on one key: [`LiveDict::update`], [`LiveDict::incr`],
//! [`LiveDict::compare_and_set`], [`LiveDict::compare_and_set_with_ttl`].
//!
//! On Redis, `incr` and `compare_and_set` are one script call that checks
//! the key's lock like any write ([`Request::Incr`], [`Request::CompareAndSet`]).
//! Otherwise each runs under the key's lock ([`LiveDict::lock`]): take the lock, read,
//! decide, write through the guard, release. The lock is enforced against
//! every other writer of the key (plain `set`/`delete`/`expire` wait while it
//! is held) and, on SQLite and Redis, held across every process sharing the
//! file or namespace, with a lease and fenced writes. So no concurrent write
//! from any handle or process can slip between the read and the write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::Value;
use crate::error::{Error, Result};
use crate::handle::dict::LiveDict;
use crate::handle::guard::KeyGuard;
use crate::request::{Request, Response, validate_key};

/// How long [`update`](LiveDict::update), [`incr`](LiveDict::incr),
/// [`compare_and_set`](LiveDict::compare_and_set) and
/// [`get_or_insert_with`](LiveDict::get_or_insert_with) wait for the key's
/// lock before failing with [`Error::LockTimeout`] (30 s).
///
/// ```
/// assert_eq!(livedict::ATOMIC_LOCK_TIMEOUT.as_secs(), 30);
/// ```
pub const ATOMIC_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Optimistic rounds of [`update`](LiveDict::update) (read, compare-and-set)
/// before it takes the key's lock.
const OPTIMISTIC_ATTEMPTS: usize = 4;

/// What a read-modify-write decided to do with the key.
pub(crate) enum Change<V> {
    /// Leave the key as it is (no write, no event).
    Keep,
    /// Store this value.
    Set(V),
    /// Remove the key.
    Delete,
}

impl<V: Value> LiveDict<V> {
    /// Atomically replaces the value of `key` with `f(current)` and returns
    /// the new value; `f` returning `None` deletes the key.
    ///
    /// `f` sees the live value (`None` if the key is missing or expired), and
    /// no other write to the key — from this handle, another handle, or
    /// (SQLite, Redis) another process — lands between the read and the write.
    ///
    /// On Redis the update is optimistic: read, call `f`, store only if the
    /// stored value is still the one read (one script call that also waits
    /// for any lock holder), else read again — two round trips without
    /// contention. So `f` may run more than once, each time on the current
    /// value, and must not have side effects that must happen once (it is an
    /// `FnMut`, like `AtomicU64::fetch_update`'s). After a few lost races, a
    /// delete, or on the other backends, `update` takes the key's lock, reads
    /// and writes under it (waiting up to [`ATOMIC_LOCK_TIMEOUT`]). `f` must
    /// not write to `key` itself.
    ///
    /// **TTL:** the new value is stored like [`set`](Self::set) — with the
    /// builder's default TTL if one is configured, otherwise without expiry;
    /// an earlier deadline is dropped (the last write decides the deadline).
    /// Use [`update_with_ttl`](Self::update_with_ttl) to give it a deadline.
    /// `f` returning `None` for a missing key writes nothing.
    ///
    /// Fires a `Set` event (or a `Delete` event if something was removed),
    /// like the plain write would.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// let d = livedict::LiveDict::<Vec<String>>::open("memory://").await?;
    /// let list = d.update("names", |cur| {
    ///     let mut names = cur.unwrap_or_default();
    ///     names.push("ada".to_string());
    ///     Some(names)
    /// }).await?;
    /// assert_eq!(list, Some(vec!["ada".to_string()]));
    /// assert_eq!(d.update("names", |_| None).await?, None); // deleted
    /// assert!(!d.exists("names").await?);
    /// # Ok(()) }
    /// ```
    pub async fn update<F>(&self, key: impl AsRef<str>, f: F) -> Result<Option<V>>
    where
        F: FnMut(Option<V>) -> Option<V>,
    {
        self.update_inner(key.as_ref(), self.inner.default_ttl, f).await
    }

    /// Like [`update`](Self::update), but the new value expires `ttl` from
    /// now (whatever deadline the old value had).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use std::time::Duration;
    /// let d = livedict::LiveDict::<u32>::open("memory://").await?;
    /// let hits = d.update_with_ttl("hits", Duration::from_secs(60), |n| Some(n.unwrap_or(0) + 1)).await?;
    /// assert_eq!(hits, Some(1));
    /// assert!(d.ttl("hits").await?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn update_with_ttl<F>(&self, key: impl AsRef<str>, ttl: Duration, f: F) -> Result<Option<V>>
    where
        F: FnMut(Option<V>) -> Option<V>,
    {
        crate::request::validate_ttl(ttl)?;
        self.update_inner(key.as_ref(), Some(ttl), f).await
    }

    async fn update_inner<F>(&self, key: &str, ttl: Option<Duration>, mut f: F) -> Result<Option<V>>
    where
        F: FnMut(Option<V>) -> Option<V>,
    {
        if self.inner.native_cas.load(Ordering::Relaxed) {
            validate_key(key)?;
            for _ in 0..OPTIMISTIC_ATTEMPTS {
                let current = self.get(key).await?;
                let existed = current.is_some();
                let Some(new) = f(current.clone()) else {
                    if existed {
                        break; // a delete: under the lock
                    }
                    return Ok(None);
                };
                // Compared as stored bytes only (`V` need not be `PartialEq`):
                // a value whose encoding is not canonical retries, then locks.
                let req = Request::CompareAndSet {
                    key: key.to_owned(),
                    expected: current,
                    new: new.clone(),
                    ttl,
                    eq: |_, _| false,
                };
                match self.one_step(req, &self.inner.native_cas).await? {
                    Some(Some(_)) => return Ok(Some(new)),
                    Some(None) => continue, // another write came first: read again
                    None => break,
                }
            }
        }
        self.read_modify_write(key, ttl, |current| {
            let existed = current.is_some();
            Ok(match f(current) {
                Some(new) => (Change::Set(new.clone()), Some(new)),
                None if existed => (Change::Delete, None),
                None => (Change::Keep, None),
            })
        })
        .await
    }

    /// Stores `new` under `key` only if the live value equals `expected`
    /// (`None`: only if the key is missing); true if it was stored.
    ///
    /// Atomic in the same way as [`update`](Self::update) (under the key's
    /// lock, across processes on SQLite and Redis), and stores like
    /// [`set`](Self::set) (the builder's default TTL, else no expiry). A
    /// failed comparison writes nothing and fires no event.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// let d = livedict::LiveDict::<String>::open("memory://").await?;
    /// assert!(d.compare_and_set("leader", None, "node-a".into()).await?); // insert if absent
    /// assert!(!d.compare_and_set("leader", None, "node-b".into()).await?);
    /// let a = "node-a".to_string();
    /// assert!(d.compare_and_set("leader", Some(&a), "node-b".into()).await?);
    /// assert_eq!(d.get("leader").await?.as_deref(), Some("node-b"));
    /// # Ok(()) }
    /// ```
    pub async fn compare_and_set(&self, key: impl AsRef<str>, expected: Option<&V>, new: V) -> Result<bool>
    where
        V: PartialEq,
    {
        self.compare_and_set_inner(key.as_ref(), expected, new, self.inner.default_ttl).await
    }

    /// Like [`compare_and_set`](Self::compare_and_set), but a stored value
    /// expires `ttl` from now: the comparison, the write and the deadline
    /// are one atomic step (no moment where the new value lives without its
    /// deadline). `compare_and_set_with_ttl(key, None, v, ttl)` is an atomic
    /// insert-if-absent with a TTL.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use std::time::Duration;
    /// let d = livedict::LiveDict::<String>::open("memory://").await?;
    /// let lease = Duration::from_secs(10);
    /// assert!(d.compare_and_set_with_ttl("leader", None, "node-a".into(), lease).await?);
    /// assert!(!d.compare_and_set_with_ttl("leader", None, "node-b".into(), lease).await?);
    /// assert!(d.ttl("leader").await?.is_some_and(|left| left <= lease));
    /// # Ok(()) }
    /// ```
    pub async fn compare_and_set_with_ttl(
        &self,
        key: impl AsRef<str>,
        expected: Option<&V>,
        new: V,
        ttl: Duration,
    ) -> Result<bool>
    where
        V: PartialEq,
    {
        crate::request::validate_ttl(ttl)?;
        self.compare_and_set_inner(key.as_ref(), expected, new, Some(ttl)).await
    }

    async fn compare_and_set_inner(
        &self,
        key: &str,
        expected: Option<&V>,
        new: V,
        ttl: Option<Duration>,
    ) -> Result<bool>
    where
        V: PartialEq,
    {
        if self.inner.native_cas.load(Ordering::Relaxed) {
            validate_key(key)?;
            let req = Request::CompareAndSet {
                key: key.to_owned(),
                expected: expected.cloned(),
                new: new.clone(),
                ttl,
                eq: |a: &V, b: &V| a == b,
            };
            if let Some(written) = self.one_step(req, &self.inner.native_cas).await? {
                return Ok(written.is_some());
            }
        }
        self.read_modify_write(key, ttl, |current| {
            Ok(if current.as_ref() == expected { (Change::Set(new), true) } else { (Change::Keep, false) })
        })
        .await
    }

    /// Atomically adds `delta` to the integer stored under `key` (a missing
    /// key counts as 0) and returns the new value.
    ///
    /// Works for every value type that converts to and from `i64`
    /// (`i8`..`i64`, `u8`..`u64`, `isize`, `usize`, `i128`, `u128`): the
    /// arithmetic is done in `i64` and the result must fit back into `V`,
    /// else [`Error::Overflow`] and nothing is written (so a `u64` counter
    /// cannot go below 0). Atomic like [`update`](Self::update), across
    /// processes on SQLite and Redis.
    ///
    /// **TTL:** stores like [`set`](Self::set) (the builder's default TTL,
    /// else no expiry; an earlier deadline is dropped). For a counter with a
    /// deadline use [`update_with_ttl`](Self::update_with_ttl).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// let d = livedict::LiveDict::<u64>::open("memory://").await?;
    /// assert_eq!(d.incr("visits", 1).await?, 1);
    /// assert_eq!(d.incr("visits", 41).await?, 42);
    /// assert!(matches!(d.incr("visits", -43).await, Err(livedict::Error::Overflow { .. })));
    /// assert_eq!(d.get("visits").await?, Some(42));
    /// # Ok(()) }
    /// ```
    pub async fn incr(&self, key: impl AsRef<str>, delta: i64) -> Result<V>
    where
        V: TryFrom<i64> + TryInto<i64>,
    {
        let key = key.as_ref();
        let overflow = || Error::Overflow { key: key.to_owned(), delta };
        if self.inner.native_incr.load(Ordering::Relaxed)
            && let Some(range) = int_range::<V>()
        {
            validate_key(key)?;
            let req = Request::Incr {
                key: key.to_owned(),
                delta,
                ttl: self.inner.default_ttl,
                range,
                value_of: |n| V::try_from(n).ok(),
            };
            if let Some(written) = self.one_step(req, &self.inner.native_incr).await? {
                return written.ok_or_else(overflow);
            }
        }
        self.read_modify_write(key, self.inner.default_ttl, |current| {
            let old: i64 = match current {
                Some(v) => v.try_into().map_err(|_| overflow())?,
                None => 0,
            };
            let new = old.checked_add(delta).ok_or_else(overflow)?;
            let new = V::try_from(new).map_err(|_| overflow())?;
            Ok((Change::Set(new.clone()), new))
        })
        .await
    }

    /// Offers `req` (`Incr` or `CompareAndSet`) to the backend as one step:
    /// `Some` with what it wrote, or `None` if it has no such step (then
    /// `native` is cleared, so this handle locks the key from now on).
    async fn one_step(&self, req: Request<V>, native: &AtomicBool) -> Result<Option<Option<V>>> {
        let op = req.op();
        match self.call(req).await? {
            Response::Written(written) => Ok(Some(written)),
            Response::Unsupported => {
                native.store(false, Ordering::Relaxed);
                Ok(None)
            }
            _ => Err(Response::<V>::mismatch(op)),
        }
    }

    /// Locks `key`, reads it, lets `decide` choose the change and the result,
    /// applies the change through the guard (storing with `ttl`), releases.
    pub(crate) async fn read_modify_write<T>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        decide: impl FnOnce(Option<V>) -> Result<(Change<V>, T)>,
    ) -> Result<T> {
        let guard = self.lock(key, ATOMIC_LOCK_TIMEOUT).await?;
        let current = guard.get().await?;
        let (change, out) = decide(current)?;
        match change {
            Change::Keep => {}
            Change::Set(value) => guarded_set(&guard, value, ttl).await?,
            Change::Delete => {
                guard.delete().await?;
            }
        }
        release(guard).await;
        Ok(out)
    }
}

/// Stores through the guard with `ttl` (`None`: no expiry).
pub(crate) async fn guarded_set<V: Value>(
    guard: &KeyGuard<V>,
    value: V,
    ttl: Option<Duration>,
) -> Result<()> {
    match ttl {
        Some(ttl) => guard.set_with_ttl(value, ttl).await,
        None => guard.set(value).await,
    }
}

/// Releases a lock after its write succeeded. A failed release is not the
/// caller's error (the write happened; reporting failure would invite a
/// retry that applies it twice): it is logged and the lease frees the key.
pub(crate) async fn release<V: Value>(guard: KeyGuard<V>) {
    let key = guard.key().to_owned();
    if let Err(e) = guard.unlock().await {
        tracing::warn!(key = %key, error = %e, "releasing a lock after a read-modify-write failed; its lease will free it");
    }
}

/// The integers `V` holds, as `(smallest, largest)`, if they form one range
/// around 0 (found by bisection on `TryFrom<i64>`; `None` if 0 does not convert).
fn int_range<V: TryFrom<i64>>() -> Option<(i64, i64)> {
    V::try_from(0).ok()?;
    let fits = |n: i128| i64::try_from(n).is_ok_and(|n| V::try_from(n).is_ok());
    // The largest n >= 0 that fits.
    let (mut lo, mut hi) = (0i128, i128::from(i64::MAX));
    while lo < hi {
        let mid = (lo + hi + 1) / 2;
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    let max = lo;
    // The smallest n <= 0 that fits.
    let (mut lo, mut hi) = (i128::from(i64::MIN), 0i128);
    while lo < hi {
        let mid = (lo + hi).div_euclid(2);
        if fits(mid) { hi = mid } else { lo = mid + 1 }
    }
    Some((hi as i64, max as i64))
}

#[cfg(test)]
mod tests {
    use super::int_range;

    #[test]
    fn int_ranges_of_the_integer_types() {
        assert_eq!(int_range::<u8>(), Some((0, 255)));
        assert_eq!(int_range::<i8>(), Some((-128, 127)));
        assert_eq!(int_range::<u32>(), Some((0, u32::MAX as i64)));
        assert_eq!(int_range::<i64>(), Some((i64::MIN, i64::MAX)));
        assert_eq!(int_range::<u64>(), Some((0, i64::MAX)));
        assert_eq!(int_range::<i128>(), Some((i64::MIN, i64::MAX)));
        struct Positive;
        impl TryFrom<i64> for Positive {
            type Error = ();
            fn try_from(n: i64) -> Result<Self, ()> {
                if n > 0 { Ok(Positive) } else { Err(()) }
            }
        }
        assert!(int_range::<Positive>().is_none());
    }
}
