//! The response future of [`Callbacks`](super::Callbacks): emits the event once the response is in.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;

use super::Dispatcher;
use crate::error::Error;
use crate::event::{Event, EventKind, EventTarget};
use crate::request::Response;

/// What to report when the response arrives; `Some` carries what the event needs.
pub(super) enum Plan<V> {
    Get(Option<String>),
    Set(Option<(String, V)>),
    Delete(Option<String>),
    Other,
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
        let result = ready!(this.inner.poll(cx));
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
                d.emit(Event::new(EventKind::Get, key, Some(v.clone())));
            }
        }
        (Plan::Get(_), Response::Value(None)) => counters.misses.incr(),
        (Plan::Set(seed), Response::Done) => {
            counters.sets.incr();
            if let Some((key, value)) = seed {
                d.emit(Event::new(EventKind::Set, key, Some(value)));
            }
        }
        (Plan::Delete(key), Response::Deleted { removed: true, value }) => {
            counters.deletes.incr();
            if let Some(key) = key {
                d.emit(Event::new(EventKind::Delete, key, value.clone()));
            }
        }
        _ => {}
    }
}
