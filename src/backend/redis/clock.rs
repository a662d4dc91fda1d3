//! [`ServerClock`]: the Redis server's time, as seen from this process.
//!
//! Deadlines are written on the server's clock (by the scripts, from
//! `TIME`), so every process agrees on them whatever its own clock says.
//! Reads are plain `GET`s and decide liveness here, from the deadline in the
//! value's header: a value counts as expired once the *latest* time the
//! server may have reached passes its deadline. That bound is a `TIME` reply
//! plus the local time elapsed since the request was *sent* (the reply was
//! made after that), plus 200 ppm of the sample's age for clock-rate drift.
//! So an expired value is never returned; a value may look expired up to one
//! round trip (plus the drift allowance) before its deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Drift allowance: parts per million of a sample's age.
const DRIFT_PPM: u64 = 200;

/// An upper bound of the server's clock; see the [module docs](self).
#[derive(Debug)]
pub(super) struct ServerClock {
    /// This process's reference instant.
    origin: Instant,
    /// Server time (µs since the epoch) minus µs since `origin` at which the sample's request was sent.
    base_us: AtomicU64,
    /// µs since `origin` when the sample's request was sent.
    taken_us: AtomicU64,
}

impl ServerClock {
    pub(super) fn new() -> Self {
        ServerClock { origin: Instant::now(), base_us: AtomicU64::new(0), taken_us: AtomicU64::new(0) }
    }

    fn since_origin(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_micros() as u64
    }

    /// Records a server time `server_us` (µs since the epoch) from a request sent at `sent`.
    pub(super) fn sample(&self, sent: Instant, server_us: u64) {
        let taken = self.since_origin(sent);
        self.taken_us.store(taken, Ordering::Relaxed);
        self.base_us.store(server_us.saturating_sub(taken), Ordering::Release);
    }

    /// The latest time (µs since the epoch) the server's clock may show now.
    pub(super) fn upper_now_us(&self) -> u64 {
        let now = self.since_origin(Instant::now());
        let age = now.saturating_sub(self.taken_us.load(Ordering::Relaxed));
        self.base_us.load(Ordering::Acquire) + now + age * DRIFT_PPM / 1_000_000
    }

    /// Whether an entry with deadline `deadline_ms` (server clock) may have expired.
    pub(super) fn is_expired(&self, deadline_ms: u64) -> bool {
        self.upper_now_us() >= deadline_ms.saturating_mul(1000)
    }

    /// Time left until `deadline_ms`, at least (zero once it may have passed).
    pub(super) fn remaining(&self, deadline_ms: u64) -> Duration {
        Duration::from_micros(deadline_ms.saturating_mul(1000).saturating_sub(self.upper_now_us()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_behind_the_server() {
        let clock = ServerClock::new();
        let sent = Instant::now();
        clock.sample(sent, 1_000_000_000);
        assert!(clock.upper_now_us() >= 1_000_000_000);
        assert!(clock.is_expired(1_000_000));
        assert!(!clock.is_expired(1_000_100));
        let left = clock.remaining(1_000_100);
        assert!(left <= Duration::from_millis(100) && left > Duration::from_millis(50));
    }
}
