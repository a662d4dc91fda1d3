//! The Redis backend: millisecond TTLs, expire events with values delivered
//! exactly once across every process on the namespace, distributed locks.
//!
//! Needs a running server. Start one with `redis-server --port 6379` and run:
//! `cargo run --example redis [-- redis://127.0.0.1:6379/0?namespace=demo]`

use std::time::Duration;

use livedict::{Callback, Error, Event, EventKind, LiveDict};

#[tokio::main]
async fn main() -> livedict::Result<()> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "redis://127.0.0.1:6379/0?namespace=demo".into());
    let d: LiveDict<String> = match LiveDict::builder().url(&url).build().await {
        Ok(d) => d,
        Err(e @ Error::Backend { .. }) => {
            eprintln!("no Redis server reachable ({e}).");
            eprintln!("start one with `redis-server --port 6379` and run this example again.");
            std::process::exit(2);
        }
        Err(e) => return Err(e),
    };
    println!("store: {url} (inspect it with: redis-cli --scan --pattern 'ld:{{demo}}:*')");

    d.register_callback(
        EventKind::Expire,
        Callback::new(|ev: &Event<String>| println!("expired {:<10} -> {:?}", ev.key(), ev.value())),
    )?;

    d.set("greeting", "hello".to_string()).await?;
    d.set_with_ttl("otp", "493817".to_string(), Duration::from_millis(250)).await?;
    println!("get greeting -> {:?}", d.get("greeting").await?);
    println!("ttl otp      -> {:?} (millisecond precision)", d.ttl("otp").await?);

    // A distributed lock: other processes on the namespace wait for it too.
    let guard = d.lock("greeting", Duration::from_secs(2)).await?;
    println!("locked greeting with fence {}", guard.fence());
    guard.set("hello, world".to_string()).await?;
    guard.unlock().await?;

    tokio::time::sleep(Duration::from_millis(400)).await;
    println!("get otp after its TTL -> {:?}", d.get("otp").await?);
    println!("keys -> {:?}", d.keys().await?);
    d.clear().await?;
    d.shutdown().await
}
