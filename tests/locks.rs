//! Per-key locks, on every backend.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use livedict::Error;
use support::Kind;

for_each_backend! {
    async fn contended_locked_increments_are_exact(h: Harness) {
        let d = h.open::<u64>().await;
        let (tasks, rounds) = (64, h.scale(100, 8));
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let d = d.clone();
            handles.push(tokio::spawn(async move {
                for _ in 0..rounds {
                    let g = d.lock("counter", Duration::from_secs(30)).await.unwrap();
                    let n = g.get().await.unwrap().unwrap_or(0);
                    g.set(n + 1).await.unwrap();
                }
            }));
        }
        for t in handles {
            t.await.unwrap();
        }
        assert_eq!(d.get("counter").await.unwrap(), Some((tasks * rounds) as u64));
    }

    async fn a_write_from_another_handle_waits_for_the_lock(h: Harness) {
        let d = h.open::<u32>().await;
        d.set("k", 1).await.unwrap();
        let guard = d.lock("k", Duration::from_secs(1)).await.unwrap();
        // A clone shares the stack; on SQLite and Redis a second `open` is
        // another stack on the same data: both must wait.
        let mut writers = vec![d.clone()];
        if h.shared() {
            writers.push(h.open::<u32>().await);
        }
        let done = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, w) in writers.into_iter().enumerate() {
            let done = Arc::clone(&done);
            tasks.push(tokio::spawn(async move {
                w.set("k", 100 + i as u32).await.unwrap();
                done.store(true, Ordering::SeqCst);
            }));
        }
        h.pass(Duration::from_millis(200)).await;
        assert!(!done.load(Ordering::SeqCst), "a write passed a held lock");
        assert_eq!(d.get("k").await.unwrap(), Some(1), "reads do not wait");
        guard.set(2).await.unwrap();
        guard.unlock().await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(d.get("k").await.unwrap().unwrap() >= 100);
    }

    async fn lock_times_out_while_another_holds_it(h: Harness) {
        let d = h.open::<u32>().await;
        let _held = d.lock("k", Duration::from_secs(1)).await.unwrap();
        let err = d.lock("k", Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(err, Error::LockTimeout { ref key } if key == "k"), "{err:?}");
        assert!(d.stats().lock_timeouts >= 1);
    }

    async fn dropping_the_guard_releases_the_lock(h: Harness) {
        let d = h.open::<u32>().await;
        {
            let g = d.lock("k", Duration::from_secs(1)).await.unwrap();
            g.set(1).await.unwrap();
        }
        // Distributed backends release a dropped guard in a background task.
        let g = d.lock("k", Duration::from_secs(2)).await.unwrap();
        assert_eq!(g.get().await.unwrap(), Some(1));
        assert!(g.delete().await.unwrap());
    }

    async fn a_timed_out_waiter_does_not_leak_the_lock(h: Harness) {
        let d = h.open::<u32>().await;
        let g = d.lock("k", Duration::from_secs(1)).await.unwrap();
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move { d.lock("k", Duration::from_millis(30)).await.map(|_| ()) })
            })
            .collect();
        for w in waiters {
            assert!(matches!(w.await.unwrap(), Err(Error::LockTimeout { .. })));
        }
        drop(g);
        let g = d.lock("k", Duration::from_secs(2)).await.unwrap();
        g.unlock().await.unwrap();
    }

    async fn guard_writes_with_ttl_and_delete(h: Harness) {
        let d = h.open::<u32>().await;
        let g = d.lock("k", Duration::from_secs(1)).await.unwrap();
        assert_eq!(g.key(), "k");
        g.set_with_ttl(3, Duration::from_secs(60)).await.unwrap();
        assert!(d.ttl("k").await.unwrap().is_some());
        assert!(g.delete().await.unwrap());
        assert!(!g.delete().await.unwrap());
        if h.kind != Kind::Memory {
            assert!(g.lease().is_some());
        }
    }

    async fn locks_on_different_keys_are_independent(h: Harness) {
        let d = h.open::<u32>().await;
        let a = d.lock("a", Duration::from_secs(1)).await.unwrap();
        let b = d.lock("b", Duration::from_millis(100)).await.unwrap();
        d.set("c", 1).await.unwrap();
        drop((a, b));
    }
}

#[tokio::test]
async fn lock_table_is_empty_after_all_guards_drop() {
    use livedict::backend::{MemoryBackend, MemoryConfig};
    use livedict::layer::{CallbackLayer, DispatchConfig, Dispatcher, LockLayer};
    let dispatcher = Dispatcher::<u32>::new(DispatchConfig::default()).unwrap();
    let backend = MemoryBackend::new(MemoryConfig::default(), dispatcher.sink()).unwrap();
    let stack = tower::ServiceBuilder::new()
        .layer(LockLayer::new())
        .layer(CallbackLayer::new(dispatcher.clone()))
        .service(backend);
    let probe = stack.clone();
    let d = livedict::LiveDict::from_service(stack, dispatcher);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("k{}", i % 7);
            let g = d.lock(&key, Duration::from_secs(5)).await.unwrap();
            d.lock(&key, Duration::from_millis(1)).await.unwrap_err();
            g.set(i).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(probe.locked_keys(), 0);
}
