//! The blocking facade, from plain threads.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use livedict::blocking::LiveDict;
use livedict::{Callback, Error, Event, EventKind};
use support::Harness;

fn harnesses() -> Vec<Harness> {
    let mut all = vec![Harness::memory()];
    if cfg!(feature = "sqlite") {
        all.push(Harness::sqlite());
    }
    if cfg!(feature = "redis") {
        all.extend(Harness::redis());
    }
    all
}

#[test]
fn blocking_facade_supports_every_operation() {
    for h in harnesses() {
        let d: LiveDict<String> = LiveDict::open(h.url()).unwrap();
        d.set("a", "1".into()).unwrap();
        d.set_with_ttl("b", "2".into(), Duration::from_secs(60)).unwrap();
        assert_eq!(d.get("a").unwrap().as_deref(), Some("1"));
        assert!(d.exists("b").unwrap());
        assert!(d.ttl("b").unwrap().is_some());
        assert!(d.persist("b").unwrap());
        assert!(d.expire("b", Duration::from_secs(5)).unwrap());
        assert_eq!(d.len().unwrap(), 2);
        let mut keys = d.keys().unwrap();
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(d.items().unwrap().len(), 2);
        assert!(d.delete("a").unwrap());
        d.clear().unwrap();
        assert!(d.is_empty().unwrap());
        d.shutdown().unwrap();
        assert!(matches!(d.get("a"), Err(Error::Closed)));
    }
}

#[test]
fn locked_increments_from_plain_threads_are_exact() {
    for h in harnesses() {
        let d: LiveDict<u64> = LiveDict::open(h.url()).unwrap();
        let rounds = h.scale(500, 25);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for _ in 0..rounds {
                        let g = d.lock("n", Duration::from_secs(30)).unwrap();
                        let n = g.get().unwrap().unwrap_or(0);
                        g.set(n + 1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(d.get("n").unwrap(), Some(4 * rounds as u64), "{:?}", h.kind);
    }
}

#[test]
fn blocking_callbacks_are_plain_closures_and_may_reenter() {
    let d: LiveDict<u32> = LiveDict::open("memory://").unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let (s, store) = (Arc::clone(&seen), d.clone());
    d.register_callback(
        EventKind::Expire,
        Callback::new(move |ev: &Event<u32>| {
            store.set(format!("copy-{}", ev.key()), *ev.value().unwrap()).unwrap();
            s.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .unwrap();
    d.set_with_ttl("k", 9, Duration::from_millis(20)).unwrap();
    let started = std::time::Instant::now();
    while seen.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "expire callback never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(d.get("copy-k").unwrap(), Some(9));
    d.shutdown().unwrap();
}

#[tokio::test]
async fn blocking_facade_inside_a_runtime_is_an_error_not_a_panic() {
    assert!(matches!(LiveDict::<u32>::open("memory://"), Err(Error::InsideRuntime)));
    let d = std::thread::spawn(|| LiveDict::<u32>::open("memory://").unwrap()).join().unwrap();
    assert!(matches!(d.get("k"), Err(Error::InsideRuntime)));
    assert!(matches!(d.set("k", 1), Err(Error::InsideRuntime)));
    drop(d); // dropping inside a runtime must not panic either
}
