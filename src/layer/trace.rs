//! The trace layer: one `tracing` span per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use pin_project::pin_project;
use tracing::Span;

use crate::error::Error;
use crate::request::{Request, Response};

/// A `tower::Layer` opening one `tracing` span per request.
///
/// The span is named `livedict.request`, at `DEBUG` level, with target
/// `livedict::layer::trace`. Its fields:
///
/// | field | type | value |
/// | --- | --- | --- |
/// | `op` | str | the operation, [`Request::op`]: `get`, `set`, `delete`, `exists`, `ttl`, `expire`, `persist`, `keys`, `items`, `len`, `clear`, `lock`, `renew`, `unlock`, `shutdown`, `throttle` (a rate-limit check), … |
/// | `backend` | str | the name given to [`TraceLayer::new`]; the default stack uses `memory`, `sqlite` or `redis` |
/// | `outcome` | str | `ok`, or the error's message (e.g. ``timed out waiting for the lock on key `k` ``); recorded when the response is ready, so it stays empty for a request dropped before it finished |
/// | `latency_us` | u64 | microseconds from the call to the response (recorded with `outcome`) |
///
/// The span is entered while the services below it run, so their own events
/// (and a backend's) nest under it. In the default stack the layer is the
/// outermost one: the latency includes time spent waiting for another
/// holder's lock and the outcome includes [`Error::Timeout`]. With no
/// subscriber interested in the span, the layer costs one relaxed load per request.
///
/// To see the spans, enable `livedict=debug` in your subscriber, e.g. with
/// `tracing_subscriber::fmt().with_env_filter("livedict=debug").with_span_events(FmtSpan::CLOSE)`
/// (which logs each span with its fields and timing when it closes).
///
/// ```
/// use livedict::layer::{TraceLayer, TimeoutLayer};
/// let stack = tower::ServiceBuilder::new()
///     .layer(TraceLayer::new("my-backend"))
///     .layer(TimeoutLayer::new(std::time::Duration::from_secs(1)));
/// # let _ = stack;
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

/// Whether a subscriber may enable `DEBUG` spans at all: when false,
/// [`request_span`] is disabled (the handle's direct path checks this).
pub(crate) fn spans_enabled() -> bool {
    tracing::level_enabled!(tracing::Level::DEBUG)
}

/// Whether a disabled [`request_span`] could still be logged: `tracing`'s
/// `log` compatibility logs spans through the `log` crate, at their level
/// (`DEBUG`) or not at all.
pub(crate) fn spans_may_log() -> bool {
    log::max_level() >= log::LevelFilter::Debug
}

/// The span of one request (one callsite, shared by [`Trace`] and the
/// handle's direct path, which makes it only while it is disabled and
/// [`spans_may_log`], for what `tracing`'s `log` compatibility does with it).
pub(crate) fn request_span(op: &'static str, backend: &'static str) -> Span {
    tracing::debug_span!(
        "livedict.request",
        op = op,
        backend = backend,
        outcome = tracing::field::Empty,
        latency_us = tracing::field::Empty,
    )
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
        let span = request_span(req.op(), self.backend);
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
