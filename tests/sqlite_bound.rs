//! The SQLite size bound (`max_capacity`, `max_bytes`, `eviction_policy`):
//! the oldest entries are evicted in the writer's transaction, each one
//! `Evict` event with its value, exactly once across processes, and no
//! reader sees more than the bound once a write was acknowledged.
#![cfg(feature = "sqlite")]

mod support;

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use livedict::backend::EvictionPolicy;
use livedict::{Error, EventKind, LiveDict};
use support::{Collector, child, eventually};

/// A fresh file's URL with `options` (`?…` included), and the directory holding it.
fn store(options: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}{options}", dir.path().join("bound.db").display());
    (dir, url)
}

/// A store with `options` and a collector of its `Evict` and `Expire` events.
async fn open<V: livedict::Value>(url: &str) -> (LiveDict<V>, Collector<V>) {
    let d = LiveDict::<V>::open(url).await.unwrap();
    let seen = Collector::new();
    d.register_callback(EventKind::Evict, seen.callback()).unwrap();
    d.register_callback(EventKind::Expire, seen.callback()).unwrap();
    (d, seen)
}

fn sorted(keys: Vec<String>) -> Vec<String> {
    let mut keys = keys;
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_bound_evicts_the_least_recently_stored_with_their_values() {
    let (_dir, url) = store("?max_capacity=3");
    let (d, seen) = open::<u32>(&url).await;
    for i in 0..6 {
        d.set(format!("k{i}"), i).await.unwrap();
        assert!(d.len().await.unwrap() <= 3, "never more than the bound after a write");
    }
    assert_eq!(sorted(d.keys().await.unwrap()), ["k3", "k4", "k5"]);
    eventually("three evictions", || seen.len() == 3).await;
    let expected: Vec<_> = (0..3).map(|i| (EventKind::Evict, format!("k{i}"), Some(i))).collect();
    assert_eq!(seen.events(), expected, "the oldest first, each once, with its value");
    assert_eq!(d.stats().evictions, 3);

    // Storing again moves an entry to the back; a read does not (least recently stored).
    d.set("k3", 30).await.unwrap();
    assert_eq!(d.get("k4").await.unwrap(), Some(4));
    d.set("k6", 6).await.unwrap();
    assert_eq!(sorted(d.keys().await.unwrap()), ["k3", "k5", "k6"]);
    eventually("k4 evicted", || seen.len() == 4).await;
    assert_eq!(seen.events()[3], (EventKind::Evict, "k4".into(), Some(4)));
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_bound_counts_keys_and_stored_values() {
    // Key "kN" (2 bytes) + JSON "xxxxxxxx" (10 bytes) = 12 bytes an entry.
    let (_dir, url) = store("?max_bytes=40");
    let (d, seen) = open::<String>(&url).await;
    for i in 0..5 {
        d.set(format!("k{i}"), "x".repeat(8)).await.unwrap();
    }
    assert_eq!(sorted(d.keys().await.unwrap()), ["k2", "k3", "k4"], "36 of 40 bytes");
    // 3 + 22 = 25 bytes: the two oldest go to make room (12 + 25 <= 40).
    d.set("big", "y".repeat(20)).await.unwrap();
    assert_eq!(sorted(d.keys().await.unwrap()), ["big", "k4"]);
    // Growing a value counts its new size.
    d.set("k4", "z".repeat(30)).await.unwrap();
    assert_eq!(sorted(d.keys().await.unwrap()), ["k4"], "2 + 32 bytes");
    eventually("five evictions", || seen.len() == 5).await;
    let evicted: Vec<_> =
        seen.events().into_iter().map(|(kind, key, value)| (kind, key, value.map(|v| v.len()))).collect();
    let expected: Vec<_> = ["k0", "k1", "k2", "k3", "big"]
        .into_iter()
        .map(|k| (EventKind::Evict, k.to_string(), Some(if k == "big" { 20 } else { 8 })))
        .collect();
    assert_eq!(evicted, expected);
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_recently_used_keeps_an_entry_that_was_read() {
    let (_dir, url) = store("?max_capacity=3&eviction_policy=least_recently_used");
    let (d, seen) = open::<u32>(&url).await;
    for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
        d.set(k, i as u32).await.unwrap();
    }
    assert_eq!(d.get("a").await.unwrap(), Some(0));
    d.set("d", 3).await.unwrap();
    assert_eq!(sorted(d.keys().await.unwrap()), ["a", "c", "d"], "b, not the recently read a, went");
    assert_eq!(d.get("c").await.unwrap(), Some(2));
    assert_eq!(d.get("a").await.unwrap(), Some(0));
    d.set("e", 4).await.unwrap();
    assert_eq!(sorted(d.keys().await.unwrap()), ["a", "c", "e"]);
    eventually("two evictions", || seen.len() == 2).await;
    assert_eq!(seen.keys(), ["b", "d"]);
    d.shutdown().await.unwrap();

    // The builder's twins.
    let (_dir, url) = store("");
    let d = LiveDict::<u32>::builder()
        .url(&url)
        .max_capacity(2)
        .eviction_policy(EvictionPolicy::LeastRecentlyUsed)
        .build()
        .await
        .unwrap();
    d.set("a", 1).await.unwrap();
    d.set("b", 2).await.unwrap();
    d.get("a").await.unwrap();
    d.set("c", 3).await.unwrap();
    assert_eq!(sorted(d.keys().await.unwrap()), ["a", "c"]);
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reader_sees_more_than_the_bound_under_32_concurrent_writers() {
    const TASKS: usize = 32;
    const EACH: usize = 100;
    const CAP: usize = 150;
    let (_dir, url) = store(&format!("?max_capacity={CAP}"));
    let (d, seen) = open::<u32>(&url).await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                d.set(format!("t{t}:{i}"), i as u32).await.unwrap();
                if i % 10 == 0 {
                    let n = d.len().await.unwrap();
                    assert!(n <= CAP, "{n} entries visible, bound {CAP}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let left: HashSet<String> = d.keys().await.unwrap().into_iter().collect();
    assert_eq!(left.len(), CAP);
    let evictions = TASKS * EACH - CAP;
    eventually("every eviction reported", || seen.len() >= evictions).await;
    support::settle().await;
    let evicted = seen.keys();
    assert_eq!(evicted.len(), evictions, "each eviction once");
    let evicted: HashSet<String> = evicted.into_iter().collect();
    assert_eq!(evicted.len(), evictions, "no key evicted twice");
    assert!(evicted.is_disjoint(&left));
    assert!(seen.events().iter().all(|(kind, _, value)| *kind == EventKind::Evict && value.is_some()));
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_past_its_deadline_beyond_the_bound_is_an_expiration() {
    let (_dir, url) = store("?max_capacity=2&poll_ms=60000");
    let (d, seen) = open::<u32>(&url).await;
    d.set_with_ttl("old", 1, Duration::from_millis(20)).await.unwrap();
    d.set("b", 2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await;
    d.set("c", 3).await.unwrap();
    d.set("d", 4).await.unwrap();
    eventually("two events", || seen.len() == 2).await;
    let mut events = seen.events();
    events.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(events, [(EventKind::Evict, "b".into(), Some(2)), (EventKind::Expire, "old".into(), Some(1))]);
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bound_options_are_invalid_urls() {
    let (_dir, url) = store("");
    for options in [
        "max_capacity=0",
        "max_capacity=-1",
        "max_capacity=ten",
        "max_capacity=",
        "max_bytes=0",
        "max_bytes=-5",
        "max_bytes=1.5",
        "eviction_policy=lru",
        "eviction_policy=",
    ] {
        let err = LiveDict::<u32>::open(&format!("{url}?{options}")).await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{options}: {err:?}");
    }
    let err = LiveDict::<u32>::builder().url(&url).max_capacity(0).build().await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
}

/// The schema of version 1 (livedict before the size bound), as it created a file.
const V1: &str = "CREATE TABLE livedict_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
     INSERT INTO livedict_meta (name, value) VALUES ('schema_version', 1), ('fence:livedict', 0), ('fence:other', 0);
     CREATE TABLE livedict (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, expires_at INTEGER);
     CREATE INDEX livedict_expires_at ON livedict (expires_at) WHERE expires_at IS NOT NULL;
     CREATE TABLE livedict_locks (key TEXT PRIMARY KEY NOT NULL, owner TEXT NOT NULL, lease_until INTEGER NOT NULL);
     CREATE TABLE other (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, expires_at INTEGER);
     INSERT INTO livedict (key, value) VALUES ('a', x'31'), ('b', x'32'), ('c', x'33');
     INSERT INTO other (key, value) VALUES ('x', x'37');";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_file_is_migrated_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    rusqlite::Connection::open(&path).unwrap().execute_batch(V1).unwrap();

    let url = format!("sqlite://{}?max_capacity=3", path.display());
    let (d, seen) = open::<u32>(&url).await;
    assert_eq!(d.get("a").await.unwrap(), Some(1), "the old rows are readable");
    // The rows from before come first in the eviction order, oldest first.
    d.set("d", 4).await.unwrap();
    d.set("e", 5).await.unwrap();
    assert_eq!(sorted(d.keys().await.unwrap()), ["c", "d", "e"]);
    eventually("two evictions", || seen.len() == 2).await;
    assert_eq!(
        seen.events(),
        [(EventKind::Evict, "a".into(), Some(1)), (EventKind::Evict, "b".into(), Some(2))]
    );
    d.shutdown().await.unwrap();

    // Another store's table in the same file, opened later, is migrated too.
    let other = LiveDict::<u32>::open(&format!("sqlite://{}?table=other", path.display())).await.unwrap();
    assert_eq!(other.get("x").await.unwrap(), Some(7));
    other.set("y", 8).await.unwrap();
    assert_eq!(other.len().await.unwrap(), 2);
    other.shutdown().await.unwrap();

    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = raw
        .query_row("SELECT value FROM livedict_meta WHERE name = 'schema_version'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    for table in ["livedict", "other"] {
        let has_seq: bool = raw
            .query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM pragma_table_info('{table}') WHERE name = 'seq')"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(has_seq, "{table} migrated");
    }
}

/// The child side (a no-op in a normal run): `bound|url|start_ms|prefix`.
#[test]
fn child_entry() {
    let Some(role) = child::role() else { return };
    let parts: Vec<&str> = role.splitn(4, '|').collect();
    assert_eq!(parts[0], "bound");
    let (url, start, prefix) = (parts[1].to_owned(), parts[2].parse::<u64>().unwrap(), parts[3].to_owned());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let evicted = rt.block_on(write_bounded(&url, start, &prefix));
    let mut out = std::io::stdout();
    for key in evicted {
        writeln!(out, "evicted {key}").unwrap();
    }
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
}

const PER_PROCESS: usize = 400;
const SHARED_CAP: usize = 60;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Writes `PER_PROCESS` keys `prefix:i` from 4 tasks, starting at `start_ms`;
/// the keys this process's `Evict` callback saw (after shutdown drained it).
async fn write_bounded(url: &str, start_ms: u64, prefix: &str) -> Vec<String> {
    let (d, seen) = open::<u32>(url).await;
    tokio::time::sleep(Duration::from_millis(start_ms.saturating_sub(now_ms()))).await;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (d, prefix) = (d.clone(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            for i in (t..PER_PROCESS).step_by(4) {
                d.set(format!("{prefix}:{i}"), i as u32).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    d.shutdown().await.unwrap();
    assert!(seen.events().iter().all(|(kind, _, value)| *kind == EventKind::Evict && value.is_some()));
    seen.keys()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_bounded_file_deliver_each_eviction_once() {
    let (_dir, url) = store(&format!("?max_capacity={SHARED_CAP}"));
    // Created before the child starts (concurrent first opens of a new file race on WAL).
    LiveDict::<u32>::open(&url).await.unwrap().shutdown().await.unwrap();
    let start = now_ms() + 1500;
    let (mut proc, out) = child::spawn(&format!("bound|{url}|{start}|child"));
    let mine = write_bounded(&url, start, "parent").await;
    let lines = child::lines(out);
    assert!(proc.wait().unwrap().success(), "child failed: {lines:?}");
    assert!(lines.iter().any(|l| l.ends_with("done")), "child output: {lines:?}");
    let theirs: Vec<String> =
        lines.iter().filter_map(|l| l.split_once("evicted ").map(|(_, k)| k.to_owned())).collect();

    let d = LiveDict::<u32>::open(&url).await.unwrap();
    let left: BTreeSet<String> = d.keys().await.unwrap().into_iter().collect();
    d.shutdown().await.unwrap();
    assert_eq!(left.len(), SHARED_CAP);
    let all = mine.len() + theirs.len();
    let evicted: BTreeSet<String> = mine.into_iter().chain(theirs).collect();
    assert_eq!(evicted.len(), all, "no eviction delivered twice");
    assert_eq!(all + SHARED_CAP, 2 * PER_PROCESS, "every eviction delivered");
    assert!(evicted.is_disjoint(&left));
}
