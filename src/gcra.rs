//! The generic cell rate algorithm (GCRA) as one pure step, shared by the
//! memory and SQLite backends and mirrored by the Redis script (`scripts.rs`,
//! `WRITE_IF` mode `gcra`), so every backend answers the same numbers.
//!
//! The state of a key is its theoretical arrival time (TAT): the instant, in
//! microseconds of the backend's clock, at which the bucket would be full
//! again. A check of cost `n` at `now` moves it to `max(TAT, now) + n × T`
//! (`T` the emission interval) if that stays within `now + τ` (`τ` the burst
//! tolerance, `burst × T`); otherwise nothing changes and the check is denied.
//! The entry's TTL is the time until the bucket is full again (new TAT − now),
//! so an idle key leaves no state.

use std::time::Duration;

/// A quota as the backends apply it: the emission interval and the burst,
/// in microseconds (see [`ratelimit::Quota`](crate::ratelimit::Quota) with
/// the `ratelimit` feature, which builds it).
///
/// ```
/// let g = livedict::request::Gcra::new(100_000, 5); // 10 per second, burst 5
/// assert_eq!(g.tolerance_us(), 500_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gcra {
    interval_us: u64,
    burst: u32,
}

impl Gcra {
    /// One cell every `interval_us` microseconds, at most `burst` at once.
    pub const fn new(interval_us: u64, burst: u32) -> Self {
        Gcra { interval_us, burst }
    }

    /// The emission interval `T`, in microseconds.
    pub const fn interval_us(&self) -> u64 {
        self.interval_us
    }

    /// The burst: how many cells a full bucket holds.
    pub const fn burst(&self) -> u32 {
        self.burst
    }

    /// The burst tolerance `τ = burst × T`, in microseconds (saturating).
    pub const fn tolerance_us(&self) -> u64 {
        self.interval_us.saturating_mul(self.burst as u64)
    }

    /// One check of cost `cost` at `now` (µs) against the stored TAT
    /// (`None`: no live state, a full bucket): the verdict and, if the state
    /// must be written (an allowed check of cost ≥ 1), the new TAT.
    ///
    /// ```
    /// use livedict::request::Gcra;
    /// let g = Gcra::new(100_000, 2); // 10/s, burst 2
    /// let (first, tat) = g.step(1_000_000, None, 1);
    /// assert!(first.allowed && first.remaining == 1);
    /// let (second, tat) = g.step(1_000_000, tat, 1);
    /// assert!(second.allowed && second.remaining == 0);
    /// let (third, write) = g.step(1_000_000, tat, 1);
    /// assert!(!third.allowed);
    /// assert_eq!(third.retry_after_us, Some(100_000));
    /// assert_eq!(write, None); // a denied check writes nothing
    /// ```
    pub fn step(&self, now: u64, stored: Option<u64>, cost: u32) -> (Throttled, Option<u64>) {
        let t = self.interval_us.max(1);
        let tau = self.tolerance_us();
        let base = stored.unwrap_or(now).max(now);
        let new_tat = base.saturating_add(t.saturating_mul(u64::from(cost)));
        let limit = now.saturating_add(tau);
        if new_tat <= limit {
            let verdict = Throttled {
                allowed: true,
                remaining: cells(limit - new_tat, t),
                retry_after_us: None,
                reset_after_us: new_tat - now,
            };
            (verdict, (cost > 0).then_some(new_tat))
        } else {
            let verdict = Throttled {
                allowed: false,
                remaining: cells(limit.saturating_sub(base), t),
                retry_after_us: Some(new_tat - limit),
                reset_after_us: base - now,
            };
            (verdict, None)
        }
    }
}

/// Whole cells of interval `t` in `span`.
fn cells(span: u64, t: u64) -> u32 {
    u32::try_from(span / t).unwrap_or(u32::MAX)
}

/// What one rate-limit check decided ([`Request::Throttle`](crate::Request::Throttle)).
///
/// ```
/// let d = livedict::request::Gcra::new(1_000, 1).step(0, None, 1).0;
/// assert!(d.allowed);
/// assert_eq!(d.reset_after(), std::time::Duration::from_millis(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Throttled {
    /// Whether the cells were granted (and the state moved).
    pub allowed: bool,
    /// Cells of cost 1 still available right after this check.
    pub remaining: u32,
    /// When denied: how long until a check of the same cost would be allowed.
    pub retry_after_us: Option<u64>,
    /// How long until the bucket is full again (the state's TTL).
    pub reset_after_us: u64,
}

impl Throttled {
    /// [`retry_after_us`](Self::retry_after_us) as a `Duration`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after_us.map(Duration::from_micros)
    }

    /// [`reset_after_us`](Self::reset_after_us) as a `Duration`.
    pub fn reset_after(&self) -> Duration {
        Duration::from_micros(self.reset_after_us)
    }
}

/// The TTL to store a TAT with, at `now`: until it, in whole ms rounded up
/// (the state never goes before the bucket is full).
pub(crate) fn ttl_until(now: u64, tat: u64) -> Option<Duration> {
    let us = tat.checked_sub(now).filter(|&us| us > 0)?;
    Some(Duration::from_millis(us.div_ceil(1000)))
}

/// The error for a rate-limit check on a store with `time_to_idle`: an idle
/// deadline before the bucket is full again would forget spent cells.
pub(crate) fn idle_refused() -> crate::Error {
    crate::Error::InvalidConfig(
        "rate limiting needs a store without time_to_idle (an idle deadline before the refill would forget spent cells)"
            .into(),
    )
}

/// The error for a stored value that holds no arrival time (the key was
/// written by something other than a rate limiter).
pub(crate) fn not_a_tat(key: &str) -> crate::Error {
    crate::Error::Decode {
        key: key.to_owned(),
        source: "the stored value is not a rate limiter's arrival time".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let g = Gcra::new(100_000, 3);
        let mut tat = None;
        for left in (0..3).rev() {
            let (d, t) = g.step(0, tat, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            tat = t;
        }
        assert_eq!(tat, Some(300_000));
        let (d, t) = g.step(40_000, tat, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, Some(60_000));
        assert_eq!(d.reset_after_us, 260_000);
        assert_eq!(t, None);
        let (d, t) = g.step(100_000, tat, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(t, Some(400_000));
    }

    #[test]
    fn a_cost_larger_than_what_is_left_is_denied_whole() {
        let g = Gcra::new(10, 10);
        let (d, tat) = g.step(0, None, 8);
        assert!(d.allowed && d.remaining == 2);
        let (d, write) = g.step(0, tat, 3);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.retry_after_us, Some(10));
        assert_eq!(write, None);
    }

    #[test]
    fn cost_zero_reads_without_writing() {
        let g = Gcra::new(10, 10);
        let (d, t) = g.step(5, None, 0);
        assert!(d.allowed && d.remaining == 10 && t.is_none());
        let (d, t) = g.step(5, Some(25), 0);
        assert!(d.allowed && d.remaining == 8 && t.is_none());
        assert_eq!(d.reset_after_us, 20);
    }

    #[test]
    fn ttls_round_up_to_the_ms() {
        assert_eq!(ttl_until(0, 1), Some(Duration::from_millis(1)));
        assert_eq!(ttl_until(0, 1000), Some(Duration::from_millis(1)));
        assert_eq!(ttl_until(0, 1001), Some(Duration::from_millis(2)));
        assert_eq!(ttl_until(5, 5), None);
    }
}
