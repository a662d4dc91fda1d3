//! Distributed rate limiting (feature `ratelimit`): one limit shared by every
//! handle, task and process on the same store.
//!
//! A [`RateLimiter`] applies a [`Quota`] with the generic cell rate algorithm
//! (GCRA, as `governor` and redis-cell do) to any key of a
//! [`LiveDict<u64>`](crate::LiveDict). Each [`check`](RateLimiter::check) is
//! **one atomic step** of the backend, however many callers contend for the
//! key: one shard lock on memory, one write of the writer's group-commit
//! transaction on SQLite, one script call on Redis (using the server's
//! `TIME`, so the instances' clocks do not matter; on a cluster the key's
//! state lives in one slot). Instances that share an SQLite file or a Redis
//! namespace share one limit: three instances behind a load balancer with
//! `Quota::per_second(100)` allow 100 per second in total, not 300.
//!
//! **State.** A key's state is one entry: its theoretical arrival time (an
//! integer, microseconds of the backend's clock), stored with a TTL equal to
//! the time until the bucket is full again. A key that stays idle that long
//! leaves no state: a million one-off clients do not grow the store. Use a
//! store of its own (a namespace, a table, a `memory://` store) without
//! `time_to_idle`: an idle deadline before the refill would forget spent
//! cells, so a check on such a store is [`Error::InvalidConfig`]. On Redis
//! the store needs the JSON codec (the script reads and writes the arrival
//! time as digits).
//!
//! **Events.** A check that takes cells writes the new arrival time: a `Set`
//! event for the key, with that value, to `Set` listeners of the store. A
//! denied check (and a check of cost 0) writes nothing and fires nothing.
//! When the bucket has refilled, the entry expires: an `Expire` event.
//!
//! [`RateLimitLayer`] puts a limiter in front of any `http` service (axum,
//! hyper, tonic): `429 Too Many Requests` with `Retry-After` and the IETF
//! `RateLimit-Policy` / `RateLimit` header fields.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
//! use livedict::LiveDict;
//! use livedict::ratelimit::{Quota, RateLimiter};
//!
//! let limiter = RateLimiter::new(LiveDict::open("memory://").await?, Quota::per_second(10).allow_burst(2));
//! assert!(limiter.check("user:42").await?.allowed());
//! assert!(limiter.check("user:42").await?.allowed());
//! let denied = limiter.check("user:42").await?;
//! assert!(!denied.allowed());
//! assert!(denied.retry_after().is_some_and(|d| d.as_millis() <= 100));
//! assert!(limiter.check("user:7").await?.allowed()); // every key has its own budget
//! # Ok(()) }
//! ```

mod layer;

use std::time::Duration;

pub use layer::{OnError, RateLimit, RateLimitLayer};

use crate::LiveDict;
use crate::error::{Error, Result};
use crate::request::{Gcra, MAX_TTL, Throttled};

/// How many cells a key may take, and how fast they come back: `rate` cells
/// per `period`, at most `burst` at once (by default `burst` = `rate`).
///
/// Built by [`per_second`](Self::per_second), [`per_minute`](Self::per_minute),
/// [`per_hour`](Self::per_hour) or [`with_period`](Self::with_period), and
/// [`allow_burst`](Self::allow_burst). A zero rate, burst or period, a cell
/// interval below 1 µs (more than a million per second) or a burst that takes
/// longer than [`MAX_TTL`] to refill is invalid: [`validate`](Self::validate)
/// and every check then fail with [`Error::InvalidConfig`] (never a panic).
///
/// ```
/// use std::time::Duration;
/// use livedict::ratelimit::Quota;
/// let q = Quota::per_second(100).allow_burst(10);
/// assert_eq!(q.interval(), Duration::from_millis(10));
/// assert_eq!(q.burst(), 10);
/// assert!(q.validate().is_ok());
/// assert!(Quota::per_minute(0).validate().is_err());
/// assert!(Quota::with_period(Duration::ZERO).validate().is_err());
/// assert!(Quota::per_hour(5).allow_burst(0).validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    rate: u32,
    period: Duration,
    burst: u32,
}

impl Quota {
    /// `rate` cells per second, a burst of `rate`.
    ///
    /// ```
    /// assert_eq!(livedict::ratelimit::Quota::per_second(4).interval().as_millis(), 250);
    /// ```
    pub const fn per_second(rate: u32) -> Self {
        Quota { rate, period: Duration::from_secs(1), burst: rate }
    }

    /// `rate` cells per minute, a burst of `rate`.
    ///
    /// ```
    /// assert_eq!(livedict::ratelimit::Quota::per_minute(60).interval().as_secs(), 1);
    /// ```
    pub const fn per_minute(rate: u32) -> Self {
        Quota { rate, period: Duration::from_secs(60), burst: rate }
    }

    /// `rate` cells per hour, a burst of `rate`.
    ///
    /// ```
    /// assert_eq!(livedict::ratelimit::Quota::per_hour(1).interval().as_secs(), 3600);
    /// ```
    pub const fn per_hour(rate: u32) -> Self {
        Quota { rate, period: Duration::from_secs(3600), burst: rate }
    }

    /// One cell every `period`, a burst of 1.
    ///
    /// ```
    /// use std::time::Duration;
    /// let q = livedict::ratelimit::Quota::with_period(Duration::from_millis(250)).allow_burst(4);
    /// assert_eq!(q.interval(), livedict::ratelimit::Quota::per_second(4).interval());
    /// ```
    pub const fn with_period(period: Duration) -> Self {
        Quota { rate: 1, period, burst: 1 }
    }

    /// At most `burst` cells at once (a full bucket).
    ///
    /// ```
    /// assert_eq!(livedict::ratelimit::Quota::per_second(100).allow_burst(5).burst(), 5);
    /// ```
    pub const fn allow_burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// The burst (cells of a full bucket).
    ///
    /// ```
    /// assert_eq!(livedict::ratelimit::Quota::per_minute(30).burst(), 30);
    /// ```
    pub const fn burst(&self) -> u32 {
        self.burst
    }

    /// The time one cell takes to come back (`period / rate`, rounded up to
    /// the µs so the limit is never exceeded); zero for an invalid quota.
    ///
    /// ```
    /// assert_eq!(livedict::ratelimit::Quota::per_second(3).interval().as_micros(), 333_334);
    /// ```
    pub fn interval(&self) -> Duration {
        Duration::from_micros(self.interval_us().unwrap_or(0))
    }

    /// The rate and period the quota was built with, as `(rate, period)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(livedict::ratelimit::Quota::per_minute(30).rate(), (30, Duration::from_secs(60)));
    /// ```
    pub const fn rate(&self) -> (u32, Duration) {
        (self.rate, self.period)
    }

    fn interval_us(&self) -> Option<u64> {
        if self.rate == 0 {
            return None;
        }
        // At least 1 µs a cell: a finer rate is not rounded to a coarser one.
        let ns = self.period.as_nanos();
        if ns < u128::from(self.rate) * 1000 {
            return None;
        }
        u64::try_from(ns.div_ceil(u128::from(self.rate) * 1000)).ok()
    }

    /// Checks the quota: [`Error::InvalidConfig`] naming what is wrong.
    ///
    /// ```
    /// use livedict::ratelimit::Quota;
    /// assert!(Quota::per_second(1_000_000).validate().is_ok());
    /// assert!(Quota::per_second(2_000_000).validate().is_err()); // below 1 µs a cell
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.gcra().map(drop)
    }

    /// The quota as the backends apply it.
    fn gcra(&self) -> Result<Gcra> {
        let bad = |why: &str| Err(Error::InvalidConfig(format!("rate limit quota {self:?}: {why}")));
        if self.rate == 0 {
            return bad("the rate is zero");
        }
        if self.period.is_zero() {
            return bad("the period is zero");
        }
        if self.burst == 0 {
            return bad("the burst is zero");
        }
        let Some(interval) = self.interval_us() else {
            return bad("more than one cell per microsecond");
        };
        let gcra = Gcra::new(interval, self.burst);
        if interval.checked_mul(u64::from(self.burst)).is_none_or(|t| Duration::from_micros(t) > MAX_TTL) {
            return bad("a full bucket takes longer than MAX_TTL (100 years) to refill");
        }
        Ok(gcra)
    }
}

/// A GCRA rate limiter over a store: cheap to clone (a store handle and a
/// [`Quota`]), usable from many tasks at once.
///
/// Every clone, and every limiter on the same SQLite file or Redis
/// namespace, shares the limit of each key. See the [module docs](self) for
/// the guarantees.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use livedict::{LiveDict, ratelimit::{Quota, RateLimiter}};
/// let limiter = RateLimiter::new(LiveDict::open("memory://").await?, Quota::per_minute(1));
/// let other = limiter.clone();
/// assert!(limiter.check("ip:10.0.0.1").await?.allowed());
/// assert!(!other.check("ip:10.0.0.1").await?.allowed()); // the same budget
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    store: LiveDict<u64>,
    quota: Quota,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("quota", &self.quota).finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter applying `quota` to the keys of `store` (an invalid quota
    /// makes every check fail with [`Error::InvalidConfig`]; see
    /// [`Quota::validate`] to find out early).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{LiveDict, ratelimit::{Quota, RateLimiter}};
    /// let limiter = RateLimiter::new(LiveDict::open("memory://").await?, Quota::per_second(0));
    /// assert!(matches!(limiter.check("k").await, Err(livedict::Error::InvalidConfig(_))));
    /// # Ok(()) }
    /// ```
    pub fn new(store: LiveDict<u64>, quota: Quota) -> Self {
        RateLimiter { store, quota }
    }

    /// The quota.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{LiveDict, ratelimit::{Quota, RateLimiter}};
    /// let limiter = RateLimiter::new(LiveDict::open("memory://").await?, Quota::per_hour(3));
    /// assert_eq!(limiter.quota(), Quota::per_hour(3));
    /// # Ok(()) }
    /// ```
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The store the limiter keeps its state in.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{LiveDict, ratelimit::{Quota, RateLimiter}};
    /// let limiter = RateLimiter::new(LiveDict::open("memory://").await?, Quota::per_second(5));
    /// limiter.check("a").await?;
    /// assert_eq!(limiter.store().len().await?, 1); // until the bucket is full again
    /// # Ok(()) }
    /// ```
    pub fn store(&self) -> &LiveDict<u64> {
        &self.store
    }

    /// Takes one cell of `key`'s budget if there is one: `check_n(key, 1)`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{LiveDict, ratelimit::{Quota, RateLimiter}};
    /// let limiter = RateLimiter::new(LiveDict::open("memory://").await?, Quota::per_second(1));
    /// let d = limiter.check("k").await?;
    /// assert!(d.allowed() && d.remaining() == 0 && d.retry_after().is_none());
    /// # Ok(()) }
    /// ```
    pub async fn check(&self, key: impl AsRef<str>) -> Result<Decision> {
        self.check_n(key, 1).await
    }

    /// Takes `n` cells of `key`'s budget at once, or none if fewer are
    /// available (then [`Decision::retry_after`] says when `n` will be).
    /// `n = 0` only reads the budget. In one atomic step of the backend.
    ///
    /// Errors: [`Error::InvalidConfig`] for an invalid quota, an `n` above
    /// the burst (such a check could never be allowed) or a store with
    /// `time_to_idle` (or, on Redis, a codec other than JSON), [`Error::InvalidKey`],
    /// [`Error::Decode`] if the key holds a value no limiter wrote, and the
    /// store's own errors ([`Error::Backend`], [`Error::Timeout`], …).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{LiveDict, ratelimit::{Quota, RateLimiter}};
    /// let limiter = RateLimiter::new(LiveDict::open("memory://").await?, Quota::per_second(10));
    /// assert_eq!(limiter.check_n("upload", 8).await?.remaining(), 2);
    /// assert!(!limiter.check_n("upload", 3).await?.allowed());
    /// assert!(limiter.check_n("upload", 11).await.is_err()); // more than the burst
    /// # Ok(()) }
    /// ```
    pub async fn check_n(&self, key: impl AsRef<str>, n: u32) -> Result<Decision> {
        let gcra = self.quota.gcra()?;
        if n > self.quota.burst {
            return Err(Error::InvalidConfig(format!(
                "a check of {n} cells is never allowed by a quota with a burst of {}",
                self.quota.burst
            )));
        }
        let verdict = self.store.throttle(key.as_ref(), gcra, n).await?;
        Ok(Decision { verdict, limit: self.quota.burst })
    }
}

/// What a check decided, and the key's budget right after it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use livedict::{LiveDict, ratelimit::{Quota, RateLimiter}};
/// let limiter = RateLimiter::new(LiveDict::open("memory://").await?, Quota::per_second(2));
/// let d = limiter.check("k").await?;
/// assert!(d.allowed());
/// assert_eq!((d.limit(), d.remaining()), (2, 1));
/// assert!(d.reset_after().as_millis() <= 500); // one cell comes back in 500 ms
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Decision {
    verdict: Throttled,
    limit: u32,
}

impl Decision {
    /// Whether the cells were granted.
    pub fn allowed(&self) -> bool {
        self.verdict.allowed
    }

    /// Cells left right after this check (what a check of cost 1 could still take now).
    pub fn remaining(&self) -> u32 {
        self.verdict.remaining
    }

    /// `None` if allowed; else how long until the same check would be allowed.
    pub fn retry_after(&self) -> Option<Duration> {
        self.verdict.retry_after()
    }

    /// How long until the key's bucket is full again (and its state expires).
    pub fn reset_after(&self) -> Duration {
        self.verdict.reset_after()
    }

    /// The quota's burst: the most cells a key ever has.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}
