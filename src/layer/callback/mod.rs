//! The callback layer: turns responses into events and hands them to the
//! [`Dispatcher`] (which, with the callback sandbox, lives with the events in
//! `crate::event`; re-exported here).

mod future;
mod layer;

use std::sync::Arc;
use std::task::{Context, Poll};

pub use crate::event::dispatch::{DispatchConfig, Dispatcher};
pub use crate::event::sandbox::MAX_ABANDONED;
pub use future::CallbacksFuture;
pub use layer::CallbackLayer;

use crate::error::Error;
use crate::event::{EventKind, EventTarget};
use crate::request::{Request, Response};
use future::Plan;

/// Emits `Set`, `Get` (hits) and `Delete` (removals) events for the requests
/// that pass through it, and counts hits, misses, sets and deletes; a batch
/// (`GetMany`, `SetMany`, `DeleteMany`) reports one event per entry, in order.
/// A rate-limit check (`Throttle`) that stored a new arrival time is a `Set`
/// of it; a denied check writes nothing and fires nothing.
///
/// Events are only built when a callback listens to their kind.
#[derive(Debug, Clone)]
pub struct Callbacks<S, V> {
    inner: S,
    dispatcher: Dispatcher<V>,
}

impl<S, V> Callbacks<S, V> {
    /// Wraps `inner`, reporting to `dispatcher`.
    pub fn new(inner: S, dispatcher: Dispatcher<V>) -> Self {
        Callbacks { inner, dispatcher }
    }
}

impl<S, V> tower::Service<Request<V>> for Callbacks<S, V>
where
    S: tower::Service<Request<V>, Response = Response<V>, Error = Error>,
    V: Clone + Send + Sync + 'static,
{
    type Response = Response<V>;
    type Error = Error;
    type Future = CallbacksFuture<S::Future, V>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<V>) -> Self::Future {
        let d = &self.dispatcher;
        let plan = match &req {
            Request::Get { key } => Plan::Get(d.wants(EventKind::Get).then(|| Arc::from(key.as_str()))),
            Request::Set { key, value, .. } => {
                Plan::Set(d.wants(EventKind::Set).then(|| (Arc::from(key.as_str()), value.clone())))
            }
            Request::Delete { key, .. } => {
                Plan::Delete(d.wants(EventKind::Delete).then(|| Arc::from(key.as_str())))
            }
            Request::CompareAndSet { key, .. }
            | Request::Incr { key, .. }
            | Request::Throttle { key, .. } => {
                Plan::Written(d.wants(EventKind::Set).then(|| Arc::from(key.as_str())))
            }
            Request::GetMany { keys } => Plan::GetMany(
                d.wants(EventKind::Get).then(|| keys.iter().map(|k| Arc::from(k.as_str())).collect()),
            ),
            Request::SetMany { entries, .. } => Plan::SetMany(
                entries.len(),
                d.wants(EventKind::Set)
                    .then(|| entries.iter().map(|(k, v)| (Arc::from(k.as_str()), v.clone())).collect()),
            ),
            Request::DeleteMany { keys } => Plan::DeleteMany(
                d.wants(EventKind::Delete).then(|| keys.iter().map(|k| Arc::from(k.as_str())).collect()),
            ),
            _ => Plan::Other,
        };
        CallbacksFuture::new(self.inner.call(req), plan, self.dispatcher.clone())
    }
}
