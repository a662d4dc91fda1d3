//! The blocking facade: the same store from plain threads, no `.await`.
//!
//! Run: `cargo run --example blocking`

use std::time::Duration;

use livedict::blocking::LiveDict;
use livedict::{Callback, Event, EventKind};

fn main() -> livedict::Result<()> {
    let d: LiveDict<u64> = LiveDict::open("memory://")?;
    d.register_callback(
        EventKind::Expire,
        Callback::new(|ev: &Event<u64>| println!("expired {} (was {:?})", ev.key(), ev.value())),
    )?;

    // Four threads increment one counter under its lock: no update is lost.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let d = d.clone();
            std::thread::spawn(move || -> livedict::Result<()> {
                for _ in 0..1000 {
                    let guard = d.lock("counter", Duration::from_secs(5))?;
                    let n = guard.get()?.unwrap_or(0);
                    guard.set(n + 1)?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread did not panic")?;
    }
    println!("counter = {:?}", d.get("counter")?);

    d.set_with_ttl("temp", 42, Duration::from_millis(100))?;
    std::thread::sleep(Duration::from_millis(200));
    println!("temp after its TTL = {:?}", d.get("temp")?);
    d.shutdown()
}
