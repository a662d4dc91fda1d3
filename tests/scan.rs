//! Streaming prefix scans (`scan`, `scan_keys`), on every backend: exactly
//! once in key order on memory and SQLite, at least once on Redis.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use livedict::{Error, LiveDict, SCAN_PAGE};
use support::Harness;

/// Checks the keys a scan yielded against the keys expected: on memory and
/// SQLite each exactly once, in key order; on Redis each at least once.
fn check_keys(h: &Harness, got: &[String], want: &BTreeSet<String>) {
    if h.is_redis() {
        let got: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(&got, want);
    } else {
        let want: Vec<String> = want.iter().cloned().collect();
        assert_eq!(got, want.as_slice());
    }
}

async fn keys_of(d: &LiveDict<u32>, prefix: &str) -> Vec<String> {
    d.scan_keys(prefix).try_collect().await.unwrap()
}

/// Stores `v` under every key, 64 writes at a time (they share SQLite's
/// group commit and Redis's pipelining).
async fn fill(d: &LiveDict<u32>, keys: impl IntoIterator<Item = (String, u32)>) {
    futures::stream::iter(keys)
        .for_each_concurrent(64, |(k, v)| async move { d.set(&k, v).await.unwrap() })
        .await;
}

fn set_of<const N: usize>(keys: [&str; N]) -> BTreeSet<String> {
    keys.into_iter().map(String::from).collect()
}

for_each_backend! {
    async fn a_scan_yields_only_the_keys_with_the_prefix(h: Harness) {
        let d = h.open::<u32>().await;
        for (k, v) in [("user:2", 2), ("user:1", 1), ("user:10", 10), ("users", 9), ("order:1", 5), ("use", 7)] {
            d.set(k, v).await.unwrap();
        }
        let users: Vec<(String, u32)> = d.scan("user:").try_collect().await.unwrap();
        let mut sorted = users.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, [("user:1".to_string(), 1), ("user:10".to_string(), 10), ("user:2".to_string(), 2)]);
        if !h.is_redis() {
            assert_eq!(users, sorted, "exactly once, in key order");
        }
        check_keys(&h, &keys_of(&d, "user:").await, &set_of(["user:1", "user:10", "user:2"]));
        check_keys(&h, &keys_of(&d, "nothing").await, &BTreeSet::new());
        check_keys(&h, &keys_of(&d, "use").await, &set_of(["use", "user:1", "user:10", "user:2", "users"]));
    }

    async fn the_empty_prefix_yields_every_entry(h: Harness) {
        let d = h.open::<u32>().await;
        for (k, v) in [("b", 2), ("a", 1), ("c:1", 3)] {
            d.set(k, v).await.unwrap();
        }
        check_keys(&h, &keys_of(&d, "").await, &set_of(["a", "b", "c:1"]));
        let mut items: Vec<(String, u32)> = d.scan("").try_collect().await.unwrap();
        items.sort();
        items.dedup();
        assert_eq!(items, [("a".to_string(), 1), ("b".to_string(), 2), ("c:1".to_string(), 3)]);
    }

    async fn an_empty_store_yields_nothing(h: Harness) {
        let d = h.open::<u32>().await;
        assert!(keys_of(&d, "").await.is_empty());
        assert!(keys_of(&d, "a").await.is_empty());
        let items: Vec<(String, u32)> = d.scan("").try_collect().await.unwrap();
        assert!(items.is_empty());
    }

    async fn more_entries_than_one_page_are_each_yielded(h: Harness) {
        let d = h.open::<u32>().await;
        let n = 2 * SCAN_PAGE + 345;
        let want: BTreeSet<String> = (0..n).map(|i| format!("k:{i}")).collect();
        fill(&d, (0..n).map(|i| (format!("k:{i}"), i as u32))).await;
        d.set("other", 0).await.unwrap();
        check_keys(&h, &keys_of(&d, "k:").await, &want);
        let items: Vec<(String, u32)> = d.scan("k:").try_collect().await.unwrap();
        for (k, v) in &items {
            assert_eq!(k, &format!("k:{v}"));
        }
        let keys: Vec<String> = items.into_iter().map(|(k, _)| k).collect();
        check_keys(&h, &keys, &want);
        // Exactly one page's worth: the scan's end is found on the next page.
        d.clear().await.unwrap();
        fill(&d, (0..SCAN_PAGE).map(|i| (format!("p:{i}"), 1))).await;
        let want: BTreeSet<String> = (0..SCAN_PAGE).map(|i| format!("p:{i}")).collect();
        check_keys(&h, &keys_of(&d, "").await, &want);
    }

    async fn glob_and_like_characters_in_a_prefix_are_literal(h: Harness) {
        let d = h.open::<u32>().await;
        let keys = ["a%b", "axb", "a_c", "abc", "a*1", "ab1", "a?1", "a[1]", "a1", "a\\1", "a]2", "a2"];
        for k in keys {
            d.set(k, 1).await.unwrap();
        }
        for (prefix, want) in [
            ("a%", "a%b"),
            ("a_", "a_c"),
            ("a*", "a*1"),
            ("a?", "a?1"),
            ("a[", "a[1]"),
            ("a[1", "a[1]"),
            ("a]", "a]2"),
            ("a\\", "a\\1"),
        ] {
            check_keys(&h, &keys_of(&d, prefix).await, &set_of([want]));
        }
        check_keys(&h, &keys_of(&d, "a").await, &keys.into_iter().map(String::from).collect());
    }

    async fn keys_beyond_ascii_are_scanned_by_their_prefix(h: Harness) {
        let d = h.open::<u32>().await;
        let keys = ["é:1", "é:2", "ê:1", "e:1", "\u{10ffff}a", "\u{10ffff}", "z"];
        for k in keys {
            d.set(k, 1).await.unwrap();
        }
        check_keys(&h, &keys_of(&d, "é").await, &set_of(["é:1", "é:2"]));
        check_keys(&h, &keys_of(&d, "\u{10ffff}").await, &set_of(["\u{10ffff}", "\u{10ffff}a"]));
        check_keys(&h, &keys_of(&d, "").await, &keys.into_iter().map(String::from).collect());
    }

    async fn expired_entries_are_never_yielded(h: Harness) {
        let d = h.open::<u32>().await;
        d.set_with_ttl("t:short", 1, h.short_ttl()).await.unwrap();
        d.set_with_ttl("t:long", 2, Duration::from_secs(3600)).await.unwrap();
        d.set("t:none", 3).await.unwrap();
        h.pass(h.short_ttl() + Duration::from_millis(20)).await;
        let want = set_of(["t:long", "t:none"]);
        check_keys(&h, &keys_of(&d, "t:").await, &want);
        let mut items: Vec<(String, u32)> = d.scan("t:").try_collect().await.unwrap();
        items.sort();
        items.dedup();
        assert_eq!(items, [("t:long".to_string(), 2), ("t:none".to_string(), 3)]);
    }

    async fn a_scan_while_writers_run_sees_every_entry_present_throughout(h: Harness) {
        let d = h.open::<u32>().await;
        let n = h.scale(3 * SCAN_PAGE, SCAN_PAGE + 500);
        let want: BTreeSet<String> = (0..n).map(|i| format!("s:{i:05}")).collect();
        fill(&d, want.iter().map(|k| (k.clone(), 1))).await;
        // A writer (another task, and on SQLite and Redis another handle)
        // adds and removes keys among the stable ones, before and after the cursor.
        let writer = h.open::<u32>().await;
        let w = if h.shared() { writer } else { d.clone() };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut i = 0usize;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let k = format!("s:{:05}~{i}", (i * 7919) % n);
                w.set(&k, 2).await.unwrap();
                if i % 2 == 0 {
                    w.delete(&k).await.unwrap();
                }
                i += 1;
                tokio::task::yield_now().await;
            }
            i
        });
        let mut got = Vec::new();
        let mut scan = std::pin::pin!(d.scan("s:"));
        while let Some(item) = scan.next().await {
            let (k, _) = item.unwrap();
            // The consumer writes too, between items: keys behind and ahead of it.
            if got.len() % 97 == 0 {
                let behind = format!("{k}!");
                let ahead = format!("s:{:05}!", (got.len() * 31) % n);
                d.set(&behind, 3).await.unwrap();
                d.set(&ahead, 3).await.unwrap();
                d.delete(&ahead).await.unwrap();
                // Lets the writer task run (memory scans never wait).
                tokio::task::yield_now().await;
            }
            got.push(k);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = task.await.unwrap();
        assert!(writes > 0);
        let stable: Vec<String> = got.iter().filter(|k| !k.contains(['~', '!'])).cloned().collect();
        check_keys(&h, &stable, &want);
        if !h.is_redis() {
            assert!(got.windows(2).all(|w| w[0] < w[1]), "every key once, in key order");
        }
    }

    async fn a_prefix_longer_than_a_key_is_an_error_first(h: Harness) {
        let d = h.open::<u32>().await;
        d.set("a", 1).await.unwrap();
        let long = "x".repeat(livedict::MAX_KEY_LEN + 1);
        let mut scan = std::pin::pin!(d.scan(&long));
        assert!(matches!(scan.next().await, Some(Err(Error::InvalidKey { .. }))));
        assert!(scan.next().await.is_none());
        let mut keys = std::pin::pin!(d.scan_keys(&long));
        assert!(matches!(keys.next().await, Some(Err(Error::InvalidKey { .. }))));
        assert!(keys.next().await.is_none());
        // The longest key is a valid prefix.
        let longest = "y".repeat(livedict::MAX_KEY_LEN);
        d.set(&longest, 2).await.unwrap();
        check_keys(&h, &keys_of(&d, &longest).await, &BTreeSet::from([longest.clone()]));
    }

    async fn a_scan_is_a_send_static_stream_that_outlives_its_handle(h: Harness) {
        let d = h.open::<u32>().await;
        for i in 0..10u32 {
            d.set(format!("k{i}"), i).await.unwrap();
        }
        let scan = d.scan("k");
        drop(d);
        let items: Vec<(String, u32)> = tokio::spawn(scan.try_collect()).await.unwrap().unwrap();
        let keys: Vec<String> = items.into_iter().map(|(k, _)| k).collect();
        check_keys(&h, &keys, &(0..10).map(|i| format!("k{i}")).collect());
    }

    async fn a_scan_after_shutdown_is_closed(h: Harness) {
        let d = h.open::<u32>().await;
        d.set("a", 1).await.unwrap();
        d.shutdown().await.unwrap();
        let mut scan = std::pin::pin!(d.scan(""));
        assert!(matches!(scan.next().await, Some(Err(Error::Closed))));
        assert!(scan.next().await.is_none());
    }
}

/// The blocking twins iterate on the facade's runtime.
#[test]
fn blocking_scans_iterate_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("s.db").display());
    for url in ["memory://", sqlite.as_str()] {
        let d = livedict::blocking::LiveDict::<u32>::open(url).unwrap();
        for i in (0..2500u32).rev() {
            d.set(format!("b:{i:04}"), i).unwrap();
        }
        d.set("c", 0).unwrap();
        let keys: Vec<String> = d.scan_keys("b:").collect::<livedict::Result<_>>().unwrap();
        let want: Vec<String> = (0..2500).map(|i| format!("b:{i:04}")).collect();
        assert_eq!(keys, want);
        let items: Vec<(String, u32)> = d.scan("b:").collect::<livedict::Result<_>>().unwrap();
        assert_eq!(items.len(), 2500);
        assert!(items.iter().all(|(k, v)| k == &format!("b:{v:04}")));
        let mut bad = d.scan_keys(&"x".repeat(2000));
        assert!(matches!(bad.next(), Some(Err(Error::InvalidKey { .. }))));
        assert!(bad.next().is_none());
    }
}
