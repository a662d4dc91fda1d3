//! Live event streams (`watch`), on every backend.

mod support;

use std::time::Duration;

use futures::StreamExt;
use livedict::{Error, EventKind, Watch, WatchFilter, WatchItem};

/// What a watch holds right now, without waiting (events are queued before
/// the write that caused them returns).
fn drain<V: Clone + Send + Sync + 'static>(w: &mut Watch<V>) -> Vec<Item<V>> {
    std::iter::from_fn(|| w.try_recv()).map(Item::from).collect()
}

/// A comparable summary of a watch item.
#[derive(Debug, PartialEq)]
enum Item<V> {
    Event(EventKind, String, Option<V>),
    Lagged(u64),
}

impl<V: Clone> From<WatchItem<V>> for Item<V> {
    fn from(item: WatchItem<V>) -> Self {
        match item {
            WatchItem::Event(ev) => Item::Event(ev.kind(), ev.key().to_owned(), ev.value().cloned()),
            WatchItem::Lagged(n) => Item::Lagged(n),
        }
    }
}

fn ev<V>(kind: EventKind, key: &str, value: Option<V>) -> Item<V> {
    Item::Event(kind, key.to_owned(), value)
}

/// The next item, waiting up to 10 s (a watchdog, not a timing assertion).
async fn next<V: Clone + Send + Sync + 'static>(w: &mut Watch<V>) -> Option<Item<V>> {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("no watch item within 10 s")
        .map(Item::from)
}

for_each_backend! {
    async fn a_watch_receives_the_filtered_events_in_order(h: Harness) {
        let d = h.open::<u32>().await;
        let mut w = d.watch(WatchFilter::kinds([EventKind::Set, EventKind::Delete]).prefix("a:")).unwrap();
        d.set("a:1", 1).await.unwrap();
        d.set("b:1", 2).await.unwrap(); // other prefix
        assert_eq!(d.get("a:1").await.unwrap(), Some(1)); // other kind
        d.set("a:2", 3).await.unwrap();
        assert!(d.delete("a:1").await.unwrap());
        assert!(!d.delete("a:missing").await.unwrap()); // removed nothing: no event
        d.set("a:1", 4).await.unwrap();
        assert_eq!(
            drain(&mut w),
            vec![
                ev(EventKind::Set, "a:1", Some(1)),
                ev(EventKind::Set, "a:2", Some(3)),
                ev(EventKind::Delete, "a:1", Some(1)),
                ev(EventKind::Set, "a:1", Some(4)),
            ]
        );
    }

    async fn a_watch_sees_only_events_after_it_was_opened(h: Harness) {
        let d = h.open::<u32>().await;
        d.set("k", 1).await.unwrap();
        let mut w = d.watch(WatchFilter::new()).unwrap();
        assert!(w.try_recv().is_none());
        assert_eq!(d.get("k").await.unwrap(), Some(1));
        assert_eq!(drain(&mut w), vec![ev(EventKind::Get, "k", Some(1))]);
    }

    async fn a_watch_streams_expirations_with_their_values(h: Harness) {
        let d = h.open::<String>().await;
        let mut w = d.watch(WatchFilter::kinds([EventKind::Expire])).unwrap();
        d.set_with_ttl("k", "v".into(), h.short_ttl()).await.unwrap();
        assert_eq!(next(&mut w).await, Some(ev(EventKind::Expire, "k", Some("v".to_string()))));
    }

    async fn a_slow_consumer_sees_lagged_and_never_blocks_writers(h: Harness) {
        let d = h.open::<u32>().await;
        let mut slow = d.watch(WatchFilter::kinds([EventKind::Set]).capacity(4)).unwrap();
        let mut fast = d.watch(WatchFilter::kinds([EventKind::Set])).unwrap();
        // Nobody reads `slow` while these writes run: each returns regardless.
        for i in 0..10 {
            d.set(format!("k{i}"), i).await.unwrap();
        }
        let mut expected: Vec<_> = (0..4).map(|i| ev(EventKind::Set, &format!("k{i}"), Some(i))).collect();
        expected.push(Item::Lagged(6));
        assert_eq!(drain(&mut slow), expected, "four queued, six skipped");
        assert_eq!(drain(&mut fast).len(), 10, "another watch is not affected");
        // After catching up the slow consumer gets new events again.
        d.set("k10", 10).await.unwrap();
        assert_eq!(drain(&mut slow), vec![ev(EventKind::Set, "k10", Some(10))]);
    }

    async fn lagged_sits_where_the_events_were_skipped(h: Harness) {
        let d = h.open::<u32>().await;
        let mut w = d.watch(WatchFilter::kinds([EventKind::Set]).capacity(2)).unwrap();
        for i in 0..4 {
            d.set("k", i).await.unwrap();
        }
        // Read one, making room; the next write lands after the marker.
        assert_eq!(w.try_recv().map(Item::from), Some(ev(EventKind::Set, "k", Some(0))));
        d.set("k", 4).await.unwrap();
        assert_eq!(
            drain(&mut w),
            vec![ev(EventKind::Set, "k", Some(1)), Item::Lagged(2), ev(EventKind::Set, "k", Some(4))]
        );
    }

    async fn the_stream_ends_after_shutdown_and_new_watches_fail(h: Harness) {
        let d = h.open::<u32>().await;
        let mut w = d.watch(WatchFilter::new()).unwrap();
        d.set("k", 1).await.unwrap();
        d.shutdown().await.unwrap();
        assert_eq!(next(&mut w).await, Some(ev(EventKind::Set, "k", Some(1))), "queued items survive");
        assert_eq!(next(&mut w).await, None);
        assert!(matches!(d.watch(WatchFilter::new()), Err(Error::Closed)));
    }

    async fn the_stream_ends_when_the_last_handle_is_dropped(h: Harness) {
        let d = h.open::<u32>().await;
        let mut w = d.watch(WatchFilter::new()).unwrap();
        drop(d);
        assert_eq!(next(&mut w).await, None);
    }

    async fn a_dropped_watch_is_forgotten(h: Harness) {
        let d = h.open::<u32>().await;
        let w = d.watch(WatchFilter::kinds([EventKind::Set])).unwrap();
        drop(w);
        d.set("k", 1).await.unwrap();
        let mut w2 = d.watch(WatchFilter::kinds([EventKind::Delete])).unwrap();
        d.set("k", 2).await.unwrap();
        assert!(w2.try_recv().is_none(), "a Delete watch sees no Set");
    }

    async fn watches_and_callbacks_see_the_same_events(h: Harness) {
        let d = h.open::<u32>().await;
        let seen = support::Collector::new();
        d.register_callback(EventKind::Set, seen.callback()).unwrap();
        let mut w = d.watch(WatchFilter::kinds([EventKind::Set])).unwrap();
        for i in 0..5 {
            d.set(format!("k{i}"), i).await.unwrap();
        }
        support::eventually("five callback events", || seen.len() == 5).await;
        let streamed: Vec<_> = drain(&mut w)
            .into_iter()
            .map(|i| match i {
                Item::Event(kind, key, value) => (kind, key, value),
                Item::Lagged(n) => panic!("lagged {n}"),
            })
            .collect();
        assert_eq!(streamed, seen.events());
    }
}

#[test]
fn a_blocking_watch_is_read_without_await() {
    let d = livedict::blocking::LiveDict::<u32>::open("memory://").unwrap();
    let mut w = d.watch(WatchFilter::kinds([EventKind::Set])).unwrap();
    d.set("a", 1).unwrap();
    d.set("b", 2).unwrap();
    let keys: Vec<String> = w.by_ref().take(2).map(|i| i.event().unwrap().key().to_owned()).collect();
    assert_eq!(keys, ["a", "b"]);
    d.shutdown().unwrap();
    assert!(w.recv().unwrap().is_none());
}

/// Events shared across processes (`share_events=true`): Redis pub/sub,
/// SQLite change feed. Two stores opened on one namespace or file stand for
/// two processes: each has its own stack, dispatcher and origin.
mod across_processes {
    use super::*;
    use livedict::LiveDict;
    use support::Harness;

    fn sharing_url(h: &Harness, share: &str) -> String {
        let sep = if h.url().contains('?') { '&' } else { '?' };
        format!("{}{sep}share_events={share}", h.url())
    }

    async fn two_processes(h: &Harness) -> (LiveDict<String>, LiveDict<String>) {
        let url = sharing_url(h, "true");
        (LiveDict::open(&url).await.unwrap(), LiveDict::open(&url).await.unwrap())
    }

    async fn a_watch_sees_writes_of_other_processes_in_order(h: Harness) {
        let (a, b) = two_processes(&h).await;
        let mut w = b.watch(WatchFilter::kinds([EventKind::Set, EventKind::Delete]).prefix("k")).unwrap();
        a.set("k1", "v1".into()).await.unwrap();
        a.set("other", "x".into()).await.unwrap();
        assert!(a.delete("k1").await.unwrap());
        a.set("k2", "v2".into()).await.unwrap();
        assert_eq!(next(&mut w).await, Some(ev(EventKind::Set, "k1", Some("v1".to_string()))));
        assert_eq!(next(&mut w).await, Some(ev(EventKind::Delete, "k1", Some("v1".to_string()))));
        assert_eq!(next(&mut w).await, Some(ev(EventKind::Set, "k2", Some("v2".to_string()))));
        // Its own writes arrive once (its own entries in the feed are skipped).
        b.set("k3", "v3".into()).await.unwrap();
        assert_eq!(next(&mut w).await, Some(ev(EventKind::Set, "k3", Some("v3".to_string()))));
        a.set("k4", "v4".into()).await.unwrap();
        assert_eq!(next(&mut w).await, Some(ev(EventKind::Set, "k4", Some("v4".to_string()))));
    }

    async fn every_watch_sees_each_expiration_once_and_callbacks_stay_local(h: Harness) {
        let (a, b) = two_processes(&h).await;
        let seen_a = support::Collector::new();
        let seen_b = support::Collector::new();
        a.register_callback(EventKind::Expire, seen_a.callback()).unwrap();
        b.register_callback(EventKind::Expire, seen_b.callback()).unwrap();
        let filter = WatchFilter::kinds([EventKind::Set, EventKind::Expire]);
        let (mut wa, mut wb) = (a.watch(filter.clone()).unwrap(), b.watch(filter).unwrap());
        a.set_with_ttl("k", "v".into(), h.short_ttl()).await.unwrap();
        for w in [&mut wa, &mut wb] {
            assert_eq!(next(w).await, Some(ev(EventKind::Set, "k", Some("v".to_string()))));
            assert_eq!(next(w).await, Some(ev(EventKind::Expire, "k", Some("v".to_string()))));
        }
        // Exactly one process claimed the expiration: callbacks saw it once in total.
        support::eventually("one expire callback", || seen_a.len() + seen_b.len() == 1).await;
        // Nothing else is queued before a later marker write.
        a.set("marker", "m".into()).await.unwrap();
        for w in [&mut wa, &mut wb] {
            assert_eq!(next(w).await, Some(ev(EventKind::Set, "marker", Some("m".to_string()))));
        }
        support::settle().await;
        assert_eq!(seen_a.len() + seen_b.len(), 1, "an expiration reached callbacks twice");
    }

    async fn sharing_is_off_unless_asked_for(h: Harness) {
        let quiet = LiveDict::<String>::open(h.url()).await.unwrap();
        let (a, b) = two_processes(&h).await;
        let mut w = b.watch(WatchFilter::kinds([EventKind::Set])).unwrap();
        quiet.set("unshared", "x".into()).await.unwrap();
        a.set("shared", "y".into()).await.unwrap();
        // The unshared write came first; had it been shared it would arrive first.
        assert_eq!(next(&mut w).await, Some(ev(EventKind::Set, "shared", Some("y".to_string()))));
        assert!(matches!(
            LiveDict::<String>::open(&sharing_url(&h, "maybe")).await,
            Err(Error::InvalidUrl { .. })
        ));
    }

    macro_rules! on_shared_backends {
        ($($name:ident),*) => {
            #[cfg(feature = "sqlite")]
            mod sqlite {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$name(super::Harness::sqlite()).await
                    }
                )*
            }
            #[cfg(feature = "redis")]
            mod redis {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some(h) = super::Harness::redis() else { return };
                        super::$name(h).await
                    }
                )*
            }
            #[cfg(feature = "redis")]
            mod redis_cluster {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some(h) = tokio::task::spawn_blocking(super::Harness::redis_cluster)
                            .await
                            .unwrap()
                        else {
                            return;
                        };
                        super::$name(h).await
                    }
                )*
            }
        };
    }

    on_shared_backends!(
        a_watch_sees_writes_of_other_processes_in_order,
        every_watch_sees_each_expiration_once_and_callbacks_stay_local,
        sharing_is_off_unless_asked_for
    );
}
