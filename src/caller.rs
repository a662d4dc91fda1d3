//! Who is calling: a thread inside a call of the blocking facade may block
//! (the facade marks it), so a backend may do blocking work (an SQLite
//! write) right on it. Kept below the backends and the facade, which both use it.

thread_local! {
    /// Set while this thread runs a blocking-facade call (see [`may_block`]).
    static BLOCKING_CALLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is inside a call of the blocking facade, so a
/// backend may do blocking work (an SQLite write) right here instead of
/// handing it to a thread of its own: the caller waits for the result either
/// way, and no async task shares this thread.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn may_block() -> bool {
    BLOCKING_CALLER.with(std::cell::Cell::get)
}

/// Marks the thread as a blocking caller until dropped (restoring the previous mark).
pub(crate) struct BlockingCall(bool);

impl BlockingCall {
    pub(crate) fn enter() -> Self {
        BlockingCall(BLOCKING_CALLER.with(|c| c.replace(true)))
    }
}

impl Drop for BlockingCall {
    fn drop(&mut self) {
        BLOCKING_CALLER.with(|c| c.set(self.0));
    }
}
