//! High availability with real processes on loopback: a Redis Cluster of 3
//! masters with 1 replica each, and a master + replica watched by 3
//! Sentinels. Masters and replicas are SIGKILLed under load.
#![cfg(feature = "redis")]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livedict::{Callback, Event, EventKind, LiveDict};
use support::redis_server::{RedisCluster, RedisSentinel};

/// What a writer saw: acknowledged writes, and when writes failed.
#[derive(Default)]
struct Log {
    acked: Vec<u64>,
    failures: Vec<Instant>,
    last_error: Option<String>,
}

/// Writes `w<i>` = i one after another until `stop`.
fn writer(d: LiveDict<u64>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Log> {
    tokio::spawn(async move {
        let mut log = Log::default();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match d.set(format!("w{i}"), i).await {
                Ok(()) => log.acked.push(i),
                Err(e) => {
                    log.failures.push(Instant::now());
                    log.last_error = Some(e.to_string());
                }
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        log
    })
}

/// Runs the writer across `kill`, until writes have succeeded for 2 s in a row
/// after the last failure (at most 30 s). Returns the log and how long after
/// the kill the last write failed (zero if none did).
async fn write_across(d: &LiveDict<u64>, kill: impl FnOnce()) -> (Log, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = writer(d.clone(), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    kill();
    // Poll the shared log length through a second handle: a failure resets the quiet period.
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    let probe = d.clone();
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A cheap probe write on a key of its own tells whether the store serves.
        let ok = probe.set("probe", 1).await.is_ok();
        if !ok {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(2) && started.elapsed() > Duration::from_secs(3)
        {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let log = task.await.unwrap();
    let last_failure = log.failures.iter().max().map_or(Duration::ZERO, |t| t.duration_since(killed_at));
    (log, last_failure)
}

/// Every acknowledged write reads back; returns how many did not.
async fn lost(d: &LiveDict<u64>, acked: &[u64]) -> usize {
    let mut lost = 0;
    for &i in acked {
        if d.get(format!("w{i}")).await.unwrap() != Some(i) {
            lost += 1;
        }
    }
    lost
}

/// Records Expire events by key.
fn expire_counter(d: &LiveDict<u64>) -> Arc<Mutex<HashMap<String, Vec<Option<u64>>>>> {
    let seen = Arc::new(Mutex::new(HashMap::<String, Vec<Option<u64>>>::new()));
    let s = Arc::clone(&seen);
    d.register_callback(
        EventKind::Expire,
        Callback::new(move |ev: &Event<u64>| {
            s.lock().unwrap().entry(ev.key().to_owned()).or_default().push(ev.value().copied());
        }),
    )
    .unwrap();
    seen
}

/// A master SIGKILLed under load, with `replica_acks=1` on a cluster of 3
/// masters with 2 replicas each (after the failover the new master still has
/// a replica to acknowledge writes): writes resume within node-timeout + 5 s
/// even though the killed node is the URL's only seed, no acknowledged write
/// is lost, and expirations due before and after the failover are each
/// reported exactly once, with their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_follows_a_master_failover_and_keeps_every_acknowledged_write() {
    let Some(mut cluster) =
        tokio::task::spawn_blocking(|| RedisCluster::start_with_timeout(3, 2, 2000)).await.unwrap()
    else {
        return;
    };
    let url = format!("{}?namespace=ha&replica_acks=1&command_timeout_ms=2000", cluster.url_via(0));
    let d = LiveDict::<u64>::open(&url).await.unwrap();
    let seen = expire_counter(&d);
    // Due long before the kill, and well after the failover.
    for j in 0..100u64 {
        d.set_with_ttl(format!("early{j}"), j, Duration::from_millis(100)).await.unwrap();
        d.set_with_ttl(format!("late{j}"), j, Duration::from_millis(12_000)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    // A fence taken before the failover, on every shard (keys spread over all of them).
    let fences_before: Vec<u64> = {
        let mut v = Vec::new();
        for j in 0..32 {
            let g = d.lock(format!("f{j}"), Duration::from_secs(5)).await.unwrap();
            v.push(g.fence());
            g.unlock().await.unwrap();
        }
        v
    };
    let master = cluster.current_masters()[0];
    let (log, outage) = write_across(&d, || cluster.node_mut(master).kill()).await;
    // Fences never go backwards, also on the shards whose master was replaced.
    for (j, before) in fences_before.iter().enumerate() {
        let g = d.lock(format!("f{j}"), Duration::from_secs(5)).await.unwrap();
        assert!(g.fence() > *before, "fence of f{j} went from {before} to {}", g.fence());
        g.unlock().await.unwrap();
    }
    eprintln!(
        "cluster failover (replica_acks=1): last failed write {outage:?} after the kill; {} acked, {} failed; last error: {:?}",
        log.acked.len(),
        log.failures.len(),
        log.last_error
    );
    assert!(outage <= Duration::from_secs(7), "writes failed until {outage:?} after the kill");
    if let Some(e) = &log.last_error {
        // Errors name their cause, not only the operation.
        assert!(e.contains(": "), "{e}");
    }
    assert_eq!(lost(&d, &log.acked).await, 0, "acknowledged writes lost with replica_acks=1");
    // Every expiration once, with its value.
    let started = Instant::now();
    while seen.lock().unwrap().len() < 200 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    for j in 0..100u64 {
        for key in [format!("early{j}"), format!("late{j}")] {
            assert_eq!(seen.get(&key), Some(&vec![Some(j)]), "{key}");
        }
    }
    d.shutdown().await.unwrap();
}

/// Without `replica_acks` the store follows the failover the same way; writes
/// acknowledged just before the kill may be lost (asynchronous replication):
/// counted and printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replica_acks_a_failover_costs_only_the_last_unreplicated_writes() {
    let Some(mut cluster) =
        tokio::task::spawn_blocking(|| RedisCluster::start_with_timeout(3, 1, 2000)).await.unwrap()
    else {
        return;
    };
    let url = format!("{}&namespace=async&command_timeout_ms=2000", cluster.url());
    let d = LiveDict::<u64>::open(&url).await.unwrap();
    let master = cluster.current_masters()[1];
    let (log, outage) = write_across(&d, || cluster.node_mut(master).kill()).await;
    let lost = lost(&d, &log.acked).await;
    eprintln!(
        "cluster failover (no replica_acks): last failed write {outage:?} after the kill; {} acked, {lost} of them lost",
        log.acked.len()
    );
    assert!(outage <= Duration::from_secs(7), "writes failed until {outage:?} after the kill");
    d.shutdown().await.unwrap();
}

/// A replica SIGKILLed: nothing the store does fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_dying_has_no_effect() {
    let Some(mut cluster) =
        tokio::task::spawn_blocking(|| RedisCluster::start_with_timeout(3, 1, 2000)).await.unwrap()
    else {
        return;
    };
    let d = LiveDict::<u64>::open(&format!("{}&namespace=rep", cluster.url())).await.unwrap();
    let masters = cluster.current_masters();
    let replica = (0..cluster.nodes().len()).find(|i| !masters.contains(i)).unwrap();
    let (log, outage) = write_across(&d, || cluster.node_mut(replica).kill()).await;
    assert!(log.failures.is_empty(), "{} writes failed ({:?})", log.failures.len(), log.last_error);
    assert_eq!(outage, Duration::ZERO);
    assert_eq!(lost(&d, &log.acked).await, 0);
    d.shutdown().await.unwrap();
}

/// `redis-sentinel://`: the store finds the master through the Sentinels and
/// follows their failover; with `replica_acks=1` (a master and 2 replicas) no
/// acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_store_follows_a_failover() {
    let Some(mut sentinel) = tokio::task::spawn_blocking(|| RedisSentinel::start(2)).await.unwrap() else {
        return;
    };
    let url = format!("{}&namespace=s&replica_acks=1&command_timeout_ms=2000", sentinel.url());
    let d = LiveDict::<u64>::open(&url).await.unwrap();
    let before = sentinel.master_port();
    let (log, outage) = write_across(&d, || sentinel.data[0].kill()).await;
    eprintln!(
        "sentinel failover: last failed write {outage:?} after the kill; {} acked, {} failed",
        log.acked.len(),
        log.failures.len()
    );
    assert_ne!(sentinel.master_port(), before, "the sentinels promoted the replica");
    assert!(outage <= Duration::from_secs(10), "writes failed until {outage:?} after the kill");
    assert_eq!(lost(&d, &log.acked).await, 0, "acknowledged writes lost with replica_acks=1");
    d.shutdown().await.unwrap();
}
