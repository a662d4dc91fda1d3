//! The `metrics` feature: `stats()` counters exported through the `metrics`
//! facade, checked with metrics-util's `DebuggingRecorder`.
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::time::Duration;

use livedict::{Callback, Event, EventKind, LiveDict, Stats};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Counter values of one `store` label, by metric name.
fn counters_of(snapshotter: &Snapshotter, store: &str) -> HashMap<String, u64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().labels().any(|l| l.key() == "store" && l.value() == store))
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((key.key().name().to_owned(), n)),
            _ => None,
        })
        .collect()
}

fn expected(s: &Stats) -> HashMap<String, u64> {
    [
        ("livedict_hits_total", s.hits),
        ("livedict_misses_total", s.misses),
        ("livedict_sets_total", s.sets),
        ("livedict_deletes_total", s.deletes),
        ("livedict_expirations_total", s.expirations),
        ("livedict_evictions_total", s.evictions),
        ("livedict_events_delivered_total", s.events_delivered),
        ("livedict_events_dropped_total", s.events_dropped),
        ("livedict_callbacks_panicked_total", s.callbacks_panicked),
        ("livedict_callbacks_failed_total", s.callbacks_failed),
        ("livedict_callbacks_timed_out_total", s.callbacks_timed_out),
        ("livedict_lock_waits_total", s.lock_waits),
        ("livedict_lock_timeouts_total", s.lock_timeouts),
        ("livedict_expirations_redelivered_total", s.expirations_redelivered),
        ("livedict_expirations_abandoned_total", s.expirations_abandoned),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Drives a store through every kind of counted thing.
async fn exercise(d: &LiveDict<u32>) {
    d.register_callback(EventKind::Set, Callback::new(|_: &Event<u32>| {})).unwrap();
    d.register_callback(EventKind::Delete, Callback::new(|_: &Event<u32>| panic!("callback panics")))
        .unwrap();
    d.register_callback(EventKind::Delete, Callback::fallible(|_: &Event<u32>| Err("callback fails")))
        .unwrap();
    d.set("a", 1).await.unwrap();
    d.set("b", 2).await.unwrap();
    d.get("a").await.unwrap();
    d.get("missing").await.unwrap();
    d.delete("b").await.unwrap();
    d.set_with_ttl("t", 3, Duration::from_millis(10)).await.unwrap();
    let held = d.lock("a", Duration::from_secs(1)).await.unwrap();
    d.lock("a", Duration::from_millis(10)).await.unwrap_err();
    drop(held);
    // Let the TTL pass and the callbacks run.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let s = d.stats();
        if s.expirations == 1
            && s.callbacks_panicked == 1
            && s.callbacks_failed == 1
            && s.events_delivered == 5
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn export_sets_every_counter_to_the_store_totals() {
    let d = LiveDict::<u32>::open("memory://").await.unwrap();
    let other = LiveDict::<u32>::open("memory://").await.unwrap();
    exercise(&d).await;
    other.get("x").await.unwrap();

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let stats = d.stats();
    metrics::with_local_recorder(&recorder, || {
        livedict::metrics::describe();
        d.export_metrics("main");
        other.export_metrics("other");
    });
    assert!(stats.lock_waits >= 1 && stats.lock_timeouts == 1, "{stats:?}");
    assert_eq!(counters_of(&snapshotter, "main"), expected(&stats));

    // A second store under its own label does not mix with the first.
    let other_stats = other.stats();
    assert_eq!(other_stats.misses, 1);
    metrics::with_local_recorder(&recorder, || other.export_metrics("other"));
    assert_eq!(counters_of(&snapshotter, "other"), expected(&other_stats));
}

#[tokio::test]
async fn describe_gives_every_counter_a_description() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        livedict::metrics::describe();
        livedict::metrics::record(&Stats::default(), "empty");
    });
    let snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(snapshot.len(), livedict::metrics::COUNTERS.len());
    for (key, unit, description, _) in snapshot {
        assert_eq!(unit, Some(metrics::Unit::Count), "{key:?}");
        assert!(description.is_some(), "{key:?} has no description");
    }
}

#[tokio::test]
async fn background_exporter_follows_the_store_and_ends_at_shutdown() {
    // The one test in this binary that installs a global recorder (the
    // exporter runs on its own task, which a thread-local recorder would miss).
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("no other global recorder in this test binary");

    let d = LiveDict::<u32>::open("memory://").await.unwrap();
    assert!(d.spawn_metrics_exporter("bg", Duration::ZERO).is_err());
    let exporter = d.spawn_metrics_exporter("bg", Duration::from_millis(10)).unwrap();
    for i in 0..5 {
        d.set(format!("k{i}"), i).await.unwrap();
    }
    d.get("k1").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let got = counters_of(&snapshotter, "bg");
        if got.get("livedict_sets_total") == Some(&5) && got.get("livedict_hits_total") == Some(&1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "exporter did not export: {got:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), exporter)
        .await
        .expect("exporter ends after shutdown")
        .unwrap();
}
