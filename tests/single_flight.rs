//! Single-flight loading (`get_or_insert_with`), on every backend.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use livedict::{Error, LiveDict};

/// Two handles on the store when the backend shares data, else one.
async fn handles<V: livedict::Value>(h: &support::Harness) -> Vec<LiveDict<V>> {
    let first = h.open::<V>().await;
    if h.shared() { vec![first, h.open::<V>().await] } else { vec![first] }
}

/// A loader that counts its calls, waits a little (so callers pile up), then answers.
fn slow_loader(
    calls: &Arc<AtomicUsize>,
    answer: Result<String, String>,
) -> impl FnOnce() -> futures::future::BoxFuture<'static, Result<String, String>> + Send + 'static {
    let calls = Arc::clone(calls);
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer
        })
    }
}

for_each_backend! {
    async fn twenty_concurrent_callers_share_one_load(h: Harness) {
        let ds = handles::<String>(&h).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let mut joins = Vec::new();
        for i in 0..20 {
            // On SQLite and Redis half the callers use a second handle (another
            // stack on the same data): the distributed lock makes them wait and re-read.
            let d = ds[i % ds.len()].clone();
            let loader = slow_loader(&calls, Ok("loaded".into()));
            joins.push(tokio::spawn(async move { d.get_or_insert_with("k", None, loader).await }));
        }
        for j in joins {
            assert_eq!(j.await.unwrap().unwrap(), "loaded");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the loader ran once");
        assert_eq!(ds[0].get("k").await.unwrap().as_deref(), Some("loaded"));
    }

    async fn a_loader_error_reaches_every_waiter_and_nothing_is_cached(h: Harness) {
        let d = h.open::<String>().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let mut joins = Vec::new();
        for _ in 0..20 {
            let d = d.clone();
            let loader = slow_loader(&calls, Err("database down".into()));
            joins.push(tokio::spawn(async move { d.get_or_insert_with("k", None, loader).await }));
        }
        for j in joins {
            match j.await.unwrap() {
                Err(Error::Loader { key, source }) => {
                    assert_eq!(key, "k");
                    assert_eq!(source.to_string(), "database down");
                }
                other => panic!("expected a loader error, got {other:?}"),
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one load, one error shared by all");
        assert!(!d.exists("k").await.unwrap(), "nothing cached");
        // The failed load is forgotten: the next call loads again.
        let v = d.get_or_insert_with("k", None, slow_loader(&calls, Ok("second".into()))).await.unwrap();
        assert_eq!(v, "second");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    async fn a_live_value_is_returned_without_calling_the_loader(h: Harness) {
        let d = h.open::<String>().await;
        d.set("k", "cached".into()).await.unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let v = d.get_or_insert_with("k", None, slow_loader(&calls, Ok("loaded".into()))).await.unwrap();
        assert_eq!(v, "cached");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    async fn the_loaded_value_gets_the_ttl_and_is_loaded_again_after_it(h: Harness) {
        let d = h.open::<String>().await;
        let calls = Arc::new(AtomicUsize::new(0));
        // Long enough that the `ttl` check right after the load sees it even on a loaded machine.
        let ttl = h.short_ttl() * 4;
        d.get_or_insert_with("k", Some(ttl), slow_loader(&calls, Ok("one".into()))).await.unwrap();
        assert!(d.ttl("k").await.unwrap().is_some());
        h.pass(ttl + h.grace()).await;
        let v = d.get_or_insert_with("k", Some(ttl), slow_loader(&calls, Ok("two".into()))).await.unwrap();
        assert_eq!(v, "two");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // `None` stores like `set`: without expiry.
        d.get_or_insert_with("other", None, slow_loader(&calls, Ok("x".into()))).await.unwrap();
        assert_eq!(d.ttl("other").await.unwrap(), None);
    }

    async fn different_keys_load_independently(h: Harness) {
        let d = h.open::<String>().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let mut joins = Vec::new();
        for i in 0..6 {
            let d = d.clone();
            let loader = slow_loader(&calls, Ok(format!("v{}", i % 3)));
            joins.push(tokio::spawn(async move { d.get_or_insert_with(format!("k{}", i % 3), None, loader).await }));
        }
        for j in joins {
            j.await.unwrap().unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3, "one load per key");
        for i in 0..3 {
            assert_eq!(d.get(format!("k{i}")).await.unwrap(), Some(format!("v{i}")));
        }
    }

    async fn an_abandoned_load_releases_the_key(h: Harness) {
        let d = h.open::<String>().await;
        let stuck = {
            let d = d.clone();
            tokio::spawn(async move {
                d.get_or_insert_with("k", None, || async {
                    std::future::pending::<()>().await;
                    Ok::<String, String>("never".into())
                })
                .await
            })
        };
        h.pass(Duration::from_millis(50)).await;
        stuck.abort();
        assert!(stuck.await.unwrap_err().is_cancelled());
        // The dropped load released the key's lock: a new caller loads at once
        // (well within the 30 s lock wait) instead of waiting for the old one.
        let calls = Arc::new(AtomicUsize::new(0));
        let v = tokio::time::timeout(
            Duration::from_secs(10),
            d.get_or_insert_with("k", None, slow_loader(&calls, Ok("fresh".into()))),
        )
        .await
        .expect("the abandoned load still held the key")
        .unwrap();
        assert_eq!(v, "fresh");
        // And a plain write is not blocked either.
        d.set("k", "plain".into()).await.unwrap();
    }

    async fn bad_keys_and_ttls_are_rejected_before_loading(h: Harness) {
        let d = h.open::<String>().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let r = d.get_or_insert_with("", None, slow_loader(&calls, Ok("x".into()))).await;
        assert!(matches!(r, Err(Error::InvalidKey { .. })));
        let r = d.get_or_insert_with("k", Some(Duration::ZERO), slow_loader(&calls, Ok("x".into()))).await;
        assert!(matches!(r, Err(Error::InvalidTtl { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn blocking_callers_on_threads_share_one_load() {
    let d = livedict::blocking::LiveDict::<String>::open("memory://").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (d, calls, barrier) = (d.clone(), Arc::clone(&calls), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                d.get_or_insert_with("k", None, move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                    Ok::<_, String>("loaded".to_string())
                })
                .unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), "loaded");
    }
    // A caller arriving after the load ended finds the value stored; either way one load.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
