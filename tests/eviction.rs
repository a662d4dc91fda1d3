//! Redis under memory pressure: on a real server (and a local cluster) with a
//! small `maxmemory`, every entry written ends in exactly one event or is
//! still readable, nothing panics or hangs, and a lock whose key Redis
//! evicted gives `LockLost`. `eviction=refuse` refuses an evicting server.
#![cfg(feature = "redis")]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, KeysInterface};
use livedict::{Callback, Error, Event, EventKind, LiveDict};
use support::redis_server::{self, RedisCluster, RedisServer};

/// Entries of each kind written (2 KiB values: ~6 MB against a 2 MB budget).
const N: usize = 1500;
const TTL: Duration = Duration::from_millis(2500);

/// The servers behind one test's store.
struct Target {
    url: String,
    ports: Vec<u16>,
    _server: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

impl Target {
    fn server(policy: &str) -> Option<Target> {
        let server = RedisServer::start()?;
        let target = Target {
            url: format!("{}?namespace=mem", server.url()),
            ports: vec![server.port()],
            _server: Some(server),
            _cluster: None,
        };
        target.limit(policy);
        Some(target)
    }

    fn cluster(policy: &str) -> Option<Target> {
        let cluster = RedisCluster::start(3, 0)?;
        let target = Target {
            url: format!("{}&namespace=mem", cluster.url()),
            ports: cluster.nodes().iter().map(|n| n.port()).collect(),
            _server: None,
            _cluster: Some(cluster),
        };
        target.limit(policy);
        Some(target)
    }

    /// `maxmemory` = what each server uses now + 2 MB, with `policy`.
    fn limit(&self, policy: &str) {
        for &port in &self.ports {
            let info = redis_server::command(port, &["INFO", "memory"]).unwrap();
            let used: u64 = redis_server::info_field(&info, "used_memory").unwrap().parse().unwrap();
            let max = (used + 2_000_000).to_string();
            redis_server::command(port, &["CONFIG", "SET", "maxmemory", &max]).unwrap();
            redis_server::command(port, &["CONFIG", "SET", "maxmemory-policy", policy]).unwrap();
        }
    }

    fn url_with(&self, options: &str) -> String {
        if options.is_empty() { self.url.clone() } else { format!("{}&{options}", self.url) }
    }

    async fn raw(&self) -> fred::clients::Client {
        let url = self.url.split("&namespace").next().unwrap().split("?namespace").next().unwrap();
        let config = fred::types::config::Config::from_url(url).unwrap();
        let client = fred::types::Builder::from_config(config).build().unwrap();
        client.init().await.unwrap();
        client
    }
}

/// Per key: the kind of each Expire / Evict event and whether it had a value.
type ByKey = HashMap<String, Vec<(EventKind, bool)>>;

/// Every Expire and Evict event, by key.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<ByKey>>);

impl Seen {
    fn watch(d: &LiveDict<String>) -> Seen {
        let seen = Seen::default();
        for kind in [EventKind::Expire, EventKind::Evict] {
            let s = seen.clone();
            d.register_callback(
                kind,
                Callback::new(move |ev: &Event<String>| {
                    s.0.lock()
                        .unwrap()
                        .entry(ev.key().to_owned())
                        .or_default()
                        .push((ev.kind(), ev.value().is_some()))
                }),
            )
            .unwrap();
        }
        seen
    }

    fn count(&self, key: &str) -> usize {
        self.0.lock().unwrap().get(key).map_or(0, Vec::len)
    }

    fn evictions(&self) -> usize {
        self.0.lock().unwrap().values().flatten().filter(|(k, _)| *k == EventKind::Evict).count()
    }
}

/// Writes N TTL'd and N plain entries (2 KiB each) past the memory limit;
/// returns the keys whose write succeeded (under `noeviction` the rest fail).
async fn fill(d: &LiveDict<String>) -> (Vec<String>, Vec<String>) {
    let value = "x".repeat(2048);
    let (mut ttl, mut plain) = (Vec::new(), Vec::new());
    for i in 0..N {
        let k = format!("t{i}");
        match d.set_with_ttl(&k, value.clone(), TTL).await {
            Ok(()) => ttl.push(k),
            Err(Error::Backend { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
        let k = format!("p{i}");
        match d.set(&k, value.clone()).await {
            Ok(()) => plain.push(k),
            Err(Error::Backend { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    (ttl, plain)
}

/// Waits until every TTL'd key has had an event and every plain key is
/// readable or has had one, then checks that no key had two and that
/// `stats().evictions` counts the Evict events. Returns the Evict count.
async fn account(d: &LiveDict<String>, seen: &Seen, ttl: &[String], plain: &[String]) -> usize {
    tokio::time::sleep(TTL).await;
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let mut open = ttl.iter().filter(|k| seen.count(k) == 0).count();
        for k in plain {
            if seen.count(k) == 0 && d.get(k).await.unwrap().is_none() {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        assert!(Instant::now() < give_up, "{open} entries left without an event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Late duplicates would show up by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for k in ttl {
        assert_eq!(seen.count(k), 1, "{k}: {:?}", seen.0.lock().unwrap().get(k));
    }
    for k in plain {
        let readable = d.get(k).await.unwrap().is_some();
        assert_eq!(
            seen.count(k) + usize::from(readable),
            1,
            "{k}: readable {readable}, events {}",
            seen.count(k)
        );
    }
    let evictions = seen.evictions();
    assert_eq!(d.stats().evictions, evictions as u64);
    evictions
}

async fn every_entry_accounted_for(target: Target, options: &str, expect_evictions: bool) {
    let d = LiveDict::<String>::open(&target.url_with(options)).await.unwrap();
    let seen = Seen::watch(&d);
    let (ttl, plain) = fill(&d).await;
    assert!(!ttl.is_empty() && !plain.is_empty());
    let evictions = account(&d, &seen, &ttl, &plain).await;
    if expect_evictions {
        assert!(evictions > 0, "the test evicted nothing");
    } else {
        assert_eq!(evictions, 0);
    }
    // The store keeps working: reads, deletes, and writes once memory is back.
    for k in &plain {
        d.delete(k).await.unwrap();
    }
    d.set("after", "ok".into()).await.unwrap();
    assert_eq!(d.get("after").await.unwrap().as_deref(), Some("ok"));
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allkeys_lru_reports_every_eviction() {
    let Some(target) = Target::server("allkeys-lru") else { return };
    every_entry_accounted_for(target, "", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_lru_reports_evicted_values_that_carry_a_redis_ttl() {
    // With grace_ms every TTL'd value has a Redis TTL, so volatile-lru may evict it.
    let Some(target) = Target::server("volatile-lru") else { return };
    every_entry_accounted_for(target, "grace_ms=600000", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noeviction_fails_writes_and_loses_nothing() {
    let Some(target) = Target::server("noeviction") else { return };
    every_entry_accounted_for(target, "", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notifications_evicted_ttld_entries_are_reported_at_their_deadline() {
    // volatile-lru evicts only keys with a Redis TTL: here the values (grace_ms), never the deadline index.
    let Some(target) = Target::server("volatile-lru") else { return };
    let d =
        LiveDict::<String>::open(&target.url_with("notify_evictions=false&grace_ms=600000")).await.unwrap();
    let seen = Seen::watch(&d);
    let (ttl, _plain) = fill(&d).await;
    let reply = redis_server::command(target.ports[0], &["CONFIG", "GET", "notify-keyspace-events"]).unwrap();
    let flags = reply.lines().nth(1).unwrap_or("");
    assert!(!flags.contains('e'), "livedict changed the server's configuration: {flags}");
    account(&d, &seen, &ttl, &[]).await;
    assert!(seen.evictions() > 0, "the test evicted nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allkeys_lru_on_a_cluster_reports_every_eviction() {
    let Some(target) = Target::cluster("allkeys-lru") else { return };
    every_entry_accounted_for(target, "", true).await;
}

/// Takes `key`'s lock, then floods the lock key's node with other keys (of
/// the same hash tag) until Redis evicts the lock key: every guarded write
/// then fails with `LockLost`, also after another store took the lock.
async fn evicted_lock_is_lost(target: Target, junk_ttl: bool) {
    let d = LiveDict::<String>::open(&target.url).await.unwrap();
    let other = LiveDict::<String>::open(&target.url).await.unwrap();
    let guard = d.lock("L", Duration::from_secs(5)).await.unwrap();
    guard.set("mine".into()).await.unwrap();
    let vkey = livedict::backend::RedisConfig::new(&target.url).namespace("mem").value_key("L");
    let lock_key = vkey.replace("}:v:", "}:l:");
    let tag = &vkey[vkey.find('{').unwrap()..=vkey.find('}').unwrap()];
    let raw = target.raw().await;
    let junk = "j".repeat(10_000);
    let mut i = 0u64;
    while raw.exists::<i64, _>(&lock_key).await.unwrap() == 1 {
        assert!(i < 100_000, "Redis never evicted the lock key");
        for _ in 0..20 {
            let key = format!("junk:{tag}:{i}");
            let expire = junk_ttl.then_some(fred::types::Expiration::EX(3600));
            let _: Result<(), _> = raw.set(&key, junk.as_str(), expire, None, false).await;
            i += 1;
        }
    }
    assert!(matches!(guard.set("again".into()).await, Err(Error::LockLost { .. })));
    // Another holder now: the first one's guarded writes still fail, the new one's work.
    let second = other.lock("L", Duration::from_secs(5)).await.unwrap();
    assert!(matches!(guard.set("again".into()).await, Err(Error::LockLost { .. })));
    assert!(matches!(guard.delete().await, Err(Error::LockLost { .. })));
    second.set("theirs".into()).await.unwrap();
    drop(second);
    let _ = raw.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allkeys_lru_evicted_lock_gives_lock_lost() {
    let Some(target) = Target::server("allkeys-lru") else { return };
    evicted_lock_is_lost(target, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_lru_evicted_lock_gives_lock_lost() {
    let Some(target) = Target::server("volatile-lru") else { return };
    evicted_lock_is_lost(target, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_evicted_lock_gives_lock_lost() {
    let Some(target) = Target::cluster("allkeys-lru") else { return };
    evicted_lock_is_lost(target, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_names_an_evicting_policy_and_opens_on_noeviction() {
    let Some(target) = Target::server("allkeys-lru") else { return };
    let err = LiveDict::<String>::open(&target.url_with("eviction=refuse")).await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("allkeys-lru"), "{err}");
    redis_server::command(target.ports[0], &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).unwrap();
    let d = LiveDict::<String>::open(&target.url_with("eviction=refuse")).await.unwrap();
    d.set("k", "v".into()).await.unwrap();
    assert!(matches!(
        LiveDict::<String>::open(&target.url_with("eviction=sometimes")).await,
        Err(Error::InvalidUrl { .. })
    ));
}
