//! The SQLite backend: a durable store in one file, shared by processes.
//!
//! Writes from concurrent tasks are group-committed; expirations are claimed
//! atomically, so each one is reported exactly once across every process that
//! opens the file. Run it twice at once to see the file shared.
//!
//! Run: `cargo run --example sqlite [-- path/to/file.db]`

use std::time::Duration;

use livedict::{Callback, Event, EventKind, LiveDict};
use serde::{Deserialize, Serialize};

/// What the example stores: any serde type works (JSON in the file by default).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    item: String,
    qty: u32,
}

#[tokio::main]
async fn main() -> livedict::Result<()> {
    let dir = tempfile_dir();
    let path = std::env::args().nth(1).unwrap_or_else(|| format!("{dir}/orders.db"));
    let d: LiveDict<Order> = LiveDict::open(&format!("sqlite://{path}?table=orders")).await?;
    println!("store: {path} (inspect it with: sqlite3 {path} 'select * from orders')");

    d.register_callback(
        EventKind::Expire,
        Callback::new(|ev: &Event<Order>| println!("expired {:<8} -> {:?}", ev.key(), ev.value())),
    )?;

    d.set("o-1", Order { item: "book".into(), qty: 1 }).await?;
    d.set_with_ttl("o-2", Order { item: "pen".into(), qty: 3 }, Duration::from_millis(300)).await?;
    println!("get o-1 -> {:?}", d.get("o-1").await?);
    println!("ttl o-2 -> {:?}", d.ttl("o-2").await?);

    // 100 concurrent writers: one transaction per batch, not per call.
    let writers: Vec<_> = (0..100)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(
                async move { d.set(format!("bulk-{i}"), Order { item: "bulk".into(), qty: i }).await },
            )
        })
        .collect();
    for w in writers {
        w.await.expect("writer did not panic")?;
    }
    println!("len after 100 concurrent sets -> {}", d.len().await?);

    // A locked read-modify-write; on SQLite the lock holds across processes too.
    let guard = d.lock("o-1", Duration::from_secs(2)).await?;
    if let Some(mut order) = guard.get().await? {
        order.qty += 1;
        guard.set(order).await?;
    }
    guard.unlock().await?;
    println!("o-1 after locked update -> {:?}", d.get("o-1").await?);

    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("o-2 after its TTL -> {:?}", d.get("o-2").await?);
    d.shutdown().await
}

/// A directory for the default database file.
fn tempfile_dir() -> String {
    std::env::temp_dir().display().to_string()
}
