//! Atomic read-modify-write (`update`, `incr`, `compare_and_set`), on every backend.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use livedict::{Error, LiveDict};

/// Two handles on the store when the backend shares data, else one.
async fn handles<V: livedict::Value>(h: &support::Harness) -> Vec<LiveDict<V>> {
    let first = h.open::<V>().await;
    if h.shared() { vec![first, h.open::<V>().await] } else { vec![first] }
}

for_each_backend! {
    async fn concurrent_increments_are_exact(h: Harness) {
        let ds = handles::<i64>(&h).await;
        let (tasks, rounds) = (50, h.scale(20, 2));
        let mut joins = Vec::new();
        for t in 0..tasks {
            // Half the tasks go through the second handle (another stack on the same data).
            let d = ds[t % ds.len()].clone();
            joins.push(tokio::spawn(async move {
                for _ in 0..rounds {
                    d.incr("counter", 1).await.unwrap();
                }
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
        assert_eq!(ds[0].get("counter").await.unwrap(), Some((tasks * rounds) as i64));
    }

    async fn incr_of_a_missing_key_starts_at_zero_and_returns_the_new_value(h: Harness) {
        let d = h.open::<i64>().await;
        assert_eq!(d.incr("n", 5).await.unwrap(), 5);
        assert_eq!(d.incr("n", -7).await.unwrap(), -2);
        assert_eq!(d.get("n").await.unwrap(), Some(-2));
    }

    async fn incr_past_the_value_range_fails_and_leaves_the_value(h: Harness) {
        let d = h.open::<u8>().await;
        d.set("small", 250).await.unwrap();
        assert!(matches!(d.incr("small", 10).await, Err(Error::Overflow { delta: 10, .. })));
        assert!(matches!(d.incr("small", -251).await, Err(Error::Overflow { .. })));
        assert_eq!(d.get("small").await.unwrap(), Some(250));
        let big = h.open::<i64>().await;
        big.set("max", i64::MAX).await.unwrap();
        assert!(matches!(big.incr("max", 1).await, Err(Error::Overflow { .. })));
        // The lock was released after the failure.
        assert_eq!(big.incr("max", -1).await.unwrap(), i64::MAX - 1);
    }

    async fn compare_and_set_writes_only_on_a_match(h: Harness) {
        let d = h.open::<String>().await;
        assert!(d.compare_and_set("k", None, "a".into()).await.unwrap(), "absent matches None");
        assert!(!d.compare_and_set("k", None, "b".into()).await.unwrap());
        assert!(!d.compare_and_set("k", Some(&"x".to_string()), "b".into()).await.unwrap());
        assert_eq!(d.get("k").await.unwrap().as_deref(), Some("a"));
        assert!(d.compare_and_set("k", Some(&"a".to_string()), "b".into()).await.unwrap());
        assert_eq!(d.get("k").await.unwrap().as_deref(), Some("b"));
    }

    async fn compare_and_set_with_ttl_writes_with_a_deadline_only_on_a_match(h: Harness) {
        let d = h.open::<String>().await;
        let long = Duration::from_secs(60);
        d.set_with_ttl("k", "a".into(), long).await.unwrap();
        assert!(!d.compare_and_set_with_ttl("k", None, "b".into(), h.short_ttl()).await.unwrap());
        assert!(d.ttl("k").await.unwrap().unwrap() > h.short_ttl(), "a failed comparison keeps the deadline");
        assert!(d.compare_and_set_with_ttl("k", Some(&"a".to_string()), "b".into(), h.short_ttl()).await.unwrap());
        assert!(d.compare_and_set_with_ttl("new", None, "c".into(), h.short_ttl()).await.unwrap());
        for key in ["k", "new"] {
            assert!(d.ttl(key).await.unwrap().unwrap() <= h.short_ttl(), "{key}");
        }
        h.pass(h.short_ttl() + h.grace()).await;
        assert_eq!(d.get("k").await.unwrap(), None);
        assert_eq!(d.get("new").await.unwrap(), None);
        assert!(matches!(
            d.compare_and_set_with_ttl("k", None, "x".into(), Duration::ZERO).await,
            Err(Error::InvalidTtl { .. })
        ));
    }

    async fn exactly_one_of_many_concurrent_inserts_if_absent_wins(h: Harness) {
        let ds = handles::<u32>(&h).await;
        let mut joins = Vec::new();
        for i in 0..20u32 {
            let d = ds[i as usize % ds.len()].clone();
            joins.push(tokio::spawn(async move { (i, d.compare_and_set("leader", None, i).await.unwrap()) }));
        }
        let mut winners = Vec::new();
        for j in joins {
            let (i, won) = j.await.unwrap();
            if won {
                winners.push(i);
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        assert_eq!(ds[0].get("leader").await.unwrap(), Some(winners[0]));
    }

    async fn concurrent_updates_lose_no_write(h: Harness) {
        let ds = handles::<Vec<u32>>(&h).await;
        let n = h.scale(40, 20) as u32;
        let mut joins = Vec::new();
        for i in 0..n {
            let d = ds[i as usize % ds.len()].clone();
            joins.push(tokio::spawn(async move {
                d.update("list", |cur| {
                    let mut v = cur.unwrap_or_default();
                    v.push(i);
                    Some(v)
                })
                .await
                .unwrap()
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
        let mut list = ds[0].get("list").await.unwrap().unwrap();
        list.sort_unstable();
        assert_eq!(list, (0..n).collect::<Vec<_>>());
    }

    async fn update_returning_none_deletes_and_returns_none(h: Harness) {
        let d = h.open::<u32>().await;
        d.set("k", 1).await.unwrap();
        let mut seen = None;
        assert_eq!(d.update("k", |cur| { seen = cur; None }).await.unwrap(), None);
        assert_eq!(seen, Some(1), "f sees the live value");
        assert!(!d.exists("k").await.unwrap());
        assert_eq!(d.update("missing", |_| None).await.unwrap(), None);
        assert!(!d.exists("missing").await.unwrap());
    }

    async fn update_stores_without_expiry_and_update_with_ttl_sets_a_deadline(h: Harness) {
        let d = h.open::<u32>().await;
        d.set_with_ttl("k", 1, Duration::from_secs(60)).await.unwrap();
        assert_eq!(d.update("k", |n| n.map(|n| n + 1)).await.unwrap(), Some(2));
        assert_eq!(d.ttl("k").await.unwrap(), None, "update stores like set: no deadline");
        d.update_with_ttl("k", h.short_ttl(), |n| n.map(|n| n + 1)).await.unwrap();
        assert!(d.ttl("k").await.unwrap().is_some());
        h.pass(h.short_ttl() + h.grace()).await;
        assert_eq!(d.get("k").await.unwrap(), None);
        assert!(matches!(
            d.update_with_ttl("k", Duration::ZERO, |_| Some(1)).await,
            Err(Error::InvalidTtl { .. })
        ));
    }

    async fn update_sees_the_default_ttl_of_the_builder(h: Harness) {
        let d = h.builder::<u32>().default_ttl(Duration::from_secs(60)).build().await.unwrap();
        d.incr("n", 1).await.unwrap();
        assert!(d.ttl("n").await.unwrap().is_some());
    }

    async fn an_update_waits_for_a_lock_held_elsewhere(h: Harness) {
        let ds = handles::<u32>(&h).await;
        ds[0].set("k", 1).await.unwrap();
        let guard = ds[0].lock("k", Duration::from_secs(5)).await.unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let mut joins = Vec::new();
        for d in &ds {
            let (d, done) = (d.clone(), Arc::clone(&done));
            joins.push(tokio::spawn(async move {
                let v = d.update("k", |n| n.map(|n| n * 10)).await.unwrap();
                done.store(true, Ordering::SeqCst);
                v
            }));
        }
        h.pass(Duration::from_millis(200)).await;
        assert!(!done.load(Ordering::SeqCst), "an update passed a held lock");
        guard.set(2).await.unwrap();
        guard.unlock().await.unwrap();
        for j in joins {
            j.await.unwrap();
        }
        let expected = if ds.len() == 2 { 200 } else { 20 };
        assert_eq!(ds[0].get("k").await.unwrap(), Some(expected), "each update saw the guarded write");
    }

    async fn incr_and_compare_and_set_wait_for_a_lock_held_elsewhere(h: Harness) {
        let ds = handles::<u32>(&h).await;
        ds[0].set("k", 1).await.unwrap();
        let guard = ds[0].lock("k", Duration::from_secs(5)).await.unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let mut joins = Vec::new();
        for d in &ds {
            let (d, done) = (d.clone(), Arc::clone(&done));
            joins.push(tokio::spawn(async move {
                let n = d.incr("k", 1).await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
                n
            }));
        }
        let (d, cas_done) = (ds[ds.len() - 1].clone(), Arc::clone(&done));
        let cas = tokio::spawn(async move {
            // Inserts only if absent: never, the key exists throughout.
            let stored = d.compare_and_set("k", None, 99).await.unwrap();
            cas_done.fetch_add(1, Ordering::SeqCst);
            stored
        });
        h.pass(Duration::from_millis(200)).await;
        assert_eq!(done.load(Ordering::SeqCst), 0, "an incr or compare_and_set passed a held lock");
        guard.set(10).await.unwrap();
        guard.unlock().await.unwrap();
        let mut seen: Vec<u32> = Vec::new();
        for j in joins {
            seen.push(j.await.unwrap());
        }
        assert!(!cas.await.unwrap());
        seen.sort_unstable();
        let expected: Vec<u32> = (11..11 + ds.len() as u32).collect();
        assert_eq!(seen, expected, "each incr saw the guarded write");
    }

    async fn incr_past_two_to_the_53_is_exact(h: Harness) {
        // Beyond what a double holds exactly (Redis scripts add in doubles).
        let d = h.open::<i64>().await;
        let big = (1i64 << 60) + 1;
        d.set("big", big).await.unwrap();
        assert_eq!(d.incr("big", 2).await.unwrap(), big + 2);
        assert_eq!(d.get("big").await.unwrap(), Some(big + 2));
        // Small numbers still add right after the slow path.
        assert_eq!(d.incr("small", 3).await.unwrap(), 3);
        assert_eq!(d.incr("small", -(1i64 << 54)).await.unwrap(), 3 - (1i64 << 54));
    }

    async fn compare_and_set_compares_values_not_their_encoding(h: Harness) {
        use std::collections::HashMap;
        let d = h.open::<HashMap<String, u32>>().await;
        let stored: HashMap<String, u32> = (0..64).map(|i| (format!("f{i}"), i)).collect();
        d.set("m", stored.clone()).await.unwrap();
        // The same map, built apart: its iteration (and JSON) order differs from the stored one.
        let expected: HashMap<String, u32> = (0..64).rev().map(|i| (format!("f{i}"), i)).collect();
        let mut new = expected.clone();
        new.insert("added".into(), 1);
        assert!(d.compare_and_set("m", Some(&expected), new.clone()).await.unwrap());
        assert_eq!(d.get("m").await.unwrap(), Some(new));
        assert!(!d.compare_and_set("m", Some(&stored), stored.clone()).await.unwrap());
    }

    async fn incr_and_compare_and_set_fire_set_events_with_the_new_value(h: Harness) {
        let d = h.open::<u64>().await;
        let seen = support::Collector::new();
        d.register_callback(livedict::EventKind::Set, seen.callback()).unwrap();
        d.incr("n", 2).await.unwrap();
        assert!(d.compare_and_set("n", Some(&2), 5).await.unwrap());
        assert!(!d.compare_and_set("n", Some(&2), 6).await.unwrap()); // no write, no event
        support::eventually("two set events", || seen.len() >= 2).await;
        support::settle().await;
        let set = livedict::EventKind::Set;
        assert_eq!(seen.events(), vec![(set, "n".to_string(), Some(2)), (set, "n".to_string(), Some(5))]);
        assert_eq!(d.stats().sets, 2);
    }

    async fn atomic_operations_reject_bad_keys(h: Harness) {
        let d = h.open::<i64>().await;
        assert!(matches!(d.incr("", 1).await, Err(Error::InvalidKey { .. })));
        assert!(matches!(d.update("", |_| Some(1)).await, Err(Error::InvalidKey { .. })));
        assert!(matches!(d.compare_and_set("", None, 1).await, Err(Error::InvalidKey { .. })));
    }
}

#[test]
fn blocking_increments_from_threads_are_exact() {
    let d = livedict::blocking::LiveDict::<u64>::open("memory://").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let d = d.clone();
            std::thread::spawn(move || {
                for _ in 0..250 {
                    d.incr("n", 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(d.get("n").unwrap(), Some(1000));
    assert!(d.compare_and_set("n", Some(&1000), 0).unwrap());
    assert_eq!(d.update("n", |n| n.map(|n| n + 1)).unwrap(), Some(1));
}
