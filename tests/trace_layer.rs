//! The trace layer's span, in a test binary of its own: `tracing`'s
//! per-callsite interest is global, and tests running the same callsite on
//! other threads while this one installs its scoped subscriber could make the
//! span look disabled (seen once in a full-suite run).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use livedict::backend::{MemoryBackend, MemoryConfig};
use livedict::layer::{CallbackLayer, DispatchConfig, Dispatcher, TimeoutLayer, TraceLayer};
use livedict::{Error, LiveDict, Request, Response};
use tower::ServiceBuilder;

/// A backend whose `Get`s never answer (the rest go to memory).
#[derive(Clone)]
struct StuckGets(MemoryBackend<u32>);

impl tower::Service<Request<u32>> for StuckGets {
    type Response = Response<u32>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Response<u32>, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<u32>) -> Self::Future {
        if matches!(req, Request::Get { .. }) {
            return Box::pin(std::future::pending());
        }
        let fut = self.0.call(req);
        Box::pin(fut)
    }
}

/// Collects the fields of every closed `livedict.request` span.
#[derive(Clone, Default)]
struct SpanCapture(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

struct Fields(BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanCapture
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Fields(BTreeMap::new());
        attrs.record(&mut fields);
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(fields) = ctx.span(id).unwrap().extensions_mut().get_mut::<Fields>() {
            values.record(fields);
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        if span.name() == "livedict.request"
            && let Some(fields) = span.extensions().get::<Fields>()
        {
            self.0.lock().unwrap().push(fields.0.clone());
        }
    }
}

#[tokio::test]
async fn trace_layer_records_op_backend_outcome_and_latency() {
    use tracing_subscriber::layer::SubscriberExt;
    let capture = SpanCapture::default();
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));

    let dispatcher = Dispatcher::<u32>::new(DispatchConfig::default()).unwrap();
    let backend = MemoryBackend::new(MemoryConfig::default(), dispatcher.sink()).unwrap();
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new("map"))
        .layer(TimeoutLayer::new(Duration::from_millis(30)))
        .layer(CallbackLayer::new(dispatcher.clone()))
        .service(StuckGets(backend));
    let d = LiveDict::from_service(stack, dispatcher);
    d.set("a", 1).await.unwrap();
    d.get("a").await.unwrap_err();

    let spans = capture.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let (set, get) = (&spans[0], &spans[1]);
    assert_eq!((set["op"].as_str(), set["backend"].as_str(), set["outcome"].as_str()), ("set", "map", "ok"));
    assert_eq!((get["op"].as_str(), get["outcome"].as_str()), ("get", "request `get` timed out after 30ms"));
    let latency: u64 = get["latency_us"].parse().unwrap();
    assert!(latency >= 30_000, "latency_us = {latency}");
}
