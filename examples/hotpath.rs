//! Internal: a tight loop over the memory hot path, for profilers (`perf record`).
//!
//! Run: `cargo run --release --example hotpath -- get|set|set_ttl|aget|aset|expire|raw_get|raw_set [millions]`
//! (`a…`: the async handle on a current-thread runtime; `raw_…`: `moka::sync::Cache` alone;
//! `expire`: that many keys set with a 1 ms TTL, each expiration heard by one sync callback).
//! Instructions per op: the difference of two `valgrind --tool=callgrind` runs at two sizes.

use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let op = args.next().unwrap_or_else(|| "get".into());
    let millions: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let n = (millions * 1e6) as usize;
    if let Some(raw_op) = op.strip_prefix("raw_") {
        let keys: Vec<String> = (0..10_000).map(|i| format!("k{i}")).collect();
        let v = "v".repeat(100);
        let c: moka::sync::Cache<String, String> = moka::sync::Cache::builder().build();
        for k in &keys {
            c.insert(k.clone(), v.clone());
        }
        let started = Instant::now();
        for i in 0..n {
            let k = &keys[i % keys.len()];
            match raw_op {
                "get" => {
                    std::hint::black_box(c.get(k));
                }
                _ => c.insert(k.clone(), v.clone()),
            }
        }
        println!("{op}: {:.0} ops/s", n as f64 / started.elapsed().as_secs_f64());
        return;
    }
    if op == "expire" {
        expire(n);
        return;
    }
    let b = livedict::LiveDict::<String>::builder().memory().build_blocking().expect("store");
    let keys: Vec<String> = (0..10_000).map(|i| format!("k{i}")).collect();
    let v = "v".repeat(100);
    for k in &keys {
        b.set(k, v.clone()).expect("set");
    }
    if op.starts_with('a') {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let d = rt.block_on(livedict::LiveDict::<String>::open("memory://")).expect("store");
        // The same keys as the blocking store: `aget` measures hits.
        rt.block_on(async {
            for k in &keys {
                d.set(k, v.clone()).await.expect("set");
            }
        });
        let started = Instant::now();
        rt.block_on(async {
            for i in 0..n {
                let k = &keys[i % keys.len()];
                match op.as_str() {
                    "aget" => {
                        std::hint::black_box(d.get(k).await.expect("get"));
                    }
                    _ => d.set_with_ttl(k, v.clone(), Duration::from_secs(3600)).await.expect("set"),
                }
            }
        });
        println!("{op}: {:.0} ops/s", n as f64 / started.elapsed().as_secs_f64());
        return;
    }
    let started = Instant::now();
    for i in 0..n {
        let k = &keys[i % keys.len()];
        match op.as_str() {
            "get" => {
                std::hint::black_box(b.get(k).expect("get"));
            }
            "set" => b.set(k, v.clone()).expect("set"),
            _ => b.set_with_ttl(k, v.clone(), Duration::from_secs(3600)).expect("set"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{op}: {:.0} ops/s", n as f64 / secs);
}

/// Sets `n` keys that expire 1 ms later; returns when one sync `Expire`
/// callback has heard every one.
fn expire(n: usize) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let b = livedict::LiveDict::<String>::builder().memory().build_blocking().expect("store");
    let heard = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&heard);
    b.register_callback(
        livedict::EventKind::Expire,
        livedict::Callback::new(move |_: &livedict::Event<String>| {
            h.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .expect("register");
    let keys: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
    let v = "v".repeat(100);
    let started = Instant::now();
    for k in &keys {
        b.set_with_ttl(k, v.clone(), Duration::from_millis(1)).expect("set");
    }
    while heard.load(Ordering::Relaxed) < n {
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("expire: {n} keys set and expired in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
}
