//! Batches (`get_many`, `set_many`, `delete_many`), on every backend
//! (`for_each_backend!` includes a Redis Cluster and a Sentinel-found master).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use livedict::{Error, EventKind};
use support::{Collector, Harness, Kind, eventually, settle};

/// Keys spread over every shard (Redis has 16 by default, memory 64).
fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key:{i}")).collect()
}

async fn answers_in_order_with_none_for_missing_keys(h: &Harness) {
    let d = h.open::<u32>().await;
    let all = keys(300);
    let entries: Vec<(String, u32)> =
        all.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(i, k)| (k.clone(), i as u32)).collect();
    d.set_many(entries, None).await.unwrap();
    let got = d.get_many(&all).await.unwrap();
    assert_eq!(got.len(), all.len());
    for (i, v) in got.iter().enumerate() {
        assert_eq!(*v, (i % 3 != 0).then_some(i as u32), "key {i}");
    }
    // Order is the caller's, whatever the shards; a key asked twice is answered twice.
    let asked = ["key:2", "nope", "key:1", "key:2", "key:0"];
    assert_eq!(d.get_many(&asked).await.unwrap(), [Some(2), None, Some(1), Some(2), None]);
    // One key alone.
    assert_eq!(d.get_many(&["key:4"]).await.unwrap(), [Some(4)]);
    assert_eq!(d.len().await.unwrap(), 200);
    assert_eq!(d.delete_many(&all).await.unwrap(), 200);
    assert!(d.is_empty().await.unwrap());
    assert_eq!(d.get_many(&all[..10]).await.unwrap(), vec![None; 10]);
}

async fn every_entry_fires_its_own_event(h: &Harness) {
    let d = h.open::<u32>().await;
    let (sets, gets, deletes) = (Collector::new(), Collector::new(), Collector::new());
    d.register_callback(EventKind::Set, sets.callback()).unwrap();
    d.register_callback(EventKind::Get, gets.callback()).unwrap();
    d.register_callback(EventKind::Delete, deletes.callback()).unwrap();
    d.set_many(vec![("a", 1), ("b", 2), ("c", 3)], None).await.unwrap();
    eventually("three Set events", || sets.len() == 3).await;
    let seen: Vec<_> = sets.events().into_iter().map(|(kind, k, v)| (kind, k, v.unwrap())).collect();
    assert_eq!(
        seen,
        [(EventKind::Set, "a".into(), 1), (EventKind::Set, "b".into(), 2), (EventKind::Set, "c".into(), 3)]
    );
    // Get events are hits only.
    assert_eq!(d.get_many(&["c", "missing", "a"]).await.unwrap(), [Some(3), None, Some(1)]);
    eventually("two Get events", || gets.len() == 2).await;
    assert_eq!(gets.keys(), ["c", "a"]);
    // Delete events are removals only, with the removed value.
    assert_eq!(d.delete_many(&["b", "missing", "a"]).await.unwrap(), 2);
    eventually("two Delete events", || deletes.len() == 2).await;
    assert_eq!(
        deletes.events(),
        [(EventKind::Delete, "b".into(), Some(2)), (EventKind::Delete, "a".into(), Some(1))]
    );
    settle().await;
    assert_eq!((sets.len(), gets.len(), deletes.len()), (3, 2, 2), "no event beyond one per entry");
    let stats = d.stats();
    assert_eq!((stats.sets, stats.hits, stats.misses, stats.deletes), (3, 2, 1, 2));
}

async fn no_ttl_clears_an_old_deadline_and_a_ttl_expires_each_entry(h: &Harness) {
    let d = h.open::<u32>().await;
    let expired = Collector::new();
    d.register_callback(EventKind::Expire, expired.callback()).unwrap();
    let ttl = h.short_ttl();
    d.set_with_ttl("kept", 1, ttl).await.unwrap();
    d.set_many(vec![("kept", 2)], None).await.unwrap();
    assert_eq!(d.ttl("kept").await.unwrap(), None, "the old deadline is gone");
    d.set_many(vec![("x", 10), ("y", 11)], Some(ttl)).await.unwrap();
    let left = d.ttl("x").await.unwrap().expect("x has a deadline");
    assert!(left <= ttl);
    h.pass(ttl + h.grace()).await;
    eventually("x and y expire", || expired.len() == 2).await;
    let mut got: Vec<_> = expired.events().into_iter().map(|(_, k, v)| (k, v)).collect();
    got.sort();
    assert_eq!(got, [("x".to_string(), Some(10)), ("y".to_string(), Some(11))]);
    assert_eq!(d.get_many(&["kept", "x", "y"]).await.unwrap(), [Some(2), None, None]);
    settle().await;
    assert_eq!(expired.len(), 2, "the entry re-set without a TTL never expires");
}

async fn a_batch_waits_for_a_locked_key_and_holds_no_lock_meanwhile(h: &Harness) {
    let d = h.open::<u32>().await;
    d.set_many(vec![("a", 1), ("b", 1), ("c", 1)], None).await.unwrap();
    let guard = d.lock("b", Duration::from_secs(30)).await.unwrap();
    // A clone shares the stack; on SQLite and Redis another `open` is another
    // stack on the same data (the backend's own lock): both must wait.
    let mut writers = vec![d.clone()];
    if h.shared() {
        writers.push(h.open::<u32>().await);
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            w.set_many(vec![("a", 10 + i as u32), ("b", 10 + i as u32), ("c", 10 + i as u32)], None)
                .await
                .unwrap();
            w.delete_many(&["c", "b"]).await.unwrap();
            done.store(true, Ordering::SeqCst);
        }));
    }
    h.pass(Duration::from_millis(200)).await;
    assert!(!done.load(Ordering::SeqCst), "a batch passed a held lock");
    assert_eq!(d.get("b").await.unwrap(), Some(1), "the locked key is untouched");
    // The waiting batch holds no lock: another key of it can be locked meanwhile.
    let other = d.lock("a", Duration::from_millis(500)).await.expect("a batch held a lock while waiting");
    guard.set(2).await.unwrap();
    guard.unlock().await.unwrap();
    h.pass(Duration::from_millis(50)).await;
    other.unlock().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(done.load(Ordering::SeqCst));
    let got = d.get_many(&["a", "b", "c"]).await.unwrap();
    assert!(got[0].unwrap() >= 10, "{got:?}");
    assert_eq!(&got[1..], [None, None]);
    assert!(d.stats().lock_waits >= 1);
}

async fn a_bad_key_or_value_anywhere_writes_nothing(h: &Harness) {
    let d = h.open::<u32>().await;
    d.set("old", 1).await.unwrap();
    let long = "k".repeat(livedict::MAX_KEY_LEN + 1);
    for bad in ["", long.as_str()] {
        let err = d.set_many(vec![("new", 1), ("old", 2), (bad, 3)], None).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
        let err = d.delete_many(&["old", bad]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
        let err = d.get_many(&["old", bad]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
    }
    let err = d.set_many(vec![("new", 1)], Some(Duration::ZERO)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTtl { .. }), "{err:?}");
    assert_eq!(d.get_many(&["new", "old"]).await.unwrap(), [None, Some(1)]);

    // JSON maps need string keys: a tuple-keyed map cannot be encoded.
    let m = h.open::<HashMap<(u8, u8), u8>>().await;
    let bad: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
    match m.set_many(vec![("m1", HashMap::new()), ("m2", bad)], None).await {
        Ok(()) => assert_eq!(h.kind, Kind::Memory, "memory stores values without encoding"),
        Err(e) => {
            assert!(matches!(e, Error::Encode { ref key, .. } if key == "m2"), "{e:?}");
            assert_eq!(m.get("m1").await.unwrap(), None, "a batch with a bad value wrote something");
        }
    }
}

async fn duplicates_apply_in_order(h: &Harness) {
    let d = h.open::<u32>().await;
    let sets = Collector::new();
    d.register_callback(EventKind::Set, sets.callback()).unwrap();
    d.set_many(vec![("a", 1), ("b", 5), ("a", 2)], None).await.unwrap();
    assert_eq!(d.get_many(&["a", "a", "b"]).await.unwrap(), [Some(2), Some(2), Some(5)]);
    eventually("one Set event per entry", || sets.len() == 3).await;
    assert_eq!(d.delete_many(&["a", "a", "b", "b"]).await.unwrap(), 2, "a key given twice is removed once");
    assert!(d.is_empty().await.unwrap());
}

async fn an_empty_batch_does_nothing(h: &Harness) {
    let d = h.open::<u32>().await;
    let none: [&str; 0] = [];
    assert!(d.get_many(&none).await.unwrap().is_empty());
    d.set_many(Vec::<(String, u32)>::new(), None).await.unwrap();
    assert_eq!(d.delete_many(&none).await.unwrap(), 0);
    assert!(d.is_empty().await.unwrap());
    d.shutdown().await.unwrap();
    assert!(matches!(d.get_many(&none).await, Err(Error::Closed)));
    assert!(matches!(d.set_many(Vec::<(String, u32)>::new(), None).await, Err(Error::Closed)));
    assert!(matches!(d.delete_many(&["a"]).await, Err(Error::Closed)));
}

/// A batch far larger than any server-side limit (Lua's `unpack` takes at
/// most ~8,000 values, a script's arguments are all held at once) is whole.
async fn a_huge_batch_is_whole(h: &Harness) {
    let d = h.open::<u32>().await;
    let all = keys(50_000);
    d.set_many(all.iter().enumerate().map(|(i, k)| (k.clone(), i as u32)).collect(), None).await.unwrap();
    assert_eq!(d.len().await.unwrap(), all.len());
    let got = d.get_many(&all).await.unwrap();
    assert!(got.iter().enumerate().all(|(i, v)| *v == Some(i as u32)), "every value read back");
    d.set_many(all.iter().map(|k| (k.clone(), 7)).collect(), Some(Duration::from_secs(600))).await.unwrap();
    assert_eq!(d.get(&all[49_999]).await.unwrap(), Some(7));
    assert_eq!(d.delete_many(&all).await.unwrap(), all.len());
    assert!(d.is_empty().await.unwrap());
}

for_each_backend! {
    async fn a_batch_of_50_000_keys_is_whole(h: Harness) {
        a_huge_batch_is_whole(&h).await
    }

    async fn get_many_answers_in_order_with_none_for_missing_keys(h: Harness) {
        answers_in_order_with_none_for_missing_keys(&h).await
    }

    async fn each_entry_of_a_batch_fires_its_own_event(h: Harness) {
        every_entry_fires_its_own_event(&h).await
    }

    async fn set_many_without_ttl_clears_an_old_deadline(h: Harness) {
        no_ttl_clears_an_old_deadline_and_a_ttl_expires_each_entry(&h).await
    }

    async fn a_batch_waits_for_a_locked_key(h: Harness) {
        a_batch_waits_for_a_locked_key_and_holds_no_lock_meanwhile(&h).await
    }

    async fn a_bad_key_or_value_in_a_batch_writes_nothing(h: Harness) {
        a_bad_key_or_value_anywhere_writes_nothing(&h).await
    }

    async fn duplicate_keys_in_a_batch_apply_in_order(h: Harness) {
        duplicates_apply_in_order(&h).await
    }

    async fn an_empty_batch_is_answered_without_a_request(h: Harness) {
        an_empty_batch_does_nothing(&h).await
    }
}

/// The blocking twins answer as the async ones.
#[test]
fn blocking_batches_match_the_async_ones() {
    let d = livedict::blocking::LiveDict::<u32>::open("memory://").unwrap();
    d.set_many(vec![("a", 1), ("b", 2)], None).unwrap();
    assert_eq!(d.get_many(&["b", "x", "a"]).unwrap(), [Some(2), None, Some(1)]);
    assert_eq!(d.delete_many(&["a", "x"]).unwrap(), 1);
    assert_eq!(d.keys().unwrap(), ["b"]);
}
