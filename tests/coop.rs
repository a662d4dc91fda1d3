//! Every livedict call is a cooperative yield point: a loop of calls that are
//! ready at once (memory reads and writes, uncontended locks, SQLite reads on
//! the calling thread, Redis near-cache hits) still gives its worker back, as
//! a loop over a Tokio channel does (issue 38).
//!
//! Each test runs on a current-thread runtime, where a task that never yields
//! starves every other task for certain: the loop must let a task spawned
//! before it run within a few budgets' worth of calls (Tokio's budget is 128).

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use livedict::{Callback, EventKind, LiveDict};

/// Calls a loop may make before the other task must have run (a few budgets).
const WITHIN: usize = 1_000;

/// Runs `op(i)` for `i` in `0..WITHIN` on this task beside a task spawned
/// first; panics unless that task ran before the loop ended.
async fn other_task_runs_during<F, Fut>(what: &str, mut op: F)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    for i in 0..WITHIN {
        op(i).await;
        if ran.load(Ordering::SeqCst) {
            return;
        }
    }
    panic!("{what}: {WITHIN} calls in a row never yielded to another task");
}

/// A memory store with `n` keys `k0..`.
async fn memory_store(n: usize) -> LiveDict<u64> {
    let d = LiveDict::open("memory://").await.unwrap();
    for i in 0..n {
        d.set(format!("k{i}"), i as u64).await.unwrap();
    }
    d
}

#[tokio::test]
async fn memory_gets_yield() {
    let d = memory_store(16).await;
    other_task_runs_during("get (hits)", |i| {
        let d = d.clone();
        async move {
            d.get(format!("k{}", i % 16)).await.unwrap();
        }
    })
    .await;
    other_task_runs_during("get_many", |_| {
        let d = d.clone();
        async move {
            assert_eq!(d.get_many(&["k1", "absent"]).await.unwrap(), [Some(1), None]);
        }
    })
    .await;
    other_task_runs_during("get (misses)", |_| {
        let d = d.clone();
        async move {
            assert_eq!(d.get("absent").await.unwrap(), None);
        }
    })
    .await;
}

#[tokio::test]
async fn memory_writes_yield() {
    let d = memory_store(16).await;
    other_task_runs_during("set", |i| {
        let d = d.clone();
        async move { d.set(format!("k{}", i % 16), 1).await.unwrap() }
    })
    .await;
    other_task_runs_during("set_with_ttl", |i| {
        let d = d.clone();
        async move { d.set_with_ttl(format!("k{}", i % 16), 1, Duration::from_secs(60)).await.unwrap() }
    })
    .await;
    other_task_runs_during("delete", |i| {
        let d = d.clone();
        async move {
            d.delete(format!("k{}", i % 16)).await.unwrap();
        }
    })
    .await;
    other_task_runs_during("exists, ttl", |i| {
        let d = d.clone();
        async move {
            d.exists(format!("k{}", i % 16)).await.unwrap();
            d.ttl(format!("k{}", i % 16)).await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn memory_writes_with_a_listener_yield() {
    let d = memory_store(0).await;
    d.register_callback(EventKind::Set, Callback::new(|_| {})).unwrap();
    other_task_runs_during("set with a Set callback", |i| {
        let d = d.clone();
        async move { d.set(format!("k{}", i % 16), 1).await.unwrap() }
    })
    .await;
}

#[tokio::test]
async fn uncontended_locks_and_guards_yield() {
    let d = memory_store(16).await;
    other_task_runs_during("lock + unlock", |i| {
        let d = d.clone();
        async move {
            let guard = d.lock(format!("k{}", i % 16), Duration::from_millis(200)).await.unwrap();
            guard.unlock().await.unwrap();
        }
    })
    .await;
    other_task_runs_during("a guard's get and set", |_| {
        let d = d.clone();
        async move {
            let guard = d.lock("held", Duration::from_millis(200)).await.unwrap();
            for _ in 0..4 {
                let n = guard.get().await.unwrap().unwrap_or(0);
                guard.set(n + 1).await.unwrap();
            }
        }
    })
    .await;
}

/// The case of the soak: a holder releases a lock another task
/// waits for, then goes on calling the store. The waiter is woken at the
/// release, and must get the lock while the holder's loop still runs (before
/// the fix it got it only once the loop ended, up to seconds later).
#[tokio::test(start_paused = true)]
async fn a_woken_lock_waiter_runs_while_the_releaser_keeps_calling() {
    let d = memory_store(16).await;
    let guard = d.lock("hot", Duration::from_secs(1)).await.unwrap();
    let got_it = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (d, got_it) = (d.clone(), Arc::clone(&got_it));
        tokio::spawn(async move {
            let guard = d.lock("hot", Duration::from_millis(200)).await.unwrap();
            got_it.store(true, Ordering::SeqCst);
            drop(guard);
        })
    };
    // Let the waiter queue up behind the holder.
    tokio::task::yield_now().await;
    guard.unlock().await.unwrap();
    let mut calls = 0;
    while !got_it.load(Ordering::SeqCst) {
        assert!(calls < WITHIN, "the woken waiter did not run during {WITHIN} calls");
        d.get(format!("k{}", calls % 16)).await.unwrap();
        calls += 1;
    }
    waiter.await.unwrap();
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_reads_on_the_calling_task_yield() {
    let dir = tempfile::tempdir().unwrap();
    let d: LiveDict<u64> =
        LiveDict::open(&format!("sqlite://{}", dir.path().join("s.db").display())).await.unwrap();
    d.set("k", 1).await.unwrap();
    other_task_runs_during("sqlite get", |_| {
        let d = d.clone();
        async move {
            assert_eq!(d.get("k").await.unwrap(), Some(1));
        }
    })
    .await;
    d.shutdown().await.unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_near_cache_hits_yield() {
    let Some(h) = support::Harness::redis() else { return };
    let d: LiveDict<u64> = LiveDict::open(&h.url_with("near_cache_ms=60000")).await.unwrap();
    d.set("k", 1).await.unwrap();
    // Fill the near cache (the first reads go to Redis and yield anyway).
    for _ in 0..10 {
        d.get("k").await.unwrap();
    }
    other_task_runs_during("near-cache get", |_| {
        let d = d.clone();
        async move {
            assert_eq!(d.get("k").await.unwrap(), Some(1));
        }
    })
    .await;
    d.shutdown().await.unwrap();
}

/// The blocking facade runs each call with `block_on`, which gives it a
/// fresh budget: calls in a loop never wait on the budget.
#[test]
fn the_blocking_facade_is_unaffected() {
    let d = livedict::blocking::LiveDict::<u64>::open("memory://").unwrap();
    for i in 0..10_000u64 {
        d.set(format!("k{}", i % 16), i).unwrap();
        assert_eq!(d.get(format!("k{}", i % 16)).unwrap(), Some(i));
    }
}
