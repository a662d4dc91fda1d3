//! The trace layer: one `tracing` span per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use pin_project::pin_project;
use tracing::Span;

use crate::error::Error;
use crate::request::{Request, Response};

/// A `tower::Layer` opening a `livedict.request` span (at DEBUG level) per
/// request, with the fields `op`, `backend`, `outcome` (`ok` or the error)
/// and `latency_us`. With no subscriber interested, it costs one relaxed load.
///
/// ```
/// let layer = livedict::layer::TraceLayer::new("memory");
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TraceLayer {
    backend: &'static str,
}

impl TraceLayer {
    /// Spans name `backend` in their `backend` field.
    pub fn new(backend: &'static str) -> Self {
        TraceLayer { backend }
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner, backend: self.backend }
    }
}

/// Service built by [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    backend: &'static str,
}

impl<S, V> tower::Service<Request<V>> for Trace<S>
where
    S: tower::Service<Request<V>, Response = Response<V>, Error = Error>,
{
    type Response = Response<V>;
    type Error = Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<V>) -> Self::Future {
        let span = tracing::debug_span!(
            "livedict.request",
            op = req.op(),
            backend = self.backend,
            outcome = tracing::field::Empty,
            latency_us = tracing::field::Empty,
        );
        if span.is_disabled() {
            return TraceFuture { inner: self.inner.call(req), span: None, started: None };
        }
        let inner = span.in_scope(|| self.inner.call(req));
        TraceFuture { inner, span: Some(span), started: Some(Instant::now()) }
    }
}

/// Future of [`Trace`].
#[pin_project]
pub struct TraceFuture<F> {
    #[pin]
    inner: F,
    span: Option<Span>,
    started: Option<Instant>,
}

impl<F, V> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<V>, Error>>,
{
    type Output = Result<Response<V>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(span) = this.span.as_ref() else {
            return this.inner.poll(cx);
        };
        let out = ready!(span.in_scope(|| this.inner.poll(cx)));
        match &out {
            Ok(_) => span.record("outcome", "ok"),
            Err(e) => span.record("outcome", tracing::field::display(e)),
        };
        if let Some(started) = this.started {
            span.record("latency_us", started.elapsed().as_micros() as u64);
        }
        Poll::Ready(out)
    }
}
