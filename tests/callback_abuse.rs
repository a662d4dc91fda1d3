//! Callbacks under abuse, on every backend: panicking on every event, sleeping
//! past their timeout on every event, re-entering the store, locking the key
//! they are told about, and a flooded queue. None of it may hurt the store.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use livedict::layer::callback::MAX_ABANDONED;
use livedict::{Callback, Event, EventKind};
use support::{Collector, eventually, settle};

const BOOM: &str = "callback_abuse: deliberate panic";

/// Keeps the 10,000 deliberate panics out of the output (and cheap): panics
/// carrying [`BOOM`] are silenced, every other panic is reported as usual.
fn silence_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&BOOM) {
                previous(info);
            }
        }));
    });
}

/// Writes `n` values from `tasks` concurrent tasks (so SQLite groups commits).
async fn write_concurrently(d: &livedict::LiveDict<u64>, n: u64, tasks: u64) {
    let all: Vec<_> = (0..tasks)
        .map(|t| {
            let d = d.clone();
            tokio::spawn(async move {
                for i in (t..n).step_by(tasks as usize) {
                    d.set(format!("k{}", i % 100), i).await.unwrap();
                }
            })
        })
        .collect();
    for t in all {
        t.await.unwrap();
    }
}

for_each_backend! {
    async fn ten_thousand_events_into_always_panicking_callbacks_leave_the_store_unaffected(h: Harness) {
        silence_deliberate_panics();
        let d = h.builder::<u64>().callback_queue_capacity(20_000).build().await.unwrap();
        d.register_callback(EventKind::Set, Callback::new(|_: &Event<u64>| panic!("{}", BOOM))).unwrap();
        d.register_callback(EventKind::Set, Callback::new_async(|_: Event<u64>| async { std::panic::panic_any(BOOM) }))
            .unwrap();
        let healthy = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&healthy);
        d.register_callback(EventKind::Set, Callback::new(move |_: &Event<u64>| {
            c.fetch_add(1, Ordering::Relaxed);
        }))
        .unwrap();
        let n = 10_000;
        write_concurrently(&d, n, 32).await;
        eventually("every panic counted", || d.stats().callbacks_panicked == 2 * n).await;
        eventually("the healthy callback saw every event", || healthy.load(Ordering::Relaxed) == n as usize).await;
        let s = d.stats();
        assert_eq!((s.sets, s.events_dropped), (n, 0), "{s:?}");
        // The store is intact and still serves reads, writes and events.
        assert_eq!(d.len().await.unwrap(), 100);
        for k in 0..100u64 {
            assert_eq!(d.get(format!("k{k}")).await.unwrap().map(|v| v % 100), Some(k));
        }
        d.set("after", 1).await.unwrap();
        eventually("events still flow", || healthy.load(Ordering::Relaxed) == n as usize + 1).await;
        d.shutdown().await.unwrap();
    }

    async fn a_callback_overrunning_its_timeout_on_every_event_stays_within_its_thread_bound(h: Harness) {
        let d = h.open::<u64>().await;
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let started = Arc::new(Mutex::new(Vec::new()));
        let (r, p, s) = (Arc::clone(&running), Arc::clone(&peak), Arc::clone(&started));
        // Sleeps 5x its timeout on every event (a real sleep: sync callbacks run on their own threads).
        let slow = Callback::new(move |ev: &Event<u64>| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            s.lock().unwrap().push(*ev.value().unwrap());
            std::thread::sleep(Duration::from_millis(100));
            r.fetch_sub(1, Ordering::SeqCst);
        })
        .timeout(Duration::from_millis(20));
        d.register_callback(EventKind::Set, slow).unwrap();
        // An async one that never finishes: cancelled at its timeout, one task for all events.
        let async_done = Arc::new(AtomicUsize::new(0));
        let a = Arc::clone(&async_done);
        let never = Callback::new_async(move |_: Event<u64>| {
            let a = Arc::clone(&a);
            async move {
                std::future::pending::<()>().await;
                a.fetch_add(1, Ordering::SeqCst);
            }
        })
        .timeout(Duration::from_millis(20));
        d.register_callback(EventKind::Set, never).unwrap();
        let tasks_before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        let n = 20u64;
        for i in 0..n {
            d.set("k", i).await.unwrap();
            // The store stays responsive meanwhile.
            assert_eq!(d.get("k").await.unwrap(), Some(i));
        }
        // Virtual time must pass on memory for the async timeouts.
        for _ in 0..n {
            h.pass(Duration::from_millis(25)).await;
        }
        eventually("every event reached the slow callback", || started.lock().unwrap().len() == n as usize).await;
        eventually("every call timed out", || d.stats().callbacks_timed_out == 2 * n).await;
        // Later events were still delivered, in order, and nothing was dropped.
        assert_eq!(*started.lock().unwrap(), (0..n).collect::<Vec<_>>());
        assert_eq!(d.stats().events_dropped, 0);
        // The bound: a sync callback runs at most 1 + MAX_ABANDONED calls at
        // once (plus its watchdog thread); an async callback is one task.
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= 1 + MAX_ABANDONED, "{peak} concurrent calls");
        assert!(peak > 1, "overdue calls were not detached");
        let tasks_after = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        assert!(tasks_after <= tasks_before + 1, "tasks grew from {tasks_before} to {tasks_after}");
        assert_eq!(async_done.load(Ordering::SeqCst), 0);
        d.shutdown().await.unwrap();
    }

    async fn a_reentrant_callback_that_locks_the_key_it_is_told_about_never_deadlocks(h: Harness) {
        let d = h.open::<u64>().await;
        let store = d.clone();
        let relocked = Arc::new(Mutex::new(Vec::new()));
        let r = Arc::clone(&relocked);
        // On every Set of `k`: lock `k` (while the writer may still hold it),
        // read it, mirror it into `mirror-k` through the guard-free API, read
        // the mirror back, and unlock.
        d.register_callback(
            EventKind::Set,
            Callback::new_async(move |ev: Event<u64>| {
                let (store, r) = (store.clone(), Arc::clone(&r));
                async move {
                    if ev.key() != "k" {
                        return;
                    }
                    let g = store.lock(ev.key(), Duration::from_secs(10)).await.unwrap();
                    let v = g.get().await.unwrap().unwrap();
                    store.set("mirror-k", v).await.unwrap();
                    assert_eq!(store.get("mirror-k").await.unwrap(), Some(v));
                    assert!(store.exists("k").await.unwrap());
                    r.lock().unwrap().push(v);
                    g.unlock().await.unwrap();
                }
            })
            .timeout(Duration::from_secs(20)),
        )
        .unwrap();
        let n = h.scale(50, 10) as u64;
        for i in 0..n {
            // The writer holds the lock while the event is emitted and for a while after.
            let g = d.lock("k", Duration::from_secs(10)).await.unwrap();
            g.set(i).await.unwrap();
            h.pass(Duration::from_millis(5)).await;
            g.unlock().await.unwrap();
        }
        eventually("the callback re-locked after every write", || relocked.lock().unwrap().len() == n as usize).await;
        assert_eq!(d.stats().callbacks_panicked + d.stats().callbacks_timed_out, 0, "{:?}", d.stats());
        // Values only grow: each callback read a value at least as new as its event's.
        let seen = relocked.lock().unwrap().clone();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(d.lock("k", Duration::from_secs(5)).await.unwrap().get().await.unwrap(), Some(n - 1));
        d.shutdown().await.unwrap(); // breaks the handle <-> callback cycle
    }

    async fn a_callback_hanging_while_holding_the_keys_lock_releases_it_at_its_timeout(h: Harness) {
        let d = h.open::<u64>().await;
        let store = d.clone();
        let locked = Arc::new(AtomicUsize::new(0));
        let l = Arc::clone(&locked);
        d.register_callback(
            EventKind::Set,
            Callback::new_async(move |ev: Event<u64>| {
                let (store, l) = (store.clone(), Arc::clone(&l));
                async move {
                    let _guard = store.lock(ev.key(), Duration::from_secs(10)).await.unwrap();
                    l.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await; // hangs holding the lock
                }
            })
            .timeout(Duration::from_millis(100)),
        )
        .unwrap();
        d.set("k", 1).await.unwrap();
        eventually("the callback holds the lock", || locked.load(Ordering::SeqCst) == 1).await;
        // Cancelling the callback at its timeout drops its guard: the key is usable again.
        let g = d.lock("k", Duration::from_secs(10)).await.unwrap();
        g.set(2).await.unwrap();
        g.unlock().await.unwrap();
        eventually("the second event's callback holds it in turn", || locked.load(Ordering::SeqCst) == 2).await;
        d.set("k", 3).await.unwrap(); // waits for that callback's timeout, then proceeds
        assert_eq!(d.get("k").await.unwrap(), Some(3));
        eventually("timeouts counted", || d.stats().callbacks_timed_out >= 2).await;
        d.shutdown().await.unwrap(); // breaks the handle <-> callback cycle
    }

    async fn shutdown_completes_while_a_callback_is_stuck(h: Harness) {
        let d = h.builder::<u64>().shutdown_drain_timeout(Duration::from_millis(200)).build().await.unwrap();
        let release = Arc::new(std::sync::Barrier::new(2));
        let r = Arc::clone(&release);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        d.register_callback(
            EventKind::Set,
            Callback::new(move |_: &Event<u64>| {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    r.wait(); // stuck until the test lets it go, far past the drain timeout
                }
            })
            .timeout(Duration::from_secs(600)),
        )
        .unwrap();
        for i in 0..10 {
            d.set("k", i).await.unwrap();
        }
        eventually("the callback is stuck", || calls.load(Ordering::SeqCst) == 1).await;
        d.shutdown().await.unwrap();
        assert!(matches!(d.set("k", 1).await, Err(livedict::Error::Closed)));
        release.wait();
        // What was queued behind the stuck call is counted, not silently lost.
        eventually("queued events counted", || {
            let s = d.stats();
            s.events_delivered + s.events_dropped == 10
        })
        .await;
    }

    async fn a_flooded_queue_drops_and_counts_without_blocking_the_writer_or_growing(h: Harness) {
        let capacity = 64;
        let d = h.builder::<u64>().callback_queue_capacity(capacity).build().await.unwrap();
        let gate = Arc::new(std::sync::Barrier::new(2));
        let g = Arc::clone(&gate);
        let delivered = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&delivered);
        d.register_callback(
            EventKind::Set,
            Callback::new(move |_: &Event<u64>| {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    g.wait(); // holds its worker until the writer is done
                }
            })
            .timeout(Duration::from_secs(60)),
        )
        .unwrap();
        let seen = Collector::new(); // an unblocked callback keeps receiving
        d.register_callback(EventKind::Set, seen.callback()).unwrap();
        let n = h.scale(5000, 1000) as u64;
        // If a full queue blocked the writer, this would never finish.
        let writer = tokio::time::timeout(Duration::from_secs(120), write_concurrently(&d, n, 8));
        writer.await.expect("the writer was blocked by a full callback queue");
        gate.wait();
        eventually("the blocked callback drained its queue", || {
            let s = d.stats();
            s.events_delivered + s.events_dropped == 2 * n
        })
        .await;
        settle().await;
        let blocked = delivered.load(Ordering::SeqCst) as u64;
        let s = d.stats();
        // At most one event in hand plus a full queue: memory stays bounded.
        assert!(blocked <= capacity as u64 + 1, "{blocked} delivered with capacity {capacity}");
        assert!(s.events_dropped >= n - blocked, "{s:?}");
        assert_eq!(s.events_delivered + s.events_dropped, 2 * n, "{s:?}");
        assert_eq!(s.sets, n);
        assert!(seen.len() > 0, "the unblocked callback got nothing");
        d.shutdown().await.unwrap();
    }
}
