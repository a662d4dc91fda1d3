//! The Redis near cache (`near_cache_ms`): hot reads kept in process, with bounded staleness.
#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use livedict::{Error, LiveDict};
use support::Harness;

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
    async fn a_read_is_served_from_the_near_cache_within_the_bound(h: Harness) {
        let near = open_with(&h, "near_cache_ms=30000").await;
        let other = h.open::<u32>().await; // another process, without a near cache
        near.set("k", 1).await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), Some(1)); // fills the near cache
        other.set("k", 2).await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), Some(1), "served from the near cache, no round trip");
        assert_eq!(other.get("k").await.unwrap(), Some(2));
    }

    async fn a_change_by_another_process_is_seen_after_the_bound(h: Harness) {
        let bound = Duration::from_millis(300);
        let near = open_with(&h, &format!("near_cache_ms={}", bound.as_millis())).await;
        let other = h.open::<u32>().await;
        near.set("k", 1).await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), Some(1));
        other.set("k", 2).await.unwrap();
        tokio::time::sleep(bound + Duration::from_millis(50)).await;
        assert_eq!(near.get("k").await.unwrap(), Some(2), "older than the bound");
    }

    async fn with_shared_events_a_change_elsewhere_drops_the_key_at_once(h: Harness) {
        let near = open_with(&h, "near_cache_ms=60000&share_events=true").await;
        let other = open_with(&h, "share_events=true").await;
        near.set("k", 1).await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), Some(1));
        other.set("k", 2).await.unwrap();
        // Well within the 60 s bound: the event of the other process invalidated it.
        let started = std::time::Instant::now();
        while near.get("k").await.unwrap() != Some(2) {
            assert!(started.elapsed() < Duration::from_secs(10), "the shared event did not invalidate");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(other.delete("k").await.unwrap());
        while near.get("k").await.unwrap().is_some() {
            assert!(started.elapsed() < Duration::from_secs(10), "the shared delete did not invalidate");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
        assert_eq!(near.get("k").await.unwrap(), Some(1), "stale within the bound");
        assert_eq!(near.incr("k", 1).await.unwrap(), 3, "the read under the lock went to Redis");
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

    async fn a_zero_bound_is_rejected(h: Harness) {
        let r = LiveDict::<u32>::open(&format!("{}&near_cache_ms=0", h.url())).await;
        assert!(matches!(r, Err(Error::InvalidUrl { .. })));
    }
}
