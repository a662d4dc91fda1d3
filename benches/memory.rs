//! Criterion benches: the memory backend through the full default stack and
//! the blocking facade, next to raw `moka::sync::Cache` in the same run.
//!
//! Run: `cargo bench --bench memory`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

const N: usize = 10_000;

fn keys() -> Vec<String> {
    (0..N).map(|i| format!("k{i}")).collect()
}

fn value() -> String {
    "v".repeat(100)
}

fn bench_memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let keys = keys();
    let v = value();

    let raw: moka::sync::Cache<String, String> = moka::sync::Cache::builder().build();
    for k in &keys {
        raw.insert(k.clone(), v.clone());
    }
    let d: livedict::LiveDict<String> = rt.block_on(livedict::LiveDict::open("memory://")).unwrap();
    rt.block_on(async {
        for k in &keys {
            d.set(k, v.clone()).await.unwrap();
        }
    });
    let b = livedict::LiveDict::<String>::builder().memory().build_blocking().unwrap();
    for k in &keys {
        b.set(k, v.clone()).unwrap();
    }

    let mut g = c.benchmark_group("get_hit");
    let mut i = 0;
    g.bench_function("raw_moka_sync", |bn| {
        bn.iter(|| {
            i = (i + 1) % N;
            black_box(raw.get(&keys[i]))
        })
    });
    g.bench_function("livedict_async_full_stack", |bn| {
        bn.to_async(&rt).iter(|| {
            i = (i + 1) % N;
            let (d, k) = (&d, &keys[i]);
            async move { black_box(d.get(k).await.unwrap()) }
        })
    });
    g.bench_function("livedict_blocking", |bn| {
        bn.iter(|| {
            i = (i + 1) % N;
            black_box(b.get(&keys[i]).unwrap())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("set");
    g.bench_function("raw_moka_sync_insert", |bn| {
        bn.iter(|| {
            i = (i + 1) % N;
            raw.insert(keys[i].clone(), v.clone())
        })
    });
    g.bench_function("livedict_async_set_with_ttl", |bn| {
        bn.to_async(&rt).iter(|| {
            i = (i + 1) % N;
            let (d, k, v) = (&d, &keys[i], v.clone());
            async move { d.set_with_ttl(k, v, Duration::from_secs(3600)).await.unwrap() }
        })
    });
    g.bench_function("livedict_async_set", |bn| {
        bn.to_async(&rt).iter(|| {
            i = (i + 1) % N;
            let (d, k, v) = (&d, &keys[i], v.clone());
            async move { d.set(k, v).await.unwrap() }
        })
    });
    g.bench_function("livedict_blocking_set", |bn| {
        bn.iter(|| {
            i = (i + 1) % N;
            b.set(&keys[i], v.clone()).unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("lock");
    g.bench_function("livedict_lock_unlock_uncontended", |bn| {
        bn.to_async(&rt).iter(|| {
            i = (i + 1) % N;
            let (d, k) = (&d, &keys[i]);
            async move { d.lock(k, Duration::from_secs(1)).await.unwrap().unlock().await.unwrap() }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench_memory
}
criterion_main!(benches);
