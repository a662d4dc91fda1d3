//! Compose livedict's layers yourself, with third-party Tower middleware in
//! between: here a concurrency limit and load shedding from `tower`.
//!
//! Run: `cargo run --example tower_stack`

use std::time::Duration;

use livedict::backend::{MemoryBackend, MemoryConfig};
use livedict::layer::{CallbackLayer, DispatchConfig, Dispatcher, LockLayer, TimeoutLayer, TraceLayer};
use livedict::{Callback, Event, EventKind, LiveDict};
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimitLayer;

#[tokio::main]
async fn main() -> livedict::Result<()> {
    let dispatcher = Dispatcher::<String>::new(DispatchConfig::default().queue_capacity(1024))?;
    let backend = MemoryBackend::new(MemoryConfig::default().max_capacity(10_000), dispatcher.sink())?;
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new("memory"))
        .layer(ConcurrencyLimitLayer::new(32)) // third-party middleware between ours
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .layer(LockLayer::new().with_stats_of(&dispatcher))
        .layer(CallbackLayer::new(dispatcher.clone()))
        .service(backend);
    let d = LiveDict::from_service(stack, dispatcher);

    d.register_callback(EventKind::Set, Callback::new(|ev: &Event<String>| println!("set {}", ev.key())))?;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move { d.set(format!("user:{i}"), format!("name {i}")).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task did not panic")?;
    }
    println!("{} entries; stats: {:?}", d.len().await?, d.stats());
    d.shutdown().await
}
