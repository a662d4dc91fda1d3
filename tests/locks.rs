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

    async fn a_thousand_tasks_of_ten_locked_increments_lose_no_update(h: Harness) {
        // On SQLite and Redis each increment also takes the cross-process lock.
        let d = h.open::<u64>().await;
        let (tasks, rounds) = (1000, 10);
        let all: Vec<_> = (0..tasks)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move {
                    for _ in 0..rounds {
                        let g = d.lock("counter", Duration::from_secs(120)).await.unwrap();
                        let n = g.get().await.unwrap().unwrap_or(0);
                        g.set(n + 1).await.unwrap();
                        // Half the guards are dropped rather than unlocked.
                        if n % 2 == 0 {
                            g.unlock().await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in all {
            t.await.unwrap();
        }
        assert_eq!(d.get("counter").await.unwrap(), Some((tasks * rounds) as u64));
        assert_eq!(d.stats().lock_timeouts, 0);
        assert!(distributed_locks_drain(&h).await, "the distributed lock table is not empty");
    }

    async fn lock_timeouts_under_contention_are_lock_timeout_and_leak_nothing(h: Harness) {
        let d = h.open::<u64>().await;
        let tasks = h.scale(200, 40);
        let all: Vec<_> = (0..tasks)
            .map(|t| {
                let d = d.clone();
                tokio::spawn(async move {
                    let (mut got, mut timed_out) = (0u64, 0u64);
                    for i in 0..5u64 {
                        // Timeouts from 1 to 8 ms against holders that keep the lock ~2 ms.
                        match d.lock("hot", Duration::from_millis(1 + (t as u64 + i) % 8)).await {
                            Ok(g) => {
                                let n = g.get().await.unwrap().unwrap_or(0);
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                g.set(n + 1).await.unwrap();
                                if i % 2 == 0 { g.unlock().await.unwrap() } else { drop(g) }
                                got += 1;
                            }
                            Err(Error::LockTimeout { key }) => {
                                assert_eq!(key, "hot");
                                timed_out += 1;
                            }
                            Err(e) => panic!("expected LockTimeout, got {e:?}"),
                        }
                    }
                    (got, timed_out)
                })
            })
            .collect();
        let (mut got, mut timed_out) = (0, 0);
        for t in all {
            let (g, o) = t.await.unwrap();
            got += g;
            timed_out += o;
        }
        assert!(timed_out > 0, "no contention");
        assert_eq!(d.stats().lock_timeouts, timed_out);
        // Every successful holder's increment is there: no timed-out waiter wrote.
        assert_eq!(d.get("hot").await.unwrap(), Some(got));
        // Nothing leaked: the lock is free at once, locally and in the shared table.
        assert!(distributed_locks_drain(&h).await, "the distributed lock table is not empty");
        let g = d.lock("hot", Duration::from_millis(50)).await.unwrap();
        g.unlock().await.unwrap();
    }

    async fn locks_on_different_keys_are_independent(h: Harness) {
        let d = h.open::<u32>().await;
        let a = d.lock("a", Duration::from_secs(1)).await.unwrap();
        let b = d.lock("b", Duration::from_millis(100)).await.unwrap();
        d.set("c", 1).await.unwrap();
        drop((a, b));
    }
}

/// Waits (up to 10 s) for dropped guards' background releases; true once the shared lock table is empty.
async fn distributed_locks_drain(h: &support::Harness) -> bool {
    for _ in 0..500 {
        if distributed_locks(h).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Whether the backend's shared lock table (SQLite rows, Redis keys) is empty;
/// memory has none (its in-process table is checked below).
async fn distributed_locks(h: &support::Harness) -> bool {
    match h.kind {
        Kind::Memory => true,
        #[cfg(feature = "sqlite")]
        Kind::Sqlite => {
            let path = h.url().strip_prefix("sqlite://").unwrap().to_owned();
            let raw = rusqlite::Connection::open(path).unwrap();
            raw.query_row("SELECT count(*) FROM livedict_locks", [], |r| r.get::<_, i64>(0)).unwrap() == 0
        }
        #[cfg(feature = "redis")]
        Kind::Redis | Kind::RedisCluster | Kind::RedisSentinel => {
            let (_, ns) = h.redis_parts();
            h.redis_keys_matching(&format!("ld:{{{ns}:*}}:l:*")).is_empty()
        }
        #[allow(unreachable_patterns)]
        _ => true,
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

/// The default memory stack takes an uncontended lock in the lock table
/// without a request (its direct path); a held key makes `lock` wait in the
/// stack, which times out and counts as before.
#[tokio::test(start_paused = true)]
async fn memory_direct_lock_times_out_while_held_and_counts_it() {
    let d = livedict::LiveDict::<u32>::open("memory://").await.unwrap();
    let g = d.lock("k", Duration::from_secs(1)).await.unwrap();
    assert_eq!((g.key(), g.fence(), g.lease()), ("k", 0, None));
    let err = d.lock("k", Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(err, Error::LockTimeout { ref key } if key == "k"), "{err:?}");
    assert_eq!((d.stats().lock_waits, d.stats().lock_timeouts), (1, 1));
    let err = d.lock("k", Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, Error::LockTimeout { .. }), "{err:?}");
    assert_eq!((d.stats().lock_waits, d.stats().lock_timeouts), (2, 2));
    g.unlock().await.unwrap();
    // Free again: taken at once, even with a zero timeout, and nothing counted.
    let g = d.lock("k", Duration::ZERO).await.unwrap();
    g.unlock().await.unwrap();
    assert_eq!((d.stats().lock_waits, d.stats().lock_timeouts), (2, 2));
}

/// A guard taken on the direct path releases its lock when dropped: at
/// once, and a waiter in the stack is woken.
#[tokio::test(start_paused = true)]
async fn memory_direct_guard_drop_releases_and_wakes_a_waiter() {
    let d = livedict::LiveDict::<u32>::open("memory://").await.unwrap();
    {
        let g = d.lock("k", Duration::from_secs(1)).await.unwrap();
        g.set(1).await.unwrap();
        assert_eq!(g.get().await.unwrap(), Some(1));
    }
    let g = d.lock("k", Duration::ZERO).await.expect("released at drop");
    let waiter = {
        let d = d.clone();
        tokio::spawn(async move {
            let g = d.lock("k", Duration::from_secs(5)).await?;
            g.set(2).await?;
            Ok::<_, Error>(())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "the waiter passed a held lock");
    // A plain write from another handle waits for the holder too.
    let writer = {
        let d = d.clone();
        tokio::spawn(async move { d.set("k", 9).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished(), "a write passed a held lock");
    assert!(g.delete().await.unwrap());
    drop(g);
    waiter.await.unwrap().unwrap();
    writer.await.unwrap().unwrap();
    assert!(d.get("k").await.unwrap().is_some());
    assert!(d.stats().lock_waits >= 2);
    let g = d.lock("k", Duration::ZERO).await.expect("the waiter's guard released at drop");
    g.unlock().await.unwrap();
}

/// On a closed store `lock` is `Closed` (the direct path is not taken); a
/// guard taken before the shutdown still releases.
#[tokio::test(start_paused = true)]
async fn memory_direct_lock_on_a_closed_store_is_closed() {
    let d = livedict::LiveDict::<u32>::open("memory://").await.unwrap();
    let g = d.lock("held", Duration::from_secs(1)).await.unwrap();
    let dropped = d.lock("dropped", Duration::from_secs(1)).await.unwrap();
    d.shutdown().await.unwrap();
    assert!(matches!(d.lock("k", Duration::from_secs(1)).await, Err(Error::Closed)));
    assert!(matches!(d.lock("held", Duration::ZERO).await, Err(Error::Closed)));
    assert!(matches!(g.set(1).await, Err(Error::Closed)));
    assert!(matches!(g.get().await, Err(Error::Closed)));
    g.unlock().await.unwrap();
    drop(dropped);
}

/// The blocking facade's `lock` takes the same direct path.
#[test]
fn memory_direct_lock_through_the_blocking_facade() {
    let d = livedict::blocking::LiveDict::<u32>::open("memory://").unwrap();
    let g = d.lock("k", Duration::from_secs(1)).unwrap();
    g.set(1).unwrap();
    assert!(matches!(d.lock("k", Duration::from_millis(10)), Err(Error::LockTimeout { .. })));
    drop(g);
    let g = d.lock("k", Duration::ZERO).unwrap();
    assert_eq!(g.get().unwrap(), Some(1));
    g.unlock().unwrap();
}
