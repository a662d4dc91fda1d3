//! [`Stack`]: the type-erased service stack a `LiveDict` drives.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::ServiceExt;

use crate::error::{Error, Result};
use crate::request::{Request, Response};

/// A shared, type-erased `tower::Service<Request<V>>`: each call drives a
/// clone of the stack to completion (`poll_ready`, then `call`).
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

struct Concrete<S>(S);

impl<S, V> Erased<V> for Concrete<S>
where
    S: tower::Service<Request<V>, Response = Response<V>, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    V: Send + 'static,
{
    fn call(&self, req: Request<V>) -> BoxFuture<'static, Result<Response<V>>> {
        let mut service = self.0.clone();
        // Every built-in layer is always ready: check once without a real waker
        // and, if ready, call at once so the future does not carry the service
        // clone (measured: ~30 ns less per request than `oneshot`). A service
        // that is not ready (e.g. a concurrency limit) is driven by `oneshot`.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
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
        Stack { inner: Arc::new(Concrete(service)) }
    }

    /// Runs one request through the stack.
    pub(crate) fn call(&self, req: Request<V>) -> BoxFuture<'static, Result<Response<V>>> {
        self.inner.call(req)
    }
}
