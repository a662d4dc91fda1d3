//! livedict in one minute: set/get, TTL with an expire callback, a locked
//! read-modify-write, and the counters. Memory backend; no server needed.
//!
//! Run: `cargo run --example quickstart`

use std::time::Duration;

use livedict::{Callback, Event, EventKind, LiveDict};

#[tokio::main]
async fn main() -> livedict::Result<()> {
    let d: LiveDict<String> = LiveDict::open("memory://").await?;

    // Plain set/get.
    d.set("greeting", "hello".to_string()).await?;
    println!("get greeting        -> {:?}", d.get("greeting").await?);

    // Expire events carry the expired value and fire on time, even for keys nobody touches.
    d.register_callback(
        EventKind::Expire,
        Callback::new(|ev: &Event<String>| {
            println!("expired {:<12} -> value was {:?}", ev.key(), ev.value());
        }),
    )?;
    d.set_with_ttl("session:alice", "token-1".to_string(), Duration::from_millis(300)).await?;
    println!("ttl session:alice   -> {:?}", d.ttl("session:alice").await?);
    tokio::time::sleep(Duration::from_millis(400)).await;
    println!("get session:alice   -> {:?} (after its TTL)", d.get("session:alice").await?);

    // A locked read-modify-write: 50 tasks, no lost increment.
    let counter: LiveDict<u64> = LiveDict::open("memory://").await?;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let counter = counter.clone();
            tokio::spawn(async move {
                let guard = counter.lock("hits", Duration::from_secs(5)).await?;
                let n = guard.get().await?.unwrap_or(0);
                guard.set(n + 1).await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task did not panic")?;
    }
    println!("hits after 50 locked increments -> {:?}", counter.get("hits").await?);

    let s = d.stats();
    println!("stats: {} sets, {} hits, {} misses, {} expirations", s.sets, s.hits, s.misses, s.expirations);
    d.shutdown().await?;
    counter.shutdown().await?;
    Ok(())
}
