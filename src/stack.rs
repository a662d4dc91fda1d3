//! [`Stack`]: the type-erased service stack a `LiveDict` drives.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::ServiceExt;

use crate::error::{Error, Result};
use crate::request::{Request, Response};

/// A shared, type-erased `tower::Service<Request<V>>`: each call drives a
/// copy of the stack (`poll_ready`, then `call`): the calling thread's
/// stripe copy when it is free, else a fresh clone.
///
/// Unlike `tower::util::BoxCloneSyncService`, cloning the stack for a call
/// does not allocate (measured: one allocation and ~25 ns less per request).
pub(crate) struct Stack<V> {
    inner: Arc<dyn Erased<V>>,
}

impl<V> Clone for Stack<V> {
    fn clone(&self) -> Self {
        Stack { inner: Arc::clone(&self.inner) }
    }
}

trait Erased<V>: Send + Sync {
    fn call(&self, req: Request<V>) -> BoxFuture<'static, Result<Response<V>>>;
}

/// The service, plus one ready-to-use copy per stripe of threads, so that a
/// request neither clones the stack nor bumps its reference counts (the same
/// cache lines, from every thread) twice.
struct Concrete<S> {
    service: S,
    stripes: Box<[Stripe<S>]>,
}

/// One thread stripe's copy; padded so stripes do not share a cache line.
#[repr(align(128))]
struct Stripe<S>(Mutex<S>);

const STRIPES: usize = 8;

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

/// This thread's stripe (threads are spread over the stripes round-robin).
fn stripe() -> usize {
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

impl<S, V> Erased<V> for Concrete<S>
where
    S: tower::Service<Request<V>, Response = Response<V>, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    V: Send + 'static,
{
    fn call(&self, req: Request<V>) -> BoxFuture<'static, Result<Response<V>>> {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        // Every built-in layer is always ready: check once without a real waker
        // and, if ready, call at once so the future does not carry the service
        // (measured: ~30 ns less per request than `oneshot`). The stripe's copy
        // is used when free; a copy that is not ready (e.g. a concurrency limit
        // at its bound) is replaced by a fresh clone and driven by `oneshot`,
        // so a reservation it is waiting for is never left behind.
        if let Ok(mut service) = self.stripes[stripe()].0.try_lock() {
            return match service.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => Box::pin(service.call(req)),
                Poll::Ready(Err(e)) => Box::pin(std::future::ready(Err(e))),
                Poll::Pending => {
                    let waiting = std::mem::replace(&mut *service, self.service.clone());
                    Box::pin(waiting.oneshot(req))
                }
            };
        }
        let mut service = self.service.clone();
        match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Box::pin(service.call(req)),
            Poll::Ready(Err(e)) => Box::pin(std::future::ready(Err(e))),
            Poll::Pending => Box::pin(service.oneshot(req)),
        }
    }
}

impl<V: Send + 'static> Stack<V> {
    pub(crate) fn new<S>(service: S) -> Self
    where
        S: tower::Service<Request<V>, Response = Response<V>, Error = Error> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        let stripes = (0..STRIPES).map(|_| Stripe(Mutex::new(service.clone()))).collect();
        Stack { inner: Arc::new(Concrete { service, stripes }) }
    }

    /// Runs one request through the stack.
    pub(crate) fn call(&self, req: Request<V>) -> BoxFuture<'static, Result<Response<V>>> {
        self.inner.call(req)
    }
}
