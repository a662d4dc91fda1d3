//! The [`LockLayer`] that builds [`Lock`] services.

use std::sync::Arc;

use super::{Lock, LockShared};
use crate::request::LockToken;

/// A `tower::Layer` adding enforced per-key locks. All services built from
/// one layer share one lock table, so build the stack once and clone it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use livedict::{backend::{MemoryBackend, MemoryConfig}, layer::LockLayer, EventSink};
/// let backend = MemoryBackend::<u32>::new(MemoryConfig::default(), EventSink::none())?;
/// let svc = tower::ServiceBuilder::new().layer(LockLayer::new()).service(backend);
/// assert_eq!(svc.locked_keys(), 0);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct LockLayer {
    shared: Arc<LockShared>,
}

impl std::fmt::Debug for LockLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockLayer").finish_non_exhaustive()
    }
}

impl LockLayer {
    /// A layer with its own lock table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts lock waits and timeouts into the stats of `dispatcher`'s store.
    pub fn with_stats_of<V>(self, dispatcher: &crate::event::dispatch::Dispatcher<V>) -> Self
    where
        V: Send + Sync + 'static,
    {
        let shared = LockShared { table: Default::default(), counters: Arc::clone(dispatcher.counters()) };
        LockLayer { shared: Arc::new(shared) }
    }
}

impl LockLayer {
    /// True if a write to `key` without a lock token would pass the layer now
    /// (nobody holds the key): one atomic load while no key is locked.
    pub(crate) fn may_write(&self, key: &str) -> bool {
        self.shared.table.may_write(key, None)
    }

    /// Takes `key` for `token` if nobody holds or waits for it (what the
    /// layer does first for a `Lock` request); false otherwise.
    pub(crate) fn try_acquire(&self, key: &str, token: &LockToken) -> bool {
        self.shared.table.try_acquire(key, token)
    }

    /// Releases `key` if `token` holds it (what the layer does for an `Unlock`).
    pub(crate) fn release(&self, key: &str, token: &LockToken) {
        self.shared.table.release(key, token)
    }
}

impl<S> tower::Layer<S> for LockLayer {
    type Service = Lock<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Lock::new(inner, Arc::clone(&self.shared))
    }
}
