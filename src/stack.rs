//! [`Stack`]: the type-erased service stack a `LiveDict` drives.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::ServiceExt;

use crate::error::{Error, Result};
use crate::request::{Request, Response};
use crate::stripe::{STRIPES, stripe};

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
    fn call(&self, req: Request<V>) -> StackFuture<V>;
}

/// Future of [`Stack::request`]: the answer itself when the stack gave it at
/// once (a memory hit), else the boxed response future.
pub(crate) enum StackFuture<V> {
    Done(Option<Result<Response<V>>>),
    Boxed(BoxFuture<'static, Result<Response<V>>>),
}

// Never pinned structurally: the answer is moved out, the boxed future is pinned in its box.
impl<V> Unpin for StackFuture<V> {}

impl<V> Future for StackFuture<V> {
    type Output = Result<Response<V>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            // Invariant: a `Done` future is polled once (it is never polled after `Ready`).
            StackFuture::Done(out) => Poll::Ready(out.take().expect("StackFuture polled after completion")),
            StackFuture::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

/// How a service's response future becomes a [`StackFuture`].
type Start<F, V> = fn(F) -> StackFuture<V>;

/// Boxes the response future (any service).
fn start_boxed<F, V>(fut: F) -> StackFuture<V>
where
    F: Future<Output = Result<Response<V>>> + Send + 'static,
{
    StackFuture::Boxed(Box::pin(fut))
}

/// Polls an `Unpin` response future once and boxes it only if it is not
/// ready (measured: a memory `get` hit skips one allocation, ~6% fewer instructions).
/// A future left pending is polled again by its caller with a real waker,
/// which every future must then register.
fn start_eager<F, V>(mut fut: F) -> StackFuture<V>
where
    F: Future<Output = Result<Response<V>>> + Unpin + Send + 'static,
{
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match Pin::new(&mut fut).poll(&mut cx) {
        Poll::Ready(out) => StackFuture::Done(Some(out)),
        Poll::Pending => StackFuture::Boxed(Box::pin(fut)),
    }
}

/// The service, plus one ready-to-use copy per stripe of threads, so that a
/// request neither clones the stack nor bumps its reference counts (the same
/// cache lines, from every thread) twice.
struct Concrete<S: tower::Service<Request<V>>, V> {
    service: S,
    stripes: Box<[Stripe<S>]>,
    start: Start<S::Future, V>,
}

/// One thread stripe's copy; padded so stripes do not share a cache line.
#[repr(align(128))]
struct Stripe<S>(Mutex<S>);

impl<S, V> Erased<V> for Concrete<S, V>
where
    S: tower::Service<Request<V>, Response = Response<V>, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    V: Send + 'static,
{
    fn call(&self, req: Request<V>) -> StackFuture<V> {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        // Every built-in layer is always ready: check once without a real waker
        // and, if ready, call at once so the future does not carry the service
        // (measured: ~30 ns less per request than `oneshot`). The stripe's copy
        // is used when free; a copy that is not ready (e.g. a concurrency limit
        // at its bound) is replaced by a fresh clone and driven by `oneshot`,
        // so a reservation it is waiting for is never left behind.
        if let Ok(mut service) = self.stripes[stripe()].0.try_lock() {
            return match service.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => {
                    let fut = service.call(req);
                    drop(service);
                    (self.start)(fut)
                }
                Poll::Ready(Err(e)) => StackFuture::Done(Some(Err(e))),
                Poll::Pending => {
                    let waiting = std::mem::replace(&mut *service, self.service.clone());
                    StackFuture::Boxed(Box::pin(waiting.oneshot(req)))
                }
            };
        }
        let mut service = self.service.clone();
        match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => (self.start)(service.call(req)),
            Poll::Ready(Err(e)) => StackFuture::Done(Some(Err(e))),
            Poll::Pending => StackFuture::Boxed(Box::pin(service.oneshot(req))),
        }
    }
}

impl<V: Send + 'static> Stack<V> {
    /// A stack whose response futures are `Unpin` (the default stack's): a
    /// request answered at once is not boxed.
    pub(crate) fn new<S>(service: S) -> Self
    where
        S: tower::Service<Request<V>, Response = Response<V>, Error = Error> + Clone + Send + Sync + 'static,
        S::Future: Unpin + Send + 'static,
    {
        Self::with_start(service, start_eager::<S::Future, V>)
    }

    /// A stack over any service (its response futures are always boxed).
    pub(crate) fn new_boxed<S>(service: S) -> Self
    where
        S: tower::Service<Request<V>, Response = Response<V>, Error = Error> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        Self::with_start(service, start_boxed::<S::Future, V>)
    }

    fn with_start<S>(service: S, start: Start<S::Future, V>) -> Self
    where
        S: tower::Service<Request<V>, Response = Response<V>, Error = Error> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        let stripes = (0..STRIPES).map(|_| Stripe(Mutex::new(service.clone()))).collect();
        Stack { inner: Arc::new(Concrete { service, stripes, start }) }
    }

    /// Runs one request through the stack.
    pub(crate) fn request(&self, req: Request<V>) -> StackFuture<V> {
        self.inner.call(req)
    }

    /// Runs one request through the stack, as a boxed future.
    pub(crate) fn call(&self, req: Request<V>) -> BoxFuture<'static, Result<Response<V>>> {
        match self.inner.call(req) {
            StackFuture::Done(out) => Box::pin(std::future::ready(
                out.expect("a fresh StackFuture holds its answer"), // Invariant: not yet polled.
            )),
            StackFuture::Boxed(f) => f,
        }
    }
}
