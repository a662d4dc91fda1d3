//! The Redis near cache (`near_cache_ms`): hot reads kept in process, with bounded staleness.
#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use livedict::{Error, LiveDict};
use support::Harness;

/// `GET` commands the Redis servers behind `h` have run (scripts' included).
fn gets(h: &Harness) -> u64 {
    support::redis_server::command_calls(&h.redis_ports(), "get")
}

/// The port of the node that holds `key` (the only node on a single server).
fn owner_of(h: &Harness, key: &str) -> u16 {
    h.redis_ports()
        .into_iter()
        .find(|&port| {
            // A node that does not own the key's slot answers MOVED (an error).
            support::redis_server::command(port, &["EXISTS", key]).is_ok()
        })
        .expect("a node owns the key")
}

/// Waits until reads of `key` through `d` are served from its near cache.
async fn eventually_cached(h: &Harness, d: &LiveDict<u32>, key: &str) {
    let started = std::time::Instant::now();
    loop {
        let before = gets(h);
        for _ in 0..20 {
            d.get(key).await.unwrap();
        }
        if gets(h) - before < 5 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{key}: reads still go to Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `d` reads `want` for `key` (far less than any near-cache bound used here).
async fn eventually_reads(d: &LiveDict<u32>, key: &str, want: Option<u32>) {
    let started = std::time::Instant::now();
    loop {
        let got = d.get(key).await.unwrap();
        if got == want {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{key}: still {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A store on the harness's namespace with these extra URL options.
async fn open_with(h: &Harness, options: &str) -> LiveDict<u32> {
    LiveDict::open(&format!("{}&{options}", h.url())).await.unwrap()
}

/// Each test on a single server (`<name>`) and on a local 3-master cluster (`cluster::<name>`).
macro_rules! redis_test {
    ($(async fn $name:ident($h:ident: Harness) $body:block)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some($h) = Harness::redis() else { return };
                $body
            }
        )*
        mod cluster {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some($h) = tokio::task::spawn_blocking(Harness::redis_cluster).await.unwrap() else {
                        return;
                    };
                    $body
                }
            )*
        }
    };
}

redis_test! {
    async fn a_read_is_served_from_the_near_cache_without_a_round_trip(h: Harness) {
        let near = open_with(&h, "near_cache_ms=30000").await;
        near.set("k", 1).await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), Some(1)); // fills the near cache
        let before = gets(&h);
        for _ in 0..100 {
            assert_eq!(near.get("k").await.unwrap(), Some(1));
        }
        // No TTL'd keys, so the sweepers' scripts read nothing either.
        assert!(gets(&h) - before < 10, "reads went to Redis");
    }

    async fn a_change_by_another_process_is_seen_without_waiting_for_the_bound(h: Harness) {
        // A bound of a minute: only Redis's invalidation can make these pass.
        let near = open_with(&h, "near_cache_ms=60000").await;
        let other = h.open::<u32>().await; // another process, without a near cache
        near.set("k", 1).await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), Some(1));
        other.set("k", 2).await.unwrap();
        eventually_reads(&near, "k", Some(2)).await;
        assert!(other.delete("k").await.unwrap());
        eventually_reads(&near, "k", None).await;
        // A TTL written elsewhere: the value is refetched with its deadline and gone after it.
        other.set("t", 1).await.unwrap();
        assert_eq!(near.get("t").await.unwrap(), Some(1));
        other.set_with_ttl("t", 5, h.short_ttl()).await.unwrap();
        eventually_reads(&near, "t", Some(5)).await;
        eventually_reads(&near, "t", None).await;
    }

    async fn a_plain_redis_client_writing_the_key_invalidates_it(h: Harness) {
        let near = open_with(&h, "near_cache_ms=60000").await;
        near.set("k", 1).await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), Some(1));
        // What `redis-cli SET` would do: a value without deadline is `~` then the JSON.
        let (server, namespace) = h.redis_parts();
        let key = livedict::backend::RedisConfig::new(&server).namespace(&namespace).value_key("k");
        let port = owner_of(&h, &key);
        support::redis_server::command(port, &["SET", &key, "~7"]).unwrap();
        eventually_reads(&near, "k", Some(7)).await;
        support::redis_server::command(port, &["DEL", &key]).unwrap();
        eventually_reads(&near, "k", None).await;
    }

    async fn writes_through_the_store_are_read_at_once(h: Harness) {
        let d = open_with(&h, "near_cache_ms=30000").await;
        d.set("k", 1).await.unwrap();
        assert_eq!(d.get("k").await.unwrap(), Some(1));
        d.set("k", 2).await.unwrap();
        assert_eq!(d.get("k").await.unwrap(), Some(2));
        assert!(d.delete("k").await.unwrap());
        assert_eq!(d.get("k").await.unwrap(), None);
        d.set("a", 1).await.unwrap();
        d.set("b", 2).await.unwrap();
        assert_eq!(d.get("a").await.unwrap(), Some(1));
        assert_eq!(d.get("b").await.unwrap(), Some(2));
        d.clear().await.unwrap();
        assert_eq!(d.get("a").await.unwrap(), None);
        assert_eq!(d.get("b").await.unwrap(), None);
    }

    async fn a_cached_value_is_never_returned_past_its_deadline(h: Harness) {
        let d = open_with(&h, "near_cache_ms=30000").await;
        d.set_with_ttl("k", 1, h.short_ttl()).await.unwrap();
        assert_eq!(d.get("k").await.unwrap(), Some(1));
        tokio::time::sleep(h.short_ttl() + Duration::from_millis(20)).await;
        assert_eq!(d.get("k").await.unwrap(), None);
        // A deadline moved earlier through this store counts as a write.
        d.set("p", 1).await.unwrap();
        assert_eq!(d.get("p").await.unwrap(), Some(1));
        d.expire("p", h.short_ttl()).await.unwrap();
        assert_eq!(d.get("p").await.unwrap(), Some(1));
        tokio::time::sleep(h.short_ttl() + Duration::from_millis(20)).await;
        assert_eq!(d.get("p").await.unwrap(), None);
    }

    async fn reads_under_a_lock_see_the_current_value(h: Harness) {
        let near = open_with(&h, "near_cache_ms=30000").await;
        let other = h.open::<u32>().await;
        near.set("k", 1).await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), Some(1));
        other.set("k", 2).await.unwrap();
        let guard = near.lock("k", Duration::from_secs(5)).await.unwrap();
        assert_eq!(guard.get().await.unwrap(), Some(2), "the read under the lock went to Redis");
        guard.set(3).await.unwrap();
        guard.unlock().await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), Some(3));
    }

    async fn increments_from_two_near_cached_processes_are_exact(h: Harness) {
        let (a, b) = (open_with(&h, "near_cache_ms=30000").await, open_with(&h, "near_cache_ms=30000").await);
        let mut joins = Vec::new();
        for i in 0..20 {
            let d = if i % 2 == 0 { a.clone() } else { b.clone() };
            joins.push(tokio::spawn(async move {
                for _ in 0..5 {
                    assert!(d.get("n").await.is_ok()); // keep the near cache busy
                    d.incr("n", 1).await.unwrap();
                }
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
        assert_eq!(h.open::<u32>().await.get("n").await.unwrap(), Some(100));
    }

    async fn a_reset_tracking_connection_flushes_the_cache(h: Harness) {
        let near = open_with(&h, "near_cache_ms=60000").await;
        let other = h.open::<u32>().await;
        near.set("k", 1).await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), Some(1));
        // Kill every connection that has tracking on: pushes sent meanwhile would be lost.
        let mut killed = 0;
        for port in h.redis_ports() {
            let list = support::redis_server::command(port, &["CLIENT", "LIST"]).unwrap_or_default();
            for line in list.lines().filter(|l| l.split_whitespace().any(|f| f.starts_with("flags=") && f.contains('t'))) {
                if let Some(id) = line.split_whitespace().find_map(|f| f.strip_prefix("id=")) {
                    killed += usize::from(support::redis_server::command(port, &["CLIENT", "KILL", "ID", id]).is_ok());
                }
            }
        }
        assert!(killed > 0, "no tracking connection found");
        other.set("k", 2).await.unwrap();
        eventually_reads(&near, "k", Some(2)).await;
        // Tracking is on again: reads are cached again, and later writes are seen.
        eventually_cached(&h, &near, "k").await;
        other.set("k", 3).await.unwrap();
        eventually_reads(&near, "k", Some(3)).await;
    }

    async fn shutdown_closes_the_tracking_connections_too(h: Harness) {
        let near = open_with(&h, "near_cache_ms=60000").await;
        near.set("k", 1).await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), Some(1));
        near.shutdown().await.unwrap();
        let started = std::time::Instant::now();
        while h.redis_connections() > 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "connections left open after shutdown");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn a_zero_bound_is_rejected(h: Harness) {
        let r = LiveDict::<u32>::open(&format!("{}&near_cache_ms=0", h.url())).await;
        assert!(matches!(r, Err(Error::InvalidUrl { .. })));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_nothing_stale_is_served() {
    let Some(mut server) = support::redis_server::RedisServer::start() else { return };
    let url = format!("{}?namespace=restart", server.url());
    let near = LiveDict::<u32>::open(&format!("{url}&near_cache_ms=60000")).await.unwrap();
    near.set("k", 1).await.unwrap();
    assert_eq!(near.get("k").await.unwrap(), Some(1));
    // The restarted server has no data (no persistence): `k` is gone, and the cache must know.
    let mut server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let other = LiveDict::<u32>::open(&url).await.unwrap();
    let started = std::time::Instant::now();
    while near.get("k").await.ok() != Some(None) {
        assert!(started.elapsed() < Duration::from_secs(20), "a stale value survived the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.set("k", 2).await.unwrap();
    eventually_reads(&near, "k", Some(2)).await;
    other.set("k", 3).await.unwrap();
    eventually_reads(&near, "k", Some(3)).await;
    server.kill();
}
