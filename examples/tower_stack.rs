//! Compose livedict's layers yourself, with third-party Tower middleware in
//! between: here load shedding, a buffer and a concurrency limit from `tower`.
//!
//! Third-party limits go *below* the `LockLayer`: a `lock` call waits for its
//! key inside the `LockLayer`, so a concurrency limit above it would let lock
//! waiters hold every permit while the holder's own writes queue behind them.
//! `Buffer` and `LoadShed` box their errors; `.map_err(Error::from)` turns them
//! back into [`livedict::Error`] (a shed request is `Error::Backend { backend: "tower", .. }`).
//!
//! Run: `cargo run --example tower_stack`

use std::time::Duration;

use livedict::backend::{MemoryBackend, MemoryConfig};
use livedict::layer::{CallbackLayer, DispatchConfig, Dispatcher, LockLayer, TimeoutLayer, TraceLayer};
use livedict::{Callback, Error, Event, EventKind, LiveDict};
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> livedict::Result<()> {
    let dispatcher = Dispatcher::<String>::new(DispatchConfig::default().queue_capacity(1024))?;
    let backend = MemoryBackend::new(MemoryConfig::default().max_capacity(10_000), dispatcher.sink())?;
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new("memory"))
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .layer(LockLayer::new().with_stats_of(&dispatcher))
        // Third-party middleware between ours:
        .map_err(Error::from) // boxed tower errors → livedict::Error
        .load_shed() // a full buffer fails the request at once instead of queueing it
        .buffer(1024)
        .concurrency_limit(32)
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
