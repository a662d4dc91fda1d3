//! Resource bounds: what expired and what was unlocked leaves nothing behind,
//! and dropping every handle stops every background task, thread and connection.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use livedict::backend::{MemoryBackend, MemoryConfig};
use livedict::layer::{CallbackLayer, DispatchConfig, Dispatcher, LockLayer};
use livedict::{Callback, Event, EventKind, LiveDict};
use support::{Kind, eventually};

/// The child side of the memory-growth test (a no-op in a normal run).
#[test]
fn child_entry() {
    let Some(role) = support::child::role() else { return };
    assert_eq!(role, "expiry_cycles");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let d = LiveDict::<String>::open("memory://").await.unwrap();
        let mut out = std::io::stdout();
        for cycle in 0..2 {
            for i in 0..100_000u64 {
                let value = format!("{i:0>100}"); // 100-byte values
                d.set_with_ttl(format!("k{i}"), value, Duration::from_millis(1 + i % 1000)).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(1100)).await;
            assert_eq!(d.len().await.unwrap(), 0);
            use std::io::Write;
            writeln!(out, "rss {cycle} {}", resident_bytes()).unwrap();
            out.flush().unwrap();
        }
    });
}

/// This process's resident set size (Linux `/proc/self/statm`, 4 KiB pages).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

#[test]
fn memory_does_not_grow_over_repeated_cycles_of_100k_expiring_entries() {
    if resident_bytes() == 0 {
        return; // no /proc: nothing to measure
    }
    let (mut proc, out) = support::child::spawn("expiry_cycles");
    let rss: Vec<u64> = support::child::lines(out)
        .iter()
        .filter_map(|l| l.split_once("rss ").map(|(_, r)| r.split(' ').nth(1).unwrap().parse().unwrap()))
        .collect();
    assert!(proc.wait().unwrap().success());
    assert_eq!(rss.len(), 2, "{rss:?}");
    // The first cycle sizes the allocator's pools (measured: ~81 MB in a debug
    // build); the second reuses them (measured: +0.35 MB, then +4 KB per
    // further cycle). Anything leaked per entry (a key alone is 24+ bytes)
    // would add 2.4+ MB per cycle.
    let (first, last) = (rss[0], rss[1]);
    assert!(last <= first + 2_000_000, "resident memory grew from {first} to {last} bytes: {rss:?}");
}

#[tokio::test(start_paused = true)]
async fn timer_and_lock_tables_return_to_empty_after_100k_entries_expire() {
    let dispatcher = Dispatcher::<u64>::new(DispatchConfig::default()).unwrap();
    let backend = MemoryBackend::new(MemoryConfig::default(), dispatcher.sink()).unwrap();
    let stack = tower::ServiceBuilder::new()
        .layer(LockLayer::new())
        .layer(CallbackLayer::new(dispatcher.clone()))
        .service(backend.clone());
    let locks = stack.clone();
    let d = LiveDict::from_service(stack, dispatcher);
    let expired = Arc::new(AtomicUsize::new(0));
    let e = Arc::clone(&expired);
    d.register_callback(
        EventKind::Expire,
        Callback::new(move |_: &Event<u64>| {
            e.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .unwrap();
    let n = 100_000u64;
    for i in 0..n {
        // Deadlines spread over 1-1000 ms; every tenth key is re-set, so its first deadline is stale.
        d.set_with_ttl(format!("k{i}"), i, Duration::from_millis(1 + i % 1000)).await.unwrap();
        if i % 10 == 0 {
            d.set_with_ttl(format!("k{i}"), i, Duration::from_millis(1 + (i * 7) % 1000)).await.unwrap();
        }
        if i % 100 == 0 {
            let g = d.lock(format!("k{i}"), Duration::from_secs(1)).await.unwrap();
            g.expire(Duration::from_millis(500)).await.unwrap();
        }
    }
    assert_eq!(backend.pending_deadlines(), n as usize, "one live deadline per entry");
    assert_eq!(locks.locked_keys(), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    eventually("every expire event delivered", || expired.load(Ordering::Relaxed) == n as usize).await;
    assert_eq!(d.stats().expirations, n);
    assert_eq!(backend.pending_deadlines(), 0, "the timer table kept expired deadlines");
    assert_eq!(locks.locked_keys(), 0, "the lock table kept released keys");
    assert_eq!(d.len().await.unwrap(), 0);
    // The structures are reusable at the same size afterwards.
    d.set_with_ttl("again", 1, Duration::from_millis(5)).await.unwrap();
    assert_eq!(backend.pending_deadlines(), 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(backend.pending_deadlines(), 0);
}

/// Uses every part of a store that runs in the background: expiry, sync and
/// async callbacks (with timeouts, so the sync one has a watchdog), locks
/// released by drop, clones.
async fn exercise(h: &support::Harness, marker: &Arc<()>) -> LiveDict<u64> {
    let d = h.open::<u64>().await;
    let m = Arc::clone(marker);
    let sync_cb = Callback::new(move |_: &Event<u64>| {
        let _ = &m;
    });
    d.register_callback(EventKind::Set, sync_cb.timeout(Duration::from_secs(1))).unwrap();
    let m = Arc::clone(marker);
    let async_cb = Callback::new_async(move |_: Event<u64>| {
        let m = Arc::clone(&m);
        async move {
            drop(m);
        }
    });
    d.register_callback(EventKind::Expire, async_cb.timeout(Duration::from_secs(1))).unwrap();
    let clone = d.clone();
    for i in 0..20 {
        clone.set_with_ttl(format!("k{i}"), i, h.short_ttl()).await.unwrap();
    }
    d.set("forever", 1).await.unwrap();
    let g = d.lock("forever", Duration::from_secs(5)).await.unwrap();
    g.set(2).await.unwrap();
    drop(g);
    h.pass(h.short_ttl() + h.grace()).await;
    eventually("expirations", || d.stats().expirations == 20).await;
    d
}

/// The signals `assert_all_stopped` waits for are really there while a store is open.
fn assert_running(h: &support::Harness) {
    match h.kind {
        Kind::Memory => {}
        Kind::Sqlite => {
            let wal = format!("{}-wal", h.url().strip_prefix("sqlite://").unwrap());
            assert!(std::path::Path::new(&wal).exists(), "no WAL file while open");
        }
        Kind::Redis | Kind::RedisCluster | Kind::RedisSentinel => {
            assert!(h.redis_connections() > 0, "no Redis connection while open")
        }
    }
}

/// Waits until everything `exercise` started has stopped.
async fn assert_all_stopped(h: &support::Harness, tasks_before: usize, marker: &Arc<()>) {
    let metrics = tokio::runtime::Handle::current().metrics();
    eventually("every background task stopped", || metrics.num_alive_tasks() <= tasks_before).await;
    // The callbacks (and so their threads and tasks) were dropped.
    eventually("every callback dropped", || Arc::strong_count(marker) == 1).await;
    match h.kind {
        Kind::Memory => {}
        Kind::Sqlite => {
            // SQLite removes the WAL file when the last connection closes.
            let wal = format!("{}-wal", h.url().strip_prefix("sqlite://").unwrap());
            eventually("every SQLite connection closed", || !std::path::Path::new(&wal).exists()).await;
        }
        Kind::Redis | Kind::RedisCluster | Kind::RedisSentinel => {
            eventually("every Redis connection closed", || h.redis_connections() == 0).await;
        }
    }
}

for_each_backend! {
    async fn dropping_every_handle_stops_every_background_task(h: Harness) {
        let tasks_before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        let marker = Arc::new(());
        let d = exercise(&h, &marker).await;
        assert!(tokio::runtime::Handle::current().metrics().num_alive_tasks() > tasks_before);
        assert_running(&h);
        drop(d); // no shutdown: dropping is enough
        assert_all_stopped(&h, tasks_before, &marker).await;
    }

    async fn shutdown_then_drop_stops_every_background_task(h: Harness) {
        let tasks_before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        let marker = Arc::new(());
        let d = exercise(&h, &marker).await;
        d.shutdown().await.unwrap();
        drop(d);
        assert_all_stopped(&h, tasks_before, &marker).await;
    }
}

/// A Redis store whose server died: dropping the handle still stops the
/// sweeper and the client's reconnect attempts.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_redis_handle_whose_server_died_stops_every_background_task() {
    let Some(mut server) = support::redis_server::RedisServer::start() else { return };
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let d = LiveDict::<u64>::builder()
        .url(&format!("{}?namespace=dead&command_timeout_ms=200", server.url()))
        .request_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    d.set_with_ttl("k", 1, Duration::from_millis(100)).await.unwrap();
    let g = d.lock("l", Duration::from_secs(1)).await.unwrap();
    server.kill();
    assert!(d.get("k").await.is_err());
    drop(g); // its release cannot reach the server
    drop(d);
    // Within about 1 s (a command timeout, then each client's bounded close):
    // fred's routing tasks are aborted if they keep reconnecting after QUIT.
    eventually("every background task stopped", || metrics.num_alive_tasks() <= tasks_before).await;
}
