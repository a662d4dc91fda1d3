//! The response future of [`Callbacks`](super::Callbacks): emits the event once the response is in.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;

use crate::error::Error;
use crate::event::dispatch::Dispatcher;
use crate::event::{Event, EventKind, EventTarget};
use crate::request::Response;

/// What to report when the response arrives; `Some` carries what the event needs.
pub(super) enum Plan<V> {
    Get(Option<Arc<str>>),
    Set(Option<(Arc<str>, V)>),
    Delete(Option<Arc<str>>),
    /// A `CompareAndSet`, `Incr` or `Throttle`: a `Set` event if it wrote.
    Written(Option<Arc<str>>),
    /// A batch: one event per key (per hit, per removal), in order.
    GetMany(Option<Vec<Arc<str>>>),
    SetMany(usize, Option<Vec<(Arc<str>, V)>>),
    DeleteMany(Option<Vec<Arc<str>>>),
    Other,
}

impl<V> Plan<V> {
    /// Whether an event will be built (some callback listens to its kind).
    fn emits(&self) -> bool {
        matches!(
            self,
            Plan::Get(Some(_))
                | Plan::Set(Some(_))
                | Plan::Delete(Some(_))
                | Plan::Written(Some(_))
                | Plan::GetMany(Some(_))
                | Plan::SetMany(_, Some(_))
                | Plan::DeleteMany(Some(_))
        )
    }
}

/// Future of [`Callbacks`](super::Callbacks).
#[pin_project]
pub struct CallbacksFuture<F, V> {
    #[pin]
    inner: F,
    plan: Option<Plan<V>>,
    dispatcher: Dispatcher<V>,
}

impl<F, V> CallbacksFuture<F, V> {
    pub(super) fn new(inner: F, plan: Plan<V>, dispatcher: Dispatcher<V>) -> Self {
        CallbacksFuture { inner, plan: Some(plan), dispatcher }
    }
}

impl<F, V> Future for CallbacksFuture<F, V>
where
    F: Future<Output = Result<Response<V>, Error>>,
    V: Clone + Send + Sync + 'static,
{
    type Output = Result<Response<V>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // A request that hands an event to callbacks spends Tokio's cooperative
        // budget, so a task doing nothing but memory writes (always ready) still
        // yields now and then. Otherwise an async callback's worker, woken into
        // this worker thread's LIFO slot (which no other worker steals), would
        // not run until the writer awaits something, and its queue would
        // overflow (measured: 8,192 of 200,000 events delivered).
        let coop = match this.plan {
            Some(plan) if plan.emits() => Some(ready!(tokio::task::coop::poll_proceed(cx))),
            _ => None,
        };
        let result = ready!(this.inner.poll(cx));
        if let Some(coop) = coop {
            coop.made_progress();
        }
        if let (Ok(resp), Some(plan)) = (&result, this.plan.take()) {
            report(this.dispatcher, plan, resp);
        }
        Poll::Ready(result)
    }
}

fn report<V: Clone + Send + Sync + 'static>(d: &Dispatcher<V>, plan: Plan<V>, resp: &Response<V>) {
    let counters = d.counters();
    match (plan, resp) {
        (Plan::Get(key), Response::Value(Some(v))) => {
            counters.hits.incr();
            if let Some(key) = key {
                d.emit(Event::keyed(EventKind::Get, key, Some(v.clone())));
            }
        }
        (Plan::Get(_), Response::Value(None)) => counters.misses.incr(),
        (Plan::Set(seed), Response::Done) => {
            counters.sets.incr();
            if let Some((key, value)) = seed {
                d.emit(Event::keyed(EventKind::Set, key, Some(value)));
            }
        }
        (Plan::Written(key), Response::Written(Some(value))) => {
            counters.sets.incr();
            if let Some(key) = key {
                d.emit(Event::keyed(EventKind::Set, key, Some(value.clone())));
            }
        }
        (Plan::Written(key), Response::Throttled { stored: Some(value), .. }) => {
            counters.sets.incr();
            if let Some(key) = key {
                d.emit(Event::keyed(EventKind::Set, key, Some(value.clone())));
            }
        }
        (Plan::Delete(key), Response::Deleted { removed: true, value }) => {
            counters.deletes.incr();
            if let Some(key) = key {
                d.emit(Event::keyed(EventKind::Delete, key, value.clone()));
            }
        }
        (Plan::GetMany(keys), Response::Values(values)) => {
            let hits = values.iter().filter(|v| v.is_some()).count();
            counters.hits.add(hits as u64);
            counters.misses.add((values.len() - hits) as u64);
            for (key, value) in keys.into_iter().flatten().zip(values) {
                if let Some(v) = value {
                    d.emit(Event::keyed(EventKind::Get, key, Some(v.clone())));
                }
            }
        }
        (Plan::SetMany(n, seeds), Response::Done) => {
            counters.sets.add(n as u64);
            for (key, value) in seeds.into_iter().flatten() {
                d.emit(Event::keyed(EventKind::Set, key, Some(value)));
            }
        }
        (Plan::DeleteMany(keys), Response::DeletedMany(removed)) => {
            counters.deletes.add(removed.iter().filter(|(r, _)| *r).count() as u64);
            for (key, (removed, value)) in keys.into_iter().flatten().zip(removed) {
                if *removed {
                    d.emit(Event::keyed(EventKind::Delete, key, value.clone()));
                }
            }
        }
        _ => {}
    }
}
