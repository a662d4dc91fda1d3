//! Atomic updates, single-flight loads and shared watch events across real
//! OS processes on one SQLite file or Redis namespace.

mod support;

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use livedict::{EventKind, LiveDict, WatchFilter, WatchItem};
use support::child;

/// The child side (a no-op in a normal run): `role|url|start_ms`.
#[test]
fn child_entry() {
    let Some(role) = child::role() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(play(role));
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Sleeps until the shared start time, so every process begins together.
async fn wait_until(start_ms: u64) {
    tokio::time::sleep(Duration::from_millis(start_ms.saturating_sub(now_ms()))).await;
}

const INCREMENTS: i64 = 40;
const CALLERS: usize = 5;

/// `CALLERS` concurrent `get_or_insert_with` calls on "k" whose loader counts its runs in "loads".
async fn load_concurrently(url: &str) -> Vec<String> {
    let d = LiveDict::<String>::open(url).await.unwrap();
    let counter = LiveDict::<i64>::open(url).await.unwrap();
    let mut joins = Vec::new();
    for _ in 0..CALLERS {
        let (d, counter) = (d.clone(), counter.clone());
        joins.push(tokio::spawn(async move {
            d.get_or_insert_with("k", None, move || async move {
                counter.incr("loads", 1).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, String>(format!("loaded by {}", std::process::id()))
            })
            .await
            .unwrap()
        }));
    }
    let mut got = Vec::new();
    for j in joins {
        got.push(j.await.unwrap());
    }
    got
}

async fn play(role: String) {
    let parts: Vec<&str> = role.splitn(3, '|').collect();
    let (what, url, start) = (parts[0], parts[1], parts[2].parse::<u64>().unwrap());
    let mut out = std::io::stdout();
    match what {
        "incr" => {
            let d = LiveDict::<i64>::open(url).await.unwrap();
            wait_until(start).await;
            for _ in 0..INCREMENTS {
                d.incr("n", 1).await.unwrap();
            }
            writeln!(out, "done").unwrap();
        }
        "load" => {
            wait_until(start).await;
            for v in load_concurrently(url).await {
                writeln!(out, "got {v}").unwrap();
            }
        }
        "write" => {
            let d = LiveDict::<i64>::open(url).await.unwrap();
            wait_until(start).await;
            d.set("w:1", 1).await.unwrap();
            d.set("other", 2).await.unwrap();
            assert!(d.delete("w:1").await.unwrap());
            d.set("w:2", 3).await.unwrap();
            // Shutdown hands the events still queued to the other processes.
            d.shutdown().await.unwrap();
            writeln!(out, "done").unwrap();
        }
        other => panic!("unknown role {other}"),
    }
    out.flush().unwrap();
}

/// Runs `body` against a fresh SQLite file and (if redis-server is installed) a fresh Redis
/// namespace, on a single server and on a local 3-master cluster.
macro_rules! on_shared_backends {
    ($(async fn $name:ident($url:ident: &str) $body:block)*) => {
        $(
            mod $name {
                use super::*;
                async fn run($url: &str) $body

                #[cfg(feature = "sqlite")]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let h = support::Harness::sqlite();
                    run(h.url()).await
                }

                #[cfg(feature = "redis")]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    let Some(h) = support::Harness::redis() else { return };
                    run(h.url()).await
                }

                #[cfg(feature = "redis")]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis_cluster() {
                    let Some(h) = tokio::task::spawn_blocking(support::Harness::redis_cluster).await.unwrap()
                    else {
                        return;
                    };
                    run(h.url()).await
                }
            }
        )*
    };
}

on_shared_backends! {
    async fn increments_from_three_processes_are_exact(url: &str) {
        // Created before the children start: concurrent first opens of a new
        // SQLite file can fail with "database is locked" (a separate issue).
        let d = LiveDict::<i64>::open(url).await.unwrap();
        let start = now_ms() + 1500;
        let children: Vec<_> = (0..2).map(|_| child::spawn(&format!("incr|{url}|{start}"))).collect();
        wait_until(start).await;
        for _ in 0..INCREMENTS {
            d.incr("n", 1).await.unwrap();
        }
        for (mut proc, out) in children {
            assert!(child::lines(out).iter().any(|l| l.ends_with("done")), "a child failed");
            assert!(proc.wait().unwrap().success());
        }
        assert_eq!(d.get("n").await.unwrap(), Some(3 * INCREMENTS));
    }

    async fn three_processes_share_one_load(url: &str) {
        // Created before the children start (see above).
        let counter = LiveDict::<i64>::open(url).await.unwrap();
        let start = now_ms() + 1500;
        let children: Vec<_> = (0..2).map(|_| child::spawn(&format!("load|{url}|{start}"))).collect();
        wait_until(start).await;
        let mut values = load_concurrently(url).await;
        for (mut proc, out) in children {
            let lines = child::lines(out);
            let got: Vec<String> =
                lines.iter().filter_map(|l| l.split_once("got ").map(|(_, v)| v.to_owned())).collect();
            assert_eq!(got.len(), CALLERS, "child output: {lines:?}");
            values.extend(got);
            assert!(proc.wait().unwrap().success());
        }
        assert_eq!(counter.get("loads").await.unwrap(), Some(1), "the loader ran once in all");
        values.dedup();
        assert_eq!(values.len(), 1, "every caller got the one loaded value: {values:?}");
    }

    async fn a_watch_sees_the_writes_of_another_process(url: &str) {
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}share_events=true");
        let d = LiveDict::<i64>::open(&url).await.unwrap();
        let mut w = d.watch(WatchFilter::kinds([EventKind::Set, EventKind::Delete]).prefix("w:")).unwrap();
        let start = now_ms() + 1000;
        let (mut proc, out) = child::spawn(&format!("write|{url}|{start}"));
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let item = tokio::time::timeout(Duration::from_secs(20), w.recv()).await.expect("no event").unwrap();
            let WatchItem::Event(ev) = item else { panic!("lagged") };
            seen.push((ev.kind(), ev.key().to_owned(), ev.value().copied()));
        }
        assert_eq!(
            seen,
            [
                (EventKind::Set, "w:1".to_string(), Some(1)),
                (EventKind::Delete, "w:1".to_string(), Some(1)),
                (EventKind::Set, "w:2".to_string(), Some(3)),
            ]
        );
        assert!(child::lines(out).iter().any(|l| l.ends_with("done")));
        assert!(proc.wait().unwrap().success());
    }
}
