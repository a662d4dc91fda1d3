//! Thread stripes: each thread gets a fixed stripe index, so per-stripe state
//! (striped counters, the stack's service copies) is touched by few threads.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Number of stripes.
pub(crate) const STRIPES: usize = 8;

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

/// This thread's stripe, below [`STRIPES`] (threads are spread over the stripes round-robin).
pub(crate) fn stripe() -> usize {
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}
