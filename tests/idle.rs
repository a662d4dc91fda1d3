//! Idle expiry (`time_to_idle`), on every backend: an entry ends at the
//! earlier of its own TTL and its last access + time-to-idle, reported as an
//! ordinary `Expire` event with its value.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use livedict::{Error, EventKind, LiveDict};
use support::{Collector, Harness, child, eventually, settle};

/// The time-to-idle of these tests: long enough that a read every quarter
/// of it is surely in time on a loaded machine (real time on SQLite and Redis).
const IDLE: Duration = Duration::from_millis(800);

/// A store of `h` with time-to-idle [`IDLE`], and a collector of its `Expire` events.
async fn open_idle(h: &Harness) -> (LiveDict<u32>, Collector<u32>) {
    let d = h.builder::<u32>().time_to_idle(IDLE).build().await.expect("open store");
    let expired = Collector::new();
    d.register_callback(EventKind::Expire, expired.callback()).unwrap();
    (d, expired)
}

/// The `Expire` events of `key` seen by `c`.
fn expirations(c: &Collector<u32>, key: &str) -> Vec<Option<u32>> {
    c.events()
        .into_iter()
        .filter(|(kind, k, _)| *kind == EventKind::Expire && k == key)
        .map(|e| e.2)
        .collect()
}

for_each_backend! {
    async fn an_untouched_entry_expires_after_the_idle_time_with_its_value(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        d.set("k", 7).await.unwrap();
        h.pass(IDLE + h.grace()).await;
        eventually("the idle entry's Expire event", || expirations(&expired, "k") == vec![Some(7)]).await;
        assert_eq!(d.get("k").await.unwrap(), None);
        settle().await;
        assert_eq!(expirations(&expired, "k"), vec![Some(7)], "exactly once");
    }

    async fn reads_keep_an_entry_alive_past_several_idle_periods(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        d.set("k", 7).await.unwrap();
        for _ in 0..16 {
            h.pass(IDLE / 4).await;
            assert_eq!(d.get("k").await.unwrap(), Some(7), "read in time, never expired");
        }
        assert!(expirations(&expired, "k").is_empty());
        // Left alone, it goes.
        h.pass(IDLE + h.grace()).await;
        eventually("the Expire event once reads stopped", || expirations(&expired, "k") == vec![Some(7)]).await;
    }

    async fn exists_counts_as_an_access(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        d.set("k", 7).await.unwrap();
        for _ in 0..12 {
            h.pass(IDLE / 4).await;
            assert!(d.exists("k").await.unwrap());
        }
        assert!(expirations(&expired, "k").is_empty());
    }

    async fn get_many_counts_as_an_access(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        d.set_many(vec![("a", 1), ("b", 2)], None).await.unwrap();
        for _ in 0..12 {
            h.pass(IDLE / 4).await;
            assert_eq!(d.get_many(&["a", "b", "c"]).await.unwrap(), [Some(1), Some(2), None]);
        }
        assert!(expirations(&expired, "a").is_empty() && expirations(&expired, "b").is_empty());
    }

    async fn set_many_starts_idle_periods(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        d.set_many(vec![("a", 1), ("b", 2)], None).await.unwrap();
        h.pass(IDLE + h.grace()).await;
        eventually("both idle entries' Expire events", || {
            expirations(&expired, "a") == vec![Some(1)] && expirations(&expired, "b") == vec![Some(2)]
        })
        .await;
    }

    async fn a_scan_is_not_an_access(h: Harness) {
        use futures::StreamExt;
        let (d, expired) = open_idle(&h).await;
        d.set("k", 7).await.unwrap();
        for _ in 0..3 {
            h.pass(IDLE / 4).await;
            let seen: Vec<_> = d.scan("").map(Result::unwrap).collect().await;
            assert_eq!(seen, vec![("k".to_owned(), 7)]);
        }
        h.pass(IDLE / 4 + h.grace()).await;
        eventually("expired although it was scanned", || expirations(&expired, "k") == vec![Some(7)]).await;
    }

    async fn a_guards_get_counts_as_an_access(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        d.set("k", 7).await.unwrap();
        let guard = d.lock("k", Duration::from_secs(5)).await.unwrap();
        for _ in 0..12 {
            h.pass(IDLE / 4).await;
            assert_eq!(guard.get().await.unwrap(), Some(7));
        }
        guard.unlock().await.unwrap();
        assert!(expirations(&expired, "k").is_empty());
    }

    async fn ttl_is_not_an_access(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        d.set("k", 7).await.unwrap();
        for _ in 0..3 {
            h.pass(IDLE / 4).await;
            assert!(d.ttl("k").await.unwrap().is_some());
        }
        h.pass(IDLE / 4 + h.grace()).await;
        eventually("expired although its ttl was read", || expirations(&expired, "k") == vec![Some(7)]).await;
        assert_eq!(d.ttl("k").await.unwrap(), None);
    }

    async fn listing_is_not_an_access(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        d.set("k", 7).await.unwrap();
        for _ in 0..3 {
            h.pass(IDLE / 4).await;
            assert_eq!(d.keys().await.unwrap(), vec!["k".to_owned()]);
            assert_eq!(d.items().await.unwrap(), vec![("k".to_owned(), 7)]);
        }
        h.pass(IDLE / 4 + h.grace()).await;
        eventually("expired although it was listed", || expirations(&expired, "k") == vec![Some(7)]).await;
    }

    async fn a_write_starts_the_idle_period_again(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        d.set("k", 1).await.unwrap();
        h.pass(IDLE * 5 / 8).await;
        d.set("k", 2).await.unwrap();
        h.pass(IDLE / 2).await;
        // 1.125 idle periods after the first write, 0.5 after the second: live.
        assert!(d.ttl("k").await.unwrap().is_some());
        assert_eq!(d.get("k").await.unwrap(), Some(2));
        assert!(expirations(&expired, "k").is_empty());
    }

    async fn an_own_ttl_shorter_than_the_idle_time_wins(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        let own = IDLE * 3 / 8;
        d.set_with_ttl("k", 7, own).await.unwrap();
        h.pass(own / 3).await;
        // A read does not carry it past its own TTL.
        assert_eq!(d.get("k").await.unwrap(), Some(7));
        assert!(d.ttl("k").await.unwrap().unwrap() <= own);
        h.pass(own + h.grace()).await;
        eventually("the own TTL's expiry", || expirations(&expired, "k") == vec![Some(7)]).await;
        assert_eq!(d.get("k").await.unwrap(), None);
    }

    async fn reads_do_not_extend_past_a_longer_own_ttl(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        let own = IDLE * 3 / 2;
        d.set_with_ttl("k", 7, own).await.unwrap();
        for _ in 0..4 {
            h.pass(IDLE / 4).await;
            assert_eq!(d.get("k").await.unwrap(), Some(7));
        }
        // One idle period after the set, read all along: its own TTL is what is left.
        assert!(d.ttl("k").await.unwrap().unwrap() <= own - IDLE);
        for _ in 0..4 {
            h.pass(IDLE / 4).await;
            let _ = d.get("k").await.unwrap();
        }
        eventually("expired at its own TTL although read", || expirations(&expired, "k") == vec![Some(7)]).await;
        assert_eq!(d.get("k").await.unwrap(), None);
    }

    async fn ttl_reports_the_earlier_of_the_two_deadlines(h: Harness) {
        let (d, _expired) = open_idle(&h).await;
        d.set("idle", 1).await.unwrap();
        d.set_with_ttl("long", 1, IDLE * 100).await.unwrap();
        d.set_with_ttl("short", 1, IDLE / 2).await.unwrap();
        let idle = d.ttl("idle").await.unwrap().expect("an idle deadline");
        assert!(idle <= IDLE && idle > IDLE / 2, "{idle:?}");
        let long = d.ttl("long").await.unwrap().expect("an idle deadline");
        assert!(long <= IDLE && long > IDLE / 2, "{long:?}");
        let short = d.ttl("short").await.unwrap().expect("its own deadline");
        assert!(short <= IDLE / 2, "{short:?}");
        // `persist` drops the own TTL; the idle deadline stays.
        assert!(d.persist("short").await.unwrap());
        let persisted = d.ttl("short").await.unwrap().expect("an idle deadline");
        assert!(persisted <= IDLE && persisted > IDLE / 2, "{persisted:?}");
        // `expire` sets a new own TTL, capped by the idle deadline.
        assert!(d.expire("idle", IDLE * 10).await.unwrap());
        assert!(d.ttl("idle").await.unwrap().unwrap() <= IDLE);
    }

    async fn atomic_updates_are_writes_that_start_the_idle_period(h: Harness) {
        let (d, expired) = open_idle(&h).await;
        assert_eq!(d.incr("n", 2).await.unwrap(), 2);
        assert!(d.compare_and_set("n", Some(&2), 5).await.unwrap());
        assert!(!d.compare_and_set("n", Some(&2), 6).await.unwrap());
        let left = d.ttl("n").await.unwrap().expect("an idle deadline");
        assert!(left <= IDLE && left > IDLE / 2, "{left:?}");
        h.pass(IDLE + h.grace()).await;
        eventually("the idle counter's Expire event", || expirations(&expired, "n") == vec![Some(5)]).await;
    }

    async fn bad_time_to_idle_values_are_refused(h: Harness) {
        for bad in ["0", "abc", "-5", "1.5", ""] {
            let url = h.url_with(&format!("time_to_idle_ms={bad}"));
            let err = LiveDict::<u32>::open(&url).await.unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err:?}");
        }
        let err = h.builder::<u32>().time_to_idle(Duration::ZERO).build().await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
        let err = h.builder::<u32>().time_to_idle(Duration::MAX).build().await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    }

    async fn the_url_option_sets_the_time_to_idle(h: Harness) {
        let d = LiveDict::<u32>::open(&h.url_with(&format!("time_to_idle_ms={}", IDLE.as_millis()))).await.unwrap();
        d.set("k", 7).await.unwrap();
        let left = d.ttl("k").await.unwrap().expect("an idle deadline");
        assert!(left <= IDLE && left > IDLE / 2, "{left:?}");
    }

    async fn reads_through_another_store_keep_an_entry_alive(h: Harness) {
        if !h.shared() {
            return;
        }
        let (writer, expired_here) = open_idle(&h).await;
        let (reader, expired_there) = open_idle(&h).await;
        writer.set("k", 7).await.unwrap();
        for _ in 0..12 {
            h.pass(IDLE / 4).await;
            assert_eq!(reader.get("k").await.unwrap(), Some(7));
        }
        assert!(expirations(&expired_here, "k").is_empty());
        h.pass(IDLE + h.grace()).await;
        eventually("one Expire event across both stores", || {
            expirations(&expired_here, "k").len() + expirations(&expired_there, "k").len() == 1
        })
        .await;
        settle().await;
        let all = [expirations(&expired_here, "k"), expirations(&expired_there, "k")].concat();
        assert_eq!(all, vec![Some(7)], "exactly once, with the value");
    }
}

// ---- across OS processes ----

/// The child side (a no-op in a normal run): `read|url|reads`.
#[test]
fn child_entry() {
    let Some(role) = child::role() else { return };
    let parts: Vec<&str> = role.splitn(3, '|').collect();
    let (url, reads) = (parts[1].to_owned(), parts[2].parse::<u32>().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let d = LiveDict::<u32>::builder().url(&url).time_to_idle(IDLE).build().await.unwrap();
        for _ in 0..reads {
            tokio::time::sleep(IDLE / 4).await;
            assert_eq!(d.get("k").await.unwrap(), Some(7), "read in time by the child");
        }
        println!("done");
        d.shutdown().await.unwrap();
    });
}

/// An entry written by this process and only read by a child process for
/// several idle periods stays alive here (this process's expiry driver runs
/// all along), and expires exactly once after the child stops.
async fn kept_alive_by_another_process(h: Harness) {
    let (d, expired) = open_idle(&h).await;
    d.set("k", 7).await.unwrap();
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let (mut proc, mut out) = child::spawn(&format!("read|{}|16", h.url()));
    child::wait_for_line(&mut out, "done");
    assert!(proc.wait().unwrap().success());
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - started;
    assert!(elapsed > IDLE * 3, "the child read for several idle periods ({elapsed:?})");
    assert!(expirations(&expired, "k").is_empty(), "expired while another process read it");
    assert!(d.ttl("k").await.unwrap().is_some());
    eventually("the Expire event after the reads stopped", || expirations(&expired, "k") == vec![Some(7)])
        .await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_by_another_process_keep_an_entry_alive() {
    kept_alive_by_another_process(Harness::sqlite()).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reads_by_another_process_keep_an_entry_alive() {
    let Some(h) = Harness::redis() else { return };
    kept_alive_by_another_process(h).await;
}

/// With a capacity bound (moka holds the entries), reads keep an entry
/// alive too, and an untouched one expires with its value.
#[tokio::test(start_paused = true)]
async fn memory_with_a_capacity_bound_keeps_read_entries_alive() {
    let d = LiveDict::<u32>::builder().memory().max_capacity(1000).time_to_idle(IDLE).build().await.unwrap();
    let expired = Collector::new();
    d.register_callback(EventKind::Expire, expired.callback()).unwrap();
    d.set("read", 1).await.unwrap();
    d.set("left", 2).await.unwrap();
    for _ in 0..12 {
        tokio::time::sleep(IDLE / 4).await;
        assert_eq!(d.get("read").await.unwrap(), Some(1));
    }
    eventually("the untouched entry's Expire event", || expirations(&expired, "left") == vec![Some(2)]).await;
    assert!(expirations(&expired, "read").is_empty());
}

/// The blocking facade takes the same setting.
#[test]
fn the_blocking_facade_takes_time_to_idle() {
    let d = LiveDict::<u32>::builder()
        .memory()
        .time_to_idle(Duration::from_millis(300))
        .build_blocking()
        .unwrap();
    d.set("k", 7).unwrap();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(d.get("k").unwrap(), Some(7));
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(d.get("k").unwrap(), None);
}

/// Time-to-idle and the SQLite size bound together: the bound evicts the
/// oldest-stored entry, the others end when idle, and reads keep one alive.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_idle_entries_in_a_bounded_store() {
    let h = Harness::sqlite();
    let d = h.builder::<u32>().time_to_idle(IDLE).max_capacity(2).build().await.expect("open store");
    let (expired, evicted) = (Collector::new(), Collector::new());
    d.register_callback(EventKind::Expire, expired.callback()).unwrap();
    d.register_callback(EventKind::Evict, evicted.callback()).unwrap();
    for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
        d.set(k, v).await.unwrap();
    }
    assert_eq!(d.len().await.unwrap(), 2);
    assert_eq!(evicted.keys(), ["a"]);
    for _ in 0..6 {
        h.pass(IDLE / 4).await;
        assert_eq!(d.get("c").await.unwrap(), Some(3));
    }
    eventually("b, never read, expired", || expirations(&expired, "b") == vec![Some(2)]).await;
    assert_eq!(d.get("c").await.unwrap(), Some(3));
    assert!(expirations(&expired, "c").is_empty());
}
