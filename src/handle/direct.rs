//! The direct path: `get`, `set` and uncontended `lock` / unlock on the
//! default memory stack (and `get` on the default SQLite stack), answered
//! without building a [`Request`](crate::Request) when no layer of the stack
//! has anything to do for them that this path does not do itself.
//!
//! The default stack over the memory backend does, for a `get` or a plain
//! `set`: open a span (only if a subscriber enables `DEBUG`), bound the call
//! (memory answers at once), let the write wait for a held lock (only if some
//! key is locked), emit an event (only if something listens to its kind) and
//! count the hit, miss or set. When the span would be disabled, no key is
//! locked and nothing listens, what is left is the backend call and the
//! counter: this path does exactly that, without copying the key into a
//! request (a `get` allocates nothing) and without driving the stack's
//! futures (measured: see CHANGELOG, issue 18). A `set` that a callback or
//! watch listens to also emits its `Set` event here, as the callback layer
//! would, with the key and the value shared with the stored entry. An
//! uncontended `lock` is taken in the lock layer's table and released there
//! (the memory backend keeps no lock state). Otherwise it declines and the
//! caller takes the stack, so every behaviour of the layers is kept.
//!
//! On SQLite a `get` that an inline read connection answers at once (it never
//! waits for a lock, so the stack's timeout has nothing to bound) takes the
//! same path; one that cannot (every inline connection busy) takes the stack.
//! Measured (get, 1 task, compare bench): 0.71x a raw prepared `SELECT`
//! through the stack, 0.76x-0.90x in three runs on this path.

use std::time::Duration;

use crate::Value;
use crate::backend::MemoryBackend;
#[cfg(feature = "sqlite")]
use crate::backend::SqliteBackend;
use crate::error::Result;
use crate::event::dispatch::Dispatcher;
use crate::event::{EventKind, EventTarget};
use crate::layer::LockLayer;
use crate::layer::trace::{request_span, spans_enabled, spans_may_log};
use crate::request::LockToken;

/// The backend under a default stack that has a direct path.
pub(crate) enum Engine<V> {
    /// `get`, plain `set` (with its `Set` event), and an uncontended `lock`
    /// and its release.
    Memory(MemoryBackend<V>),
    /// `get` (a read on the calling thread).
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteBackend<V>),
}

/// The parts of a default stack the direct path needs.
pub(crate) struct Direct<V> {
    engine: Engine<V>,
    /// The stack's lock layer (its table), to see whether a key is held.
    locks: LockLayer,
}

impl<V: Value> Direct<V> {
    pub(crate) fn new(engine: Engine<V>, locks: LockLayer) -> Self {
        Direct { engine, locks }
    }

    /// The live value of a valid `key`, or `None` if the stack must answer.
    pub(crate) fn get(&self, dispatcher: &Dispatcher<V>, key: &str) -> Option<Result<Option<V>>> {
        if spans_enabled() || dispatcher.wants(EventKind::Get) {
            return None;
        }
        let value = match &self.engine {
            Engine::Memory(memory) => {
                let _span = spans_may_log().then(|| request_span("get", "memory"));
                memory.get_value(key)
            }
            #[cfg(feature = "sqlite")]
            Engine::Sqlite(sqlite) => {
                let _span = spans_may_log().then(|| request_span("get", "sqlite"));
                match sqlite.get_now(key)? {
                    Ok(value) => value,
                    Err(e) => return Some(Err(e)),
                }
            }
        };
        let counters = dispatcher.counters();
        if value.is_some() {
            counters.hits.incr();
        } else {
            counters.misses.incr();
        }
        Some(Ok(value))
    }

    /// Stores `value` under a valid `key` (a write without a lock token), or
    /// hands the value back if the stack must do it.
    pub(crate) fn set(
        &self,
        dispatcher: &Dispatcher<V>,
        key: &str,
        value: V,
        ttl: Option<Duration>,
    ) -> std::result::Result<Result<()>, V> {
        #[allow(irrefutable_let_patterns)]
        let Engine::Memory(memory) = &self.engine else {
            return Err(value);
        };
        if spans_enabled() || !self.locks.may_write(key) {
            return Err(value);
        }
        let _span = spans_may_log().then(|| request_span("set", "memory"));
        if !dispatcher.wants(EventKind::Set) {
            let done = memory.set_value(key, value, ttl);
            if done.is_ok() {
                dispatcher.counters().sets.incr();
            }
            return Ok(done);
        }
        // What the CallbackLayer does after the backend's set: count it, then
        // the `Set` event, here sharing the entry's key and value.
        Ok(memory.set_reported(key, value, ttl).map(|event| {
            dispatcher.counters().sets.incr();
            dispatcher.emit(event);
        }))
    }

    /// A rate-limit check of a valid `key` on the memory stack when no layer
    /// has work for it (spans off, the key not locked, no `Set` listener: a
    /// check that writes would be a `Set` event), or `None` if the stack
    /// must answer. Counts a check that wrote as a set, as the callback
    /// layer does. Measured (compare bench, `ratelimit`): see CHANGELOG.
    #[cfg(feature = "ratelimit")]
    pub(crate) fn throttle(
        &self,
        dispatcher: &Dispatcher<V>,
        key: &str,
        gcra: crate::request::Gcra,
        cost: u32,
        value_of: fn(u64) -> Option<V>,
        tat_of: fn(&V) -> Option<u64>,
    ) -> Option<Result<crate::request::Throttled>> {
        #[allow(irrefutable_let_patterns)]
        let Engine::Memory(memory) = &self.engine else {
            return None;
        };
        if spans_enabled() || !self.locks.may_write(key) || dispatcher.wants(EventKind::Set) {
            return None;
        }
        let _span = spans_may_log().then(|| request_span("throttle", "memory"));
        Some(memory.throttle_now(key, gcra, cost, value_of, tat_of).map(|(verdict, stored)| {
            if stored.is_some() {
                dispatcher.counters().sets.incr();
            }
            verdict
        }))
    }

    /// On the memory stack, with spans disabled: takes the lock of a valid
    /// `key` for `token` at once if nobody holds or waits for it, and
    /// returns the lock table to release it in. `None` if the stack must
    /// take it (spans on, another backend, or the key is held: waiting and
    /// its timeout are the stack's).
    ///
    /// The stack does nothing else for an uncontended lock on memory: the
    /// backend grants it at once ([`LockGrant::local`](crate::request::LockGrant::local)),
    /// nothing is counted (only waits and timeouts are) and no event is fired.
    pub(crate) fn try_lock(&self, key: &str, token: &LockToken) -> Option<&LockLayer> {
        #[allow(irrefutable_let_patterns)]
        let Engine::Memory(_) = &self.engine else {
            return None;
        };
        if spans_enabled() {
            return None;
        }
        let _span = spans_may_log().then(|| request_span("lock", "memory"));
        self.locks.try_acquire(key, token).then_some(&self.locks)
    }
}
