//! Events and the callback sandbox, on every backend.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use livedict::{Callback, Event, EventKind};
use support::{Collector, eventually, settle};

for_each_backend! {
    async fn expire_event_carries_the_value_of_an_untouched_key(h: Harness) {
        let d = h.open::<String>().await;
        let seen = Collector::new();
        d.register_callback(EventKind::Expire, seen.callback()).unwrap();
        d.set_with_ttl("k", "v".into(), h.short_ttl()).await.unwrap();
        h.pass(h.short_ttl() + h.grace()).await;
        eventually("one expire event", || seen.len() == 1).await;
        assert_eq!(seen.events(), vec![(EventKind::Expire, "k".to_string(), Some("v".to_string()))]);
        assert_eq!(d.stats().expirations, 1);
    }

    async fn each_entry_expires_exactly_once(h: Harness) {
        let d = h.open::<u32>().await;
        let seen = Collector::new();
        d.register_callback(EventKind::Expire, seen.async_callback()).unwrap();
        let n = 500;
        for i in 0..n {
            d.set_with_ttl(format!("k{i}"), i, h.short_ttl()).await.unwrap();
            // Re-set some right away (long before their deadline, however slow the
            // machine): only their newest write expires, once.
            if i < 50 {
                d.set_with_ttl(format!("k{i}"), i + 1000, h.short_ttl()).await.unwrap();
            }
        }
        h.pass(h.short_ttl() + h.grace()).await;
        eventually("all expire events", || seen.len() >= n as usize).await;
        settle().await;
        let events = seen.events();
        assert_eq!(events.len(), n as usize, "no duplicates");
        let keys: HashSet<_> = events.iter().map(|(_, k, _)| k.clone()).collect();
        assert_eq!(keys.len(), n as usize);
        for (_, k, v) in events {
            let i: u32 = k[1..].parse().unwrap();
            assert_eq!(v, Some(if i < 50 { i + 1000 } else { i }));
        }
    }

    async fn an_entry_that_expired_before_a_clear_is_reported_exactly_once(h: Harness) {
        // On SQLite and Redis another instance writes the entry and shuts down
        // before its deadline, and this one polls rarely: at the clear the
        // expired entry is still unclaimed. Its Expire event must not be lost.
        let slow = match h.kind {
            support::Kind::Sqlite => format!("{}?poll_ms=60000", h.url()),
            support::Kind::Redis | support::Kind::RedisCluster | support::Kind::RedisSentinel => format!("{}&sweep_ms=60000", h.url()),
            support::Kind::Memory => h.url().to_owned(),
        };
        let d = h.builder::<u32>().url(&slow).build().await.unwrap();
        let seen = Collector::new();
        d.register_callback(EventKind::Expire, seen.callback()).unwrap();
        if h.shared() {
            let writer = h.open::<u32>().await;
            writer.set_with_ttl("k", 7, Duration::from_millis(50)).await.unwrap();
            writer.shutdown().await.unwrap();
        } else {
            d.set_with_ttl("k", 7, Duration::from_millis(50)).await.unwrap();
        }
        h.pass(Duration::from_millis(100)).await;
        d.clear().await.unwrap();
        d.shutdown().await.unwrap();
        assert_eq!(seen.events(), vec![(EventKind::Expire, "k".to_string(), Some(7))]);
    }

    async fn get_events_fire_on_hits_only(h: Harness) {
        let d = h.open::<u32>().await;
        let seen = Collector::new();
        d.register_callback(EventKind::Get, seen.callback()).unwrap();
        d.set("a", 1).await.unwrap();
        d.get("a").await.unwrap();
        d.get("missing").await.unwrap();
        eventually("one get event", || seen.len() == 1).await;
        settle().await;
        assert_eq!(seen.events(), vec![(EventKind::Get, "a".to_string(), Some(1))]);
    }

    async fn delete_of_missing_key_fires_no_event(h: Harness) {
        let d = h.open::<u32>().await;
        let seen = Collector::new();
        d.register_callback(EventKind::Delete, seen.callback()).unwrap();
        d.delete("never-existed").await.unwrap();
        d.set("a", 1).await.unwrap();
        d.delete("a").await.unwrap();
        d.delete("a").await.unwrap();
        eventually("one delete event", || seen.len() == 1).await;
        settle().await;
        assert_eq!(seen.events(), vec![(EventKind::Delete, "a".to_string(), Some(1))]);
    }

    async fn set_events_arrive_in_order_with_values(h: Harness) {
        let d = h.open::<u32>().await;
        let seen = Collector::new();
        d.register_callback(EventKind::Set, seen.callback()).unwrap();
        for i in 0..100 {
            d.set("k", i).await.unwrap();
        }
        eventually("100 set events", || seen.len() == 100).await;
        let values: Vec<_> = seen.events().into_iter().map(|(_, _, v)| v.unwrap()).collect();
        assert_eq!(values, (0..100).collect::<Vec<_>>());
    }

    async fn panicking_callback_is_isolated(h: Harness) {
        let d = h.open::<u32>().await;
        let seen = Collector::new();
        d.register_callback(EventKind::Set, Callback::new(|_: &Event<u32>| panic!("boom"))).unwrap();
        d.register_callback(EventKind::Set, Callback::new_async(|_: Event<u32>| async { panic!("async boom") }))
            .unwrap();
        d.register_callback(EventKind::Set, seen.callback()).unwrap();
        for i in 0..20 {
            d.set("k", i).await.unwrap();
        }
        eventually("healthy callback got every event", || seen.len() == 20).await;
        eventually("panics counted", || d.stats().callbacks_panicked == 40).await;
        assert_eq!(d.get("k").await.unwrap(), Some(19));
    }

    async fn slow_callback_is_abandoned_and_later_events_still_arrive(h: Harness) {
        let d = h.open::<u32>().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let slow_sync = Callback::new(move |ev: &Event<u32>| {
            c.fetch_add(1, Ordering::SeqCst);
            if ev.value() == Some(&0) {
                std::thread::sleep(Duration::from_millis(400));
            }
        })
        .timeout(Duration::from_millis(50));
        d.register_callback(EventKind::Set, slow_sync).unwrap();
        let async_calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&async_calls);
        let slow_async = Callback::new_async(move |ev: Event<u32>| {
            let c = Arc::clone(&c);
            async move {
                if ev.value() == Some(&0) {
                    std::future::pending::<()>().await;
                }
                c.fetch_add(1, Ordering::SeqCst);
            }
        })
        .timeout(Duration::from_millis(50));
        d.register_callback(EventKind::Set, slow_async).unwrap();
        for i in 0..5 {
            d.set("k", i).await.unwrap();
        }
        eventually("sync callback saw every event", || calls.load(Ordering::SeqCst) == 5).await;
        // Virtual time must pass for the async timeout on memory.
        h.pass(Duration::from_millis(100)).await;
        eventually("async callback finished the other events", || async_calls.load(Ordering::SeqCst) == 4).await;
        eventually("both timeouts counted", || d.stats().callbacks_timed_out >= 2).await;
        settle().await;
        assert_eq!(d.stats().callbacks_timed_out, 2, "{:?}", d.stats());
    }

    async fn disabled_callback_is_skipped(h: Harness) {
        let d = h.open::<u32>().await;
        let seen = Collector::new();
        let id = d.register_callback(EventKind::Set, seen.callback()).unwrap();
        d.set_callback_enabled(id, false).unwrap();
        d.set("a", 1).await.unwrap();
        d.set_callback_enabled(id, true).unwrap();
        d.set("b", 2).await.unwrap();
        eventually("one event", || seen.len() == 1).await;
        settle().await;
        assert_eq!(seen.keys(), vec!["b".to_string()]);
    }

    async fn unregistered_callback_is_never_called_again(h: Harness) {
        let d = h.open::<u32>().await;
        let seen = Collector::new();
        let id = d.register_callback(EventKind::Set, seen.callback()).unwrap();
        d.set("a", 1).await.unwrap();
        eventually("first event", || seen.len() == 1).await;
        d.unregister_callback(id).unwrap();
        d.set("b", 2).await.unwrap();
        settle().await;
        assert_eq!(seen.len(), 1);
        assert!(d.unregister_callback(id).is_err(), "unknown id is an error, not a panic");
    }

    async fn reentrant_callback_can_write_to_the_store(h: Harness) {
        let d = h.open::<u32>().await;
        let store = d.clone();
        // On expiry, put the value back under another key: re-entry must not deadlock.
        d.register_callback(
            EventKind::Expire,
            Callback::new_async(move |ev: Event<u32>| {
                let store = store.clone();
                async move {
                    let v = *ev.value().unwrap();
                    store.set(format!("revived-{}", ev.key()), v).await.unwrap();
                    let _ = store.lock(ev.key(), Duration::from_secs(1)).await.unwrap();
                }
            }),
        )
        .unwrap();
        d.set_with_ttl("k", 5, h.short_ttl()).await.unwrap();
        h.pass(h.short_ttl() + h.grace()).await;
        for _ in 0..200 {
            if d.get("revived-k").await.unwrap().is_some() {
                break;
            }
            settle().await;
        }
        assert_eq!(d.get("revived-k").await.unwrap(), Some(5));
        d.shutdown().await.unwrap(); // breaks the handle <-> callback cycle
    }

    async fn full_queue_drops_and_counts_without_blocking_the_writer(h: Harness) {
        let d = h.builder::<u32>().callback_queue_capacity(4).build().await.unwrap();
        let gate = Arc::new(std::sync::Barrier::new(2));
        let g = Arc::clone(&gate);
        let first = Arc::new(AtomicUsize::new(0));
        let f = Arc::clone(&first);
        d.register_callback(
            EventKind::Set,
            Callback::new(move |_: &Event<u32>| {
                if f.fetch_add(1, Ordering::SeqCst) == 0 {
                    g.wait(); // hold the worker until the writer is done
                }
            }),
        )
        .unwrap();
        for i in 0..100 {
            d.set("k", i).await.unwrap();
        }
        gate.wait();
        eventually("drops counted", || d.stats().events_dropped > 0).await;
        let s = d.stats();
        assert!(s.events_dropped >= 90, "{s:?}");
        assert_eq!(s.sets, 100);
    }

    async fn shutdown_delivers_queued_events(h: Harness) {
        let d = h.open::<u32>().await;
        let seen = Collector::new();
        d.register_callback(EventKind::Set, seen.callback()).unwrap();
        for i in 0..50 {
            d.set(format!("k{i}"), i).await.unwrap();
        }
        d.shutdown().await.unwrap();
        assert_eq!(seen.len(), 50, "{:?}", d.stats());
    }

    async fn stats_count_operations(h: Harness) {
        let d = h.open::<u32>().await;
        d.set("a", 1).await.unwrap();
        d.get("a").await.unwrap();
        d.get("b").await.unwrap();
        d.delete("a").await.unwrap();
        d.delete("a").await.unwrap();
        let s = d.stats();
        assert_eq!((s.sets, s.hits, s.misses, s.deletes), (1, 1, 1, 1));
    }
}

#[tokio::test(start_paused = true)]
async fn capacity_eviction_fires_evict_events() {
    let d = livedict::LiveDict::<u32>::builder().memory().max_capacity(10).build().await.unwrap();
    let seen = Collector::new();
    d.register_callback(EventKind::Evict, seen.callback()).unwrap();
    for i in 0..200 {
        d.set(format!("k{i}"), i).await.unwrap();
        d.get(format!("k{i}")).await.unwrap();
    }
    // moka evicts during its housekeeping, which reads and writes drive.
    for _ in 0..100 {
        d.get("k0").await.unwrap();
    }
    eventually("evictions reported", || seen.len() > 0).await;
    assert!(d.len().await.unwrap() <= 20);
    assert!(d.stats().evictions > 0);
}

/// The memory expiry driver waits for room in a full callback queue in real
/// time: under a paused clock, with the test polling for the events (so the
/// runtime never idles and virtual time never moves), a burst larger than
/// the queue still reaches a slow callback in full (the driver used to wait
/// on a Tokio timer there, which never fired: 1 run in 5 on a loaded machine).
#[tokio::test(start_paused = true)]
async fn a_burst_larger_than_the_callback_queue_reaches_a_slow_callback_under_a_paused_clock() {
    let d =
        livedict::LiveDict::<u32>::builder().memory().callback_queue_capacity(2048).build().await.unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&seen);
    let slow = Callback::new(move |_: &Event<u32>| {
        std::thread::sleep(Duration::from_micros(50));
        s.fetch_add(1, Ordering::Relaxed);
    });
    d.register_callback(EventKind::Expire, slow).unwrap();
    let n = 6000;
    for i in 0..n {
        d.set_with_ttl(format!("k{i}"), i, Duration::from_secs(1)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    eventually("every expiration", || seen.load(Ordering::Relaxed) == n as usize).await;
    assert_eq!(d.stats().events_dropped, 0);
}

/// On memory a `set` with a `Set` listener takes the handle's direct path,
/// whose event shares the stored entry's key and value: each event still
/// carries the value of its own write (a later write or delete of the key
/// does not change it), sync and async callbacks and watches all get it,
/// and `sets` counts every write.
#[tokio::test(start_paused = true)]
async fn memory_set_events_keep_the_value_of_their_write() {
    use futures::StreamExt;
    let d = livedict::LiveDict::<String>::open("memory://").await.unwrap();
    let (sync_seen, async_seen) = (Collector::new(), Collector::new());
    d.register_callback(EventKind::Set, sync_seen.callback()).unwrap();
    d.register_callback(EventKind::Set, async_seen.async_callback()).unwrap();
    let mut watch = d.watch(livedict::WatchFilter::kinds([EventKind::Set])).unwrap();
    let mut expected = Vec::new();
    for i in 0..300 {
        let (key, value) = (format!("k{}", i % 3), format!("v{i}"));
        if i % 2 == 0 {
            d.set(&key, value.clone()).await.unwrap();
        } else {
            d.set_with_ttl(&key, value.clone(), Duration::from_secs(60)).await.unwrap();
        }
        expected.push((EventKind::Set, key, Some(value)));
    }
    d.delete("k0").await.unwrap();
    eventually("every set event", || sync_seen.len() == 300 && async_seen.len() == 300).await;
    assert_eq!(sync_seen.events(), expected);
    assert_eq!(async_seen.events(), expected);
    for (kind, key, value) in &expected {
        let item = watch.next().await.expect("a watched event");
        let ev = item.event().expect("an event, not a gap");
        assert_eq!((ev.kind(), ev.key(), ev.value()), (*kind, key.as_str(), value.as_ref()));
    }
    let s = d.stats();
    assert_eq!((s.sets, s.events_dropped), (300, 0));
}
