//! The [`Receipt`] of a leased expiration: it is settled once every callback
//! it was handed to has returned (acknowledged) or one failed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What happens when a receipt is settled: `true` when every delivery
/// succeeded, `false` when one failed (panicked, timed out, was dropped).
pub(crate) type Settle = Box<dyn FnOnce(bool) + Send>;

/// Counts the deliveries of one event still running. The emitter holds one
/// from the start; the dispatcher adds one per callback queue the event
/// entered; each worker releases its own when the callback returned. The
/// last release settles it. A receipt dropped unsettled (its event was
/// discarded with a queue) settles as failed.
pub(crate) struct Receipt {
    holds: AtomicUsize,
    failed: AtomicBool,
    settle: Mutex<Option<Settle>>,
    /// What the last failed delivery reported (a callback's error, a panic, a timeout).
    cause: Mutex<Option<String>>,
    /// On an expiration's last attempt: its key and attempt, to log its
    /// abandonment (with the last `cause`) at error level if it fails.
    last: Option<(Arc<str>, u32)>,
}

impl Receipt {
    /// A receipt held once (by its emitter).
    pub(crate) fn new(settle: Settle) -> Self {
        Receipt {
            holds: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            settle: Mutex::new(Some(settle)),
            cause: Mutex::new(None),
            last: None,
        }
    }

    /// Marks this as the last attempt of the expiration of `key`: if it
    /// fails, the expiration is abandoned, and that is logged at error level.
    pub(crate) fn last_attempt(mut self, key: Arc<str>, attempt: u32) -> Self {
        self.last = Some((key, attempt));
        self
    }

    /// One delivery failed, for `cause` (kept for the abandonment's log).
    pub(crate) fn fail(&self, cause: String) {
        *self.cause.lock().unwrap_or_else(|p| p.into_inner()) = Some(cause);
        self.release(false);
    }

    /// Calls `settle` with the outcome; logs an abandoned last attempt.
    fn settled(&self, settle: Settle, ok: bool) {
        if !ok && let Some((key, attempt)) = &self.last {
            let cause = self.cause.lock().unwrap_or_else(|p| p.into_inner()).take();
            let cause = cause
                .as_deref()
                .unwrap_or("it never reached a callback (queue full, unregistered or shut down)");
            tracing::error!(
                key = %key,
                attempt,
                error = %cause,
                "expiration abandoned: its last delivery failed"
            );
        }
        settle(ok);
    }

    /// One more delivery to wait for.
    pub(crate) fn hold(&self) {
        self.holds.fetch_add(1, Ordering::AcqRel);
    }

    /// One delivery finished (`ok`: the callback returned in time without panicking).
    pub(crate) fn release(&self, ok: bool) {
        if !ok {
            self.failed.store(true, Ordering::Release);
        }
        if self.holds.fetch_sub(1, Ordering::AcqRel) == 1 {
            let settle = self.settle.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(settle) = settle {
                self.settled(settle, !self.failed.load(Ordering::Acquire));
            }
        }
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            self.settled(settle, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU8;

    use super::*;

    fn probe() -> (Arc<AtomicU8>, Settle) {
        let seen = Arc::new(AtomicU8::new(0));
        let s = Arc::clone(&seen);
        (seen, Box::new(move |ok| s.store(if ok { 1 } else { 2 }, Ordering::SeqCst)))
    }

    #[test]
    fn settles_once_after_the_last_release() {
        let (seen, settle) = probe();
        let r = Receipt::new(settle);
        r.hold();
        r.hold();
        r.release(true);
        r.release(true);
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        r.release(true);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        drop(r);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn one_failure_fails_it_and_dropping_it_unsettled_fails_it() {
        let (seen, settle) = probe();
        let r = Receipt::new(settle);
        r.hold();
        r.release(false);
        r.release(true);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        let (seen, settle) = probe();
        let r = Receipt::new(settle);
        r.hold();
        drop(r);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }
}
