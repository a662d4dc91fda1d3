//! TTL semantics, on every backend.

mod support;

use std::time::Duration;

for_each_backend! {
    async fn set_then_get_returns_the_value(h: Harness) {
        let d = h.open::<String>().await;
        d.set("a", "1".into()).await.unwrap();
        assert_eq!(d.get("a").await.unwrap().as_deref(), Some("1"));
        assert!(d.exists("a").await.unwrap());
        assert_eq!(d.get("missing").await.unwrap(), None);
        assert_eq!(d.ttl("a").await.unwrap(), None);
    }

    async fn expired_value_is_never_returned(h: Harness) {
        let d = h.open::<u32>().await;
        d.set_with_ttl("k", 7, h.short_ttl()).await.unwrap();
        assert_eq!(d.get("k").await.unwrap(), Some(7));
        h.pass(h.short_ttl() + Duration::from_millis(20)).await;
        assert_eq!(d.get("k").await.unwrap(), None);
        assert!(!d.exists("k").await.unwrap());
        assert_eq!(d.ttl("k").await.unwrap(), None);
        assert_eq!(d.len().await.unwrap(), 0);
        assert!(d.keys().await.unwrap().is_empty());
        assert!(d.items().await.unwrap().is_empty());
    }

    async fn set_without_ttl_clears_the_previous_deadline(h: Harness) {
        let d = h.open::<u32>().await;
        d.set_with_ttl("k", 1, h.short_ttl()).await.unwrap();
        d.set("k", 2).await.unwrap();
        assert_eq!(d.ttl("k").await.unwrap(), None);
        h.pass(h.short_ttl() + h.grace()).await;
        assert_eq!(d.get("k").await.unwrap(), Some(2));
    }

    async fn the_last_write_decides_the_deadline(h: Harness) {
        let d = h.open::<u32>().await;
        let short = h.short_ttl();
        // Short then long: the short deadline must not remove the new value.
        d.set_with_ttl("a", 1, short).await.unwrap();
        d.set_with_ttl("a", 2, short * 10).await.unwrap();
        // Long then short: the short deadline applies.
        d.set_with_ttl("b", 1, short * 10).await.unwrap();
        d.set_with_ttl("b", 2, short).await.unwrap();
        h.pass(short + h.grace()).await;
        assert_eq!(d.get("a").await.unwrap(), Some(2));
        assert_eq!(d.get("b").await.unwrap(), None);
    }

    async fn ttl_reports_the_remaining_time(h: Harness) {
        let d = h.open::<u32>().await;
        d.set_with_ttl("k", 1, Duration::from_secs(60)).await.unwrap();
        let left = d.ttl("k").await.unwrap().expect("has a deadline");
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(55), "{left:?}");
    }

    async fn expire_and_persist_change_the_deadline(h: Harness) {
        let d = h.open::<u32>().await;
        assert!(!d.expire("missing", h.short_ttl()).await.unwrap());
        assert!(!d.persist("missing").await.unwrap());
        d.set("k", 1).await.unwrap();
        assert!(!d.persist("k").await.unwrap(), "no deadline to drop");
        assert!(d.expire("k", h.short_ttl()).await.unwrap());
        assert!(d.ttl("k").await.unwrap().is_some());
        assert!(d.persist("k").await.unwrap());
        assert_eq!(d.ttl("k").await.unwrap(), None);
        d.set("gone", 2).await.unwrap();
        assert!(d.expire("gone", h.short_ttl()).await.unwrap());
        h.pass(h.short_ttl() + h.grace()).await;
        assert_eq!(d.get("k").await.unwrap(), Some(1));
        assert_eq!(d.get("gone").await.unwrap(), None);
    }

    async fn delete_reports_whether_something_was_removed(h: Harness) {
        let d = h.open::<u32>().await;
        assert!(!d.delete("missing").await.unwrap());
        d.set("k", 1).await.unwrap();
        assert!(d.delete("k").await.unwrap());
        assert!(!d.delete("k").await.unwrap());
        assert_eq!(d.get("k").await.unwrap(), None);
    }

    async fn keys_items_and_len_show_live_entries_only(h: Harness) {
        let d = h.open::<u32>().await;
        for i in 0..5 {
            d.set(format!("live{i}"), i).await.unwrap();
        }
        for i in 0..3 {
            d.set_with_ttl(format!("dying{i}"), i, h.short_ttl()).await.unwrap();
        }
        assert_eq!(d.len().await.unwrap(), 8);
        h.pass(h.short_ttl() + Duration::from_millis(20)).await;
        assert_eq!(d.len().await.unwrap(), 5);
        let mut keys = d.keys().await.unwrap();
        keys.sort();
        assert_eq!(keys, (0..5).map(|i| format!("live{i}")).collect::<Vec<_>>());
        let mut items = d.items().await.unwrap();
        items.sort();
        assert_eq!(items, (0..5).map(|i| (format!("live{i}"), i)).collect::<Vec<_>>());
    }

    async fn many_entries_are_listed_completely(h: Harness) {
        let d = h.open::<u32>().await;
        let n = 2500;
        for i in 0..n {
            d.set(format!("k{i}"), i).await.unwrap();
        }
        assert_eq!(d.len().await.unwrap(), n as usize);
        assert_eq!(d.keys().await.unwrap().len(), n as usize);
        let sum: u64 = d.items().await.unwrap().iter().map(|(_, v)| *v as u64).sum();
        assert_eq!(sum, (0..n as u64).sum::<u64>());
    }

    async fn clear_removes_everything(h: Harness) {
        let d = h.open::<u32>().await;
        d.set("a", 1).await.unwrap();
        d.set_with_ttl("b", 2, Duration::from_secs(60)).await.unwrap();
        d.clear().await.unwrap();
        assert_eq!(d.len().await.unwrap(), 0);
        assert_eq!(d.get("a").await.unwrap(), None);
        assert_eq!(d.get("b").await.unwrap(), None);
        d.set("a", 3).await.unwrap();
        assert_eq!(d.get("a").await.unwrap(), Some(3));
    }

    async fn default_ttl_applies_to_plain_sets(h: Harness) {
        let d = h.builder::<u32>().default_ttl(h.short_ttl()).build().await.unwrap();
        d.set("k", 1).await.unwrap();
        assert!(d.ttl("k").await.unwrap().is_some());
        h.pass(h.short_ttl() + Duration::from_millis(20)).await;
        assert_eq!(d.get("k").await.unwrap(), None);
    }

    async fn structured_values_round_trip(h: Harness) {
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Order { id: u64, items: Vec<String>, note: Option<String> }
        let d = h.open::<Order>().await;
        let o = Order { id: 7, items: vec!["a".into(), "ü€".into()], note: None };
        d.set("o", o.clone()).await.unwrap();
        assert_eq!(d.get("o").await.unwrap(), Some(o));
    }

    async fn operations_after_shutdown_fail_with_closed(h: Harness) {
        let d = h.open::<u32>().await;
        d.set("k", 1).await.unwrap();
        let other = d.clone();
        d.shutdown().await.unwrap();
        assert!(matches!(other.get("k").await, Err(livedict::Error::Closed)));
        assert!(matches!(d.set("k", 2).await, Err(livedict::Error::Closed)));
        assert!(matches!(d.shutdown().await, Err(livedict::Error::Closed)));
    }
}

#[tokio::test(start_paused = true)]
async fn memory_values_survive_until_exactly_their_deadline() {
    let d = livedict::LiveDict::<u32>::open("memory://").await.unwrap();
    d.set_with_ttl("k", 1, Duration::from_millis(1000)).await.unwrap();
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(d.get("k").await.unwrap(), Some(1));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(d.get("k").await.unwrap(), None);
}
