//! Redis-only behaviour: precision, several instances, restarts, outages, corruption.
#![cfg(feature = "redis")]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, KeysInterface};
use livedict::{Callback, Error, Event, EventKind, LiveDict};
use support::redis_server::RedisServer;

fn url(server: &RedisServer, ns: &str) -> String {
    format!("{}?namespace={ns}", server.url())
}

async fn raw_client(server: &RedisServer) -> fred::clients::Client {
    let config = fred::types::config::Config::from_url(&server.url()).unwrap();
    let client = fred::types::Builder::from_config(config).build().unwrap();
    client.init().await.unwrap();
    client
}

/// `(key, value)` of every Expire event one instance saw.
type Expired = Arc<Mutex<Vec<(String, Option<u64>)>>>;

/// Collects the Expire events of one instance.
fn collect_expires(d: &LiveDict<u64>) -> Expired {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    d.register_callback(
        EventKind::Expire,
        Callback::new(move |ev: &Event<u64>| {
            s.lock().unwrap().push((ev.key().to_owned(), ev.value().copied()))
        }),
    )
    .unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_second_ttls_are_millisecond_precise() {
    let Some(server) = RedisServer::start() else { return };
    let d = LiveDict::<u64>::open(&url(&server, "p")).await.unwrap();
    let set_at = Instant::now();
    d.set_with_ttl("k", 1, Duration::from_millis(750)).await.unwrap();
    let raw = raw_client(&server).await;
    let vkey = livedict::backend::RedisConfig::new(&server.url()).namespace("p").value_key("k");
    // The value outlives its deadline until a sweeper claims it (no Redis expiry by default).
    let pttl: i64 = raw.pttl(&vkey).await.unwrap();
    assert_eq!(pttl, -1, "PTTL {pttl}");
    // With grace_ms, Redis drops it that long after the deadline if nobody claims it.
    let g = LiveDict::<u64>::open(&format!("{}&grace_ms=60000", url(&server, "g"))).await.unwrap();
    g.set_with_ttl("k", 1, Duration::from_millis(750)).await.unwrap();
    let gkey = livedict::backend::RedisConfig::new(&server.url()).namespace("g").value_key("k");
    let pttl: i64 = raw.pttl(&gkey).await.unwrap();
    assert!((60_700..=60_750).contains(&pttl), "PTTL {pttl}");
    // Millisecond precision: what is left is 750 ms minus the time that passed (± 1 ms), whatever that was.
    let left = d.ttl("k").await.unwrap().unwrap();
    let after = set_at.elapsed();
    assert!(left <= Duration::from_millis(750), "{left:?}");
    assert!(
        left + after + Duration::from_millis(2) >= Duration::from_millis(750),
        "{left:?} after {after:?}"
    );
    d.set_with_ttl("short", 2, Duration::from_millis(40)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(d.get("short").await.unwrap(), None);
    // The value is readable JSON for redis-cli users, after its 8-digit deadline header.
    let stored: String = raw.get(&vkey).await.unwrap();
    assert_eq!(stored.len(), 9, "{stored}");
    assert!(stored.ends_with('1'), "{stored}");
    d.set("plain", 7).await.unwrap();
    let plain = livedict::backend::RedisConfig::new(&server.url()).namespace("p").value_key("plain");
    assert_eq!(raw.get::<String, _>(&plain).await.unwrap(), "~7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_expiration_exactly_once_with_its_value() {
    two_instances_deliver_each_expiration_once("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_expiration_exactly_once_at_least_once() {
    two_instances_deliver_each_expiration_once("&expire_delivery=at_least_once&expire_lease_ms=300").await;
}

async fn two_instances_deliver_each_expiration_once(options: &str) {
    let Some(server) = RedisServer::start() else { return };
    let a = LiveDict::<u64>::open(&format!("{}{options}", url(&server, "x"))).await.unwrap();
    let b = LiveDict::<u64>::open(&format!("{}{options}", url(&server, "x"))).await.unwrap();
    let (seen_a, seen_b) = (collect_expires(&a), collect_expires(&b));
    let n = 2000u64;
    for i in 0..n {
        let d = if i % 2 == 0 { &a } else { &b };
        d.set_with_ttl(format!("k{i}"), i, Duration::from_millis(300)).await.unwrap();
    }
    let started = Instant::now();
    while seen_a.lock().unwrap().len() + seen_b.lock().unwrap().len() < n as usize {
        assert!(started.elapsed() < Duration::from_secs(10), "not all expirations delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Duplicates would arrive by now (also redeliveries: the lease is 300 ms).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let all: Vec<_> = seen_a.lock().unwrap().iter().chain(seen_b.lock().unwrap().iter()).cloned().collect();
    assert_eq!(all.len(), n as usize);
    let unique: HashSet<_> = all.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(unique.len(), n as usize, "no duplicates");
    for (k, v) in all {
        assert_eq!(Some(k[1..].parse::<u64>().unwrap()), v, "event carries the value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_the_exit_of_the_instance_that_set_them() {
    let Some(server) = RedisServer::start() else { return };
    let watcher = LiveDict::<u64>::open(&url(&server, "e")).await.unwrap();
    let seen = collect_expires(&watcher);
    {
        let setter = LiveDict::<u64>::open(&url(&server, "e")).await.unwrap();
        for i in 0..100 {
            setter.set_with_ttl(format!("k{i}"), i, Duration::from_millis(200)).await.unwrap();
        }
        setter.shutdown().await.unwrap();
    }
    let started = Instant::now();
    while seen.lock().unwrap().len() < 100 {
        assert!(started.elapsed() < Duration::from_secs(5), "only {} events", seen.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.lock().unwrap().iter().all(|(_, v)| v.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_handle_recovers_after_a_server_restart_without_losing_acknowledged_writes() {
    let Some(mut server) = RedisServer::start_with(true) else { return };
    let d = LiveDict::<u64>::builder()
        .url(&url(&server, "r"))
        .request_timeout(Duration::from_secs(20))
        .build()
        .await
        .unwrap();
    let writer = {
        let d = d.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = 0;
            for i in 0..3000u64 {
                match d.set(format!("k{i}"), i).await {
                    Ok(()) => acked.push(i),
                    Err(Error::Backend { .. } | Error::Timeout { .. }) => failed += 1,
                    Err(e) => panic!("unexpected error {e}"),
                }
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (acked, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Keep the restarted server alive until the end of the test.
    let _server = tokio::task::spawn_blocking(move || {
        server.kill();
        std::thread::sleep(Duration::from_millis(300));
        server.restart();
        server
    })
    .await
    .unwrap();
    let (acked, failed) = writer.await.unwrap();
    assert!(!acked.is_empty());
    for i in &acked {
        assert_eq!(
            d.get(format!("k{i}")).await.unwrap(),
            Some(*i),
            "acknowledged write k{i} lost ({failed} failed)"
        );
    }
    d.set("after", 1).await.unwrap();
    assert_eq!(d.get("after").await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_for_good_gives_backend_errors_and_shutdown_completes() {
    let Some(mut server) = RedisServer::start() else { return };
    let d = LiveDict::<u64>::builder()
        .url(&format!("{}&command_timeout_ms=500", url(&server, "g")))
        .request_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    d.set("k", 1).await.unwrap();
    server.kill();
    let started = Instant::now();
    let err = d.get("k").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. } | Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(d.set("k", 2).await, Err(Error::Backend { .. } | Error::Timeout { .. })));
    tokio::time::timeout(Duration::from_secs(10), d.shutdown()).await.expect("shutdown hangs").ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_increments_across_instances_are_exact() {
    let Some(server) = RedisServer::start() else { return };
    let a = LiveDict::<u64>::open(&url(&server, "l")).await.unwrap();
    let b = LiveDict::<u64>::open(&url(&server, "l")).await.unwrap();
    let run = |d: LiveDict<u64>| {
        tokio::spawn(async move {
            for _ in 0..500 {
                let g = d.lock("counter", Duration::from_secs(30)).await.unwrap();
                let v = g.get().await.unwrap().unwrap_or(0);
                g.set(v + 1).await.unwrap();
                g.unlock().await.unwrap();
            }
        })
    };
    let (x, y) = (run(a.clone()), run(b));
    x.await.unwrap();
    y.await.unwrap();
    assert_eq!(a.get("counter").await.unwrap(), Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_sharing_a_script_call_each_keep_their_lock_check_and_expiry() {
    let Some(server) = RedisServer::start() else { return };
    let a = LiveDict::<u64>::open(&url(&server, "batch")).await.unwrap();
    let b = LiveDict::<u64>::open(&url(&server, "batch")).await.unwrap();
    // Each expiry reaches exactly one instance: its sweeper's claim, or `b`'s set over it.
    let (seen_a, seen_b) = (collect_expires(&a), collect_expires(&b));
    let all = || [&seen_a, &seen_b].iter().flat_map(|s| s.lock().unwrap().clone()).collect::<Vec<_>>();
    for i in 0..50u64 {
        b.set_with_ttl(format!("t{i}"), i, Duration::from_millis(1)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let held = a.lock("held", Duration::from_secs(5)).await.unwrap();
    // 400 concurrent sets from `b` (batched together), one of a key `a` holds locked,
    // 50 over values already past their deadline.
    let blocked = {
        let b = b.clone();
        tokio::spawn(async move { b.set("held", 7).await.unwrap() })
    };
    let sets: Vec<_> = (0..400u64)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                let key = if i < 50 { format!("t{i}") } else { format!("k{i}") };
                b.set(key, i + 1000).await.unwrap();
            })
        })
        .collect();
    for s in sets {
        s.await.unwrap();
    }
    for i in 0..400u64 {
        let key = if i < 50 { format!("t{i}") } else { format!("k{i}") };
        assert_eq!(b.get(&key).await.unwrap(), Some(i + 1000), "{key}");
    }
    assert!(!blocked.is_finished(), "a set went through another instance's lock");
    assert_eq!(b.get("held").await.unwrap(), None);
    held.unlock().await.unwrap();
    blocked.await.unwrap();
    assert_eq!(b.get("held").await.unwrap(), Some(7));
    support::eventually("every expired value reported", || all().len() >= 50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = all();
    got.sort();
    let mut want: Vec<_> = (0..50u64).map(|i| (format!("t{i}"), Some(i))).collect();
    want.sort();
    assert_eq!(got, want, "each expired value reported once, with its value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_holders_lock_frees_at_its_lease_end_and_its_writes_fail() {
    let Some(server) = RedisServer::start() else { return };
    let store = format!("{}&lock_lease_ms=300", url(&server, "v"));
    let a = LiveDict::<u64>::open(&store).await.unwrap();
    let b = LiveDict::<u64>::open(&store).await.unwrap();
    let g = a.lock("k", Duration::from_secs(1)).await.unwrap();
    let fence = g.fence();
    assert!(matches!(b.lock("k", Duration::from_millis(50)).await, Err(Error::LockTimeout { .. })));
    let g2 = b.lock("k", Duration::from_secs(3)).await.unwrap();
    assert!(g2.fence() > fence);
    assert!(matches!(g.set(1).await, Err(Error::LockLost { .. })));
    assert!(matches!(g.renew().await, Err(Error::LockLost { .. })));
    g2.set(2).await.unwrap();
    assert_eq!(a.get("k").await.unwrap(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_value_is_a_decode_error_and_stays_in_redis() {
    let Some(server) = RedisServer::start() else { return };
    let d = LiveDict::<u64>::open(&url(&server, "c")).await.unwrap();
    let raw = raw_client(&server).await;
    let vkey = livedict::backend::RedisConfig::new(&server.url()).namespace("c").value_key("k");
    let _: () = raw.set(&vkey, "~not json", None, None, false).await.unwrap();
    let err = d.get("k").await.unwrap_err();
    assert!(matches!(err, Error::Decode { ref key, .. } if key == "k"), "{err}");
    assert!(matches!(d.items().await, Err(Error::Decode { .. })));
    let still: String = raw.get(&vkey).await.unwrap();
    assert_eq!(still, "~not json");
    // A value without livedict's header is a Decode error too, and stays.
    let _: () = raw.set(&vkey, "no header", None, None, false).await.unwrap();
    assert!(matches!(d.get("k").await, Err(Error::Decode { .. })));
    assert_eq!(raw.get::<String, _>(&vkey).await.unwrap(), "no header");
}

#[tokio::test]
async fn an_unreachable_server_fails_within_the_connect_timeout() {
    // A leased port nothing listens on (no server is started on it).
    let lease = support::redis_server::PortLease::new();
    let port = lease.port();
    let started = Instant::now();
    let err = LiveDict::<u64>::open(&format!("redis://:hunter2@127.0.0.1:{port}/0?connect_timeout_ms=500"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert!(!err.to_string().contains("hunter2"), "password leaked: {err}");
    assert!(err.to_string().contains(&port.to_string()));
}

#[tokio::test]
async fn bad_redis_urls_are_invalid_url_errors() {
    for bad in [
        "redis://:pw@127.0.0.1:99999/0",
        "redis://127.0.0.1:abc",
        "redis://127.0.0.1/0?namespace=bad*ns",
        "redis://127.0.0.1/0?pool_size=many",
        "redis://127.0.0.1/0?whatever=1",
        "redis://",
    ] {
        let err = LiveDict::<u64>::open(bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err}");
        assert!(!err.to_string().contains(":pw@"), "{err}");
    }
}

#[cfg(feature = "redis-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_never_falls_back_to_plaintext() {
    // A plain-TCP server behind a `rediss://` URL: the TLS handshake fails, and
    // open reports it within the connect timeout instead of talking in clear.
    let Some(server) = RedisServer::start() else { return };
    let url = format!("rediss://127.0.0.1:{}/0?namespace=tls&connect_timeout_ms=1000", server.port());
    let started = Instant::now();
    let err = LiveDict::<u64>::open(&url).await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[cfg(not(feature = "redis-tls"))]
#[tokio::test]
async fn rediss_without_the_tls_feature_is_an_invalid_url() {
    let err = LiveDict::<u64>::open("rediss://:secret@127.0.0.1:6379/0").await.unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
}
