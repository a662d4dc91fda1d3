//! Faults from outside: a process killed mid-batch, a Redis server that dies
//! for good, an SQLite file locked by another process. (A single writer
//! killed by SIGKILL is `sqlite.rs::acknowledged_writes_survive_sigkill`; a
//! Redis restart with appendonly under one writer is
//! `redis.rs::the_same_handle_recovers_after_a_server_restart_without_losing_acknowledged_writes`.)

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livedict::{Error, LiveDict};
use support::child;

/// The child side of the multi-process tests (a no-op in a normal run).
#[test]
fn child_entry() {
    let Some(role) = child::role() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(play(role));
}

async fn play(role: String) {
    let parts: Vec<&str> = role.splitn(3, '|').collect();
    match parts[0] {
        // `tasks` concurrent writers (so commits are grouped): task t sets
        // `t-i` = i and, after every third set, deletes `t-(i-1)`; each
        // acknowledged write is printed as `set t-i` / `del t-i`.
        "group_writers" => {
            let (url, tasks): (&str, usize) = (parts[1], parts[2].parse().unwrap());
            let d = LiveDict::<u64>::open(url).await.unwrap();
            let out = Arc::new(Mutex::new(std::io::stdout()));
            let say = |out: &Mutex<std::io::Stdout>, line: String| {
                let mut out = out.lock().unwrap();
                writeln!(out, "{line}").unwrap();
                out.flush().unwrap();
            };
            say(&out, "ready".into());
            let mut all = Vec::new();
            for t in 0..tasks {
                let (d, out) = (d.clone(), Arc::clone(&out));
                all.push(tokio::spawn(async move {
                    for i in 0u64.. {
                        if i % 2 == 0 {
                            d.set(format!("{t}-{i}"), i).await.unwrap();
                        } else {
                            d.set_with_ttl(format!("{t}-{i}"), i, Duration::from_secs(3600)).await.unwrap();
                        }
                        say(&out, format!("set {t}-{i}"));
                        if i % 3 == 2 {
                            d.delete(format!("{t}-{}", i - 1)).await.unwrap();
                            say(&out, format!("del {t}-{}", i - 1));
                        }
                    }
                }));
            }
            for t in all {
                t.await.unwrap();
            }
        }
        // Holds an exclusive write transaction on the file for `ms` milliseconds.
        #[cfg(feature = "sqlite")]
        "sqlite_locker" => {
            let (path, ms): (&str, u64) = (parts[1], parts[2].parse().unwrap());
            let mut conn = rusqlite::Connection::open(path).unwrap();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            tx.execute("CREATE TABLE IF NOT EXISTS other (x)", []).unwrap();
            tx.execute("INSERT INTO other VALUES (1)", []).unwrap();
            println!("locked");
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_millis(ms));
            tx.commit().unwrap();
            println!("released");
        }
        other => panic!("unknown child role {other}"),
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_acknowledged_writes_and_deletes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let url = format!("sqlite://{}", db.display());
    let (mut proc, mut out) = child::spawn(&format!("group_writers|{url}|16"));
    child::wait_for_line(&mut out, "ready");
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            lines.push(line.trim_end().to_owned());
            line.clear();
        }
        lines
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    proc.kill().unwrap(); // SIGKILL, mid-batch
    proc.wait().unwrap();
    let lines = reader.join().unwrap();
    // The expected state of every key whose last write was acknowledged and
    // not possibly followed by an in-flight delete.
    let mut state: HashMap<String, bool> = HashMap::new();
    let mut last_of_task: HashMap<String, String> = HashMap::new();
    for line in &lines {
        let (op, key) = match line.split_once(' ') {
            Some((op @ ("set" | "del"), key)) => (op, key.to_owned()),
            _ => continue,
        };
        state.insert(key.clone(), op == "set");
        last_of_task.insert(key.split('-').next().unwrap().to_owned(), line.clone());
    }
    for last in last_of_task.values() {
        // After `set t-i` with i % 3 == 2 the task deletes `t-(i-1)`: that delete may be in flight.
        if let Some(key) = last.strip_prefix("set ") {
            let (t, i) = key.split_once('-').unwrap();
            let i: u64 = i.parse().unwrap();
            if i % 3 == 2 {
                state.remove(&format!("{t}-{}", i - 1));
            }
        }
    }
    assert!(state.len() > 100, "only {} acknowledged writes", state.len());
    let d = LiveDict::<u64>::open(&url).await.unwrap();
    for (key, present) in &state {
        let expected = present.then(|| key.split_once('-').unwrap().1.parse::<u64>().unwrap());
        assert_eq!(d.get(key).await.unwrap(), expected, "acknowledged write to {key} lost");
    }
    d.shutdown().await.unwrap();
    let raw = rusqlite::Connection::open(&db).unwrap();
    let ok: String = raw.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_by_another_process_is_waited_for_up_to_the_busy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let busy = Duration::from_millis(300);
    let d = LiveDict::<u64>::builder()
        .url(&format!("sqlite://{}?busy_timeout_ms={}", db.display(), busy.as_millis()))
        .request_timeout(Duration::from_secs(20))
        .build()
        .await
        .unwrap();
    d.set("before", 1).await.unwrap();

    // Held longer than the busy timeout: the write fails with a clear error, after waiting for it.
    let (mut proc, mut out) = child::spawn(&format!("sqlite_locker|{}|3000", db.display()));
    child::wait_for_line(&mut out, "locked");
    let started = Instant::now();
    let err = d.set("k", 1).await.unwrap_err();
    assert!(started.elapsed() >= busy, "gave up before the busy timeout: {:?}", started.elapsed());
    assert!(matches!(err, Error::Backend { backend: "sqlite", .. }), "{err:?}");
    assert!(err.to_string().contains("locked") || err.to_string().contains("busy"), "{err}");
    // Reads do not need the write lock (WAL).
    assert_eq!(d.get("before").await.unwrap(), Some(1));
    proc.kill().unwrap();
    proc.wait().unwrap();
    // The store recovers once the other writer is gone; the failed write left nothing behind.
    d.set("after", 2).await.unwrap();
    assert_eq!(d.get("k").await.unwrap(), None);

    // Held for less than the busy timeout (with room to spare): the write waits and succeeds.
    let d = LiveDict::<u64>::builder()
        .url(&format!("sqlite://{}?busy_timeout_ms=10000", db.display()))
        .request_timeout(Duration::from_secs(20))
        .build()
        .await
        .unwrap();
    let (mut proc, mut out) = child::spawn(&format!("sqlite_locker|{}|300", db.display()));
    child::wait_for_line(&mut out, "locked");
    d.set("k", 3).await.unwrap();
    assert_eq!(d.get("k").await.unwrap(), Some(3));
    child::wait_for_line(&mut out, "released");
    assert!(proc.wait().unwrap().success());
}

/// Every operation kind against a Redis server that is gone: each fails with
/// `Backend` or `Timeout` (a `lock` may also give up with `LockTimeout`) and
/// none outlives the request timeout by much; shutdown completes.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_fails_cleanly_when_redis_is_gone_for_good() {
    let Some(mut server) = support::redis_server::RedisServer::start() else { return };
    let request_timeout = Duration::from_secs(1);
    let d = LiveDict::<u64>::builder()
        .url(&format!("{}?namespace=gone&command_timeout_ms=300", server.url()))
        .request_timeout(request_timeout)
        .build()
        .await
        .unwrap();
    d.set("k", 1).await.unwrap();
    let guard = d.lock("held", Duration::from_secs(1)).await.unwrap();
    server.kill();
    let ttl = Duration::from_secs(60);
    let bound = request_timeout + Duration::from_secs(5);
    macro_rules! fails {
        ($name:literal, $call:expr) => {{
            let outcome = tokio::time::timeout(bound, $call).await;
            let result = outcome.unwrap_or_else(|_| panic!("{} hangs with the server gone", $name));
            match result {
                Err(Error::Backend { backend: "redis", .. } | Error::Timeout { .. }) => {}
                Err(Error::LockTimeout { .. }) if $name == "lock" => {}
                other => panic!("{}: expected a backend error or timeout, got {other:?}", $name),
            }
        }};
    }
    fails!("get", d.get("k"));
    fails!("set", d.set("k", 2));
    fails!("set_with_ttl", d.set_with_ttl("k", 2, ttl));
    fails!("delete", d.delete("k"));
    fails!("exists", d.exists("k"));
    fails!("keys", d.keys());
    fails!("items", d.items());
    fails!("len", d.len());
    fails!("clear", d.clear());
    fails!("ttl", d.ttl("k"));
    fails!("expire", d.expire("k", ttl));
    fails!("persist", d.persist("k"));
    fails!("lock", d.lock("other", Duration::from_millis(200)));
    fails!("guard.get", guard.get());
    fails!("guard.set", guard.set(3));
    fails!("guard.delete", guard.delete());
    fails!("guard.renew", guard.renew());
    // Dropping the guard cannot reach the server either; it must not hang or panic.
    drop(guard);
    tokio::time::timeout(Duration::from_secs(10), d.shutdown()).await.expect("shutdown hangs").ok();
    assert!(matches!(d.get("k").await, Err(Error::Closed)));
}

/// Several tasks writing and deleting while the server is SIGKILLed and
/// restarted (appendonly, fsync always): every acknowledged write and delete
/// is in effect afterwards, and the handle's locks still work.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acknowledged_writes_and_deletes_survive_a_redis_restart() {
    let Some(mut server) = support::redis_server::RedisServer::start_with(true) else { return };
    let d = LiveDict::<u64>::builder()
        .url(&format!("{}?namespace=rs", server.url()))
        .request_timeout(Duration::from_secs(20))
        .build()
        .await
        .unwrap();
    let writers: Vec<_> = (0..8u64)
        .map(|t| {
            let d = d.clone();
            tokio::spawn(async move {
                // key -> Some(value) after an acknowledged set, None after an acknowledged delete.
                let mut acked: HashMap<String, Option<u64>> = HashMap::new();
                let mut uncertain = HashSet::new();
                for i in 0..300u64 {
                    let key = format!("{t}-{}", i % 50);
                    let outcome = if i % 4 == 3 {
                        d.delete(&key).await.map(|_| None)
                    } else {
                        d.set_with_ttl(&key, i, Duration::from_secs(3600)).await.map(|()| Some(i))
                    };
                    match outcome {
                        Ok(state) => {
                            uncertain.remove(&key);
                            acked.insert(key, state);
                        }
                        // A failed write may or may not have reached the server.
                        Err(Error::Backend { .. } | Error::Timeout { .. }) => {
                            uncertain.insert(key);
                        }
                        Err(e) => panic!("unexpected error {e}"),
                    }
                    if i % 20 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                acked.retain(|k, _| !uncertain.contains(k));
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let _server = tokio::task::spawn_blocking(move || {
        server.kill();
        std::thread::sleep(Duration::from_millis(200));
        server.restart();
        server
    })
    .await
    .unwrap();
    let mut checked = 0;
    for w in writers {
        for (key, state) in w.await.unwrap() {
            assert_eq!(d.get(&key).await.unwrap(), state, "acknowledged write to {key} lost");
            checked += 1;
        }
    }
    assert!(checked > 0);
    let g = d.lock("after", Duration::from_secs(5)).await.unwrap();
    g.set(1).await.unwrap();
    g.unlock().await.unwrap();
    assert_eq!(d.get("after").await.unwrap(), Some(1));
    d.shutdown().await.unwrap();
}

/// Entries written before a Redis restart (appendonly) still expire exactly
/// once each, with their values, whether their deadline falls while the
/// server is down or after it is back.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expirations_across_a_redis_restart_are_reported_exactly_once_with_values() {
    let Some(mut server) = support::redis_server::RedisServer::start_with(true) else { return };
    let d = LiveDict::<u64>::builder()
        .url(&format!("{}?namespace=rx", server.url()))
        .request_timeout(Duration::from_secs(20))
        .build()
        .await
        .unwrap();
    let seen = support::Collector::new();
    d.register_callback(livedict::EventKind::Expire, seen.callback()).unwrap();
    let n = 200u64;
    for i in 0..n {
        // Deadlines from 600 ms (while the server is down) to 1.6 s (after it is back). The
        // kill lands well before the first deadline: a claim whose reply a crash swallows
        // is lost (see RELIABILITY.md), and this test is about deadlines during the outage.
        d.set_with_ttl(format!("k{i}"), i, Duration::from_millis(600 + 5 * i)).await.unwrap();
    }
    let _server = tokio::task::spawn_blocking(move || {
        server.kill();
        std::thread::sleep(Duration::from_millis(800));
        server.restart();
        server
    })
    .await
    .unwrap();
    support::eventually("every expiration reported", || seen.len() >= n as usize).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // duplicates would arrive by now
    let events = seen.events();
    assert_eq!(events.len(), n as usize, "duplicates");
    let keys: HashSet<String> = events.iter().map(|(_, k, _)| k.clone()).collect();
    assert_eq!(keys.len(), n as usize);
    for (_, k, v) in events {
        assert_eq!(v, Some(k[1..].parse::<u64>().unwrap()), "{k} expired without its value");
    }
    assert_eq!(d.len().await.unwrap(), 0);
    d.shutdown().await.unwrap();
}
