//! User callbacks: sync closures or async functions, each with an optional timeout.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::event::Event;

/// A function called with events of one [`EventKind`](crate::EventKind).
///
/// Callbacks run in a sandbox, never on the caller's path: each registered
/// callback has its own bounded queue and gets its events in order, exactly
/// once. Sync callbacks run on a dedicated OS thread (never on a Tokio
/// worker); async callbacks run as one Tokio task. A panic is caught and
/// counted; a call past its timeout is abandoned (async: dropped; sync:
/// detached and counted) and the next event proceeds.
///
/// ```
/// use std::time::Duration;
/// use livedict::{Callback, Event};
/// let log = Callback::new(|ev: &Event<String>| println!("{} {}", ev.kind(), ev.key()));
/// let slow = Callback::new_async(|ev: Event<String>| async move {
///     tokio::time::sleep(Duration::from_millis(1)).await;
///     let _ = ev.value();
/// })
/// .timeout(Duration::from_secs(1));
/// # let _ = (log, slow);
/// ```
pub struct Callback<V> {
    pub(crate) body: CallbackBody<V>,
    pub(crate) timeout: Option<Duration>,
}

pub(crate) type SyncFn<V> = Arc<dyn Fn(&Event<V>) + Send + Sync>;
pub(crate) type AsyncFn<V> = Arc<dyn Fn(Event<V>) -> BoxFuture<'static, ()> + Send + Sync>;

pub(crate) enum CallbackBody<V> {
    Sync(SyncFn<V>),
    Async(AsyncFn<V>),
}

impl<V: 'static> Callback<V> {
    /// A sync callback. It runs on its own OS thread, so it may block.
    pub fn new(f: impl Fn(&Event<V>) + Send + Sync + 'static) -> Self {
        Callback { body: CallbackBody::Sync(Arc::new(f)), timeout: None }
    }

    /// An async callback, run as a Tokio task; cancelled at its timeout.
    pub fn new_async<F, Fut>(f: F) -> Self
    where
        F: Fn(Event<V>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Callback { body: CallbackBody::Async(Arc::new(move |ev| Box::pin(f(ev)))), timeout: None }
    }

    /// Abandons any single call that runs longer than `timeout` (overrides the
    /// store's default callback timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<V> fmt::Debug for Callback<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.body {
            CallbackBody::Sync(_) => "sync",
            CallbackBody::Async(_) => "async",
        };
        f.debug_struct("Callback").field("kind", &kind).field("timeout", &self.timeout).finish()
    }
}

/// Identifies a registered callback, for enabling, disabling and unregistering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallbackId(pub(crate) u64);
