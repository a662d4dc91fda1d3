//! At-least-once expiry delivery (`expire_delivery=at_least_once`): a failed
//! callback or a dead claimer gets the expiration delivered again, with its
//! value and `attempt() + 1`; without failures every expiration is delivered
//! exactly once. The crash tests SIGKILL a real child process.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livedict::{Callback, Event, EventKind, LiveDict};
use support::{child, eventually, eventually_within};

/// Every delivery seen: key, value, attempt.
type Deliveries = Arc<Mutex<Vec<(String, Option<u64>, u32)>>>;

/// A sync Expire callback recording each delivery, panicking while `fail(attempt)`.
fn recorder(fail: impl Fn(u32) -> bool + Send + Sync + 'static) -> (Deliveries, Callback<u64>) {
    let seen: Deliveries = Arc::default();
    let s = Arc::clone(&seen);
    let cb = Callback::new(move |ev: &Event<u64>| {
        s.lock().unwrap().push((ev.key().to_owned(), ev.value().copied(), ev.attempt()));
        if fail(ev.attempt()) {
            panic!("failing attempt {} on purpose", ev.attempt());
        }
    });
    (seen, cb)
}

fn count(seen: &Deliveries) -> usize {
    seen.lock().unwrap().len()
}

for_each_backend! {
    async fn a_failed_callback_gets_the_expiration_again(h: Harness) {
        let d: LiveDict<u64> =
            LiveDict::open(&h.url_with("expire_delivery=at_least_once&expire_lease_ms=5000")).await.unwrap();
        let (seen, cb) = recorder(|attempt| attempt == 1);
        d.register_callback(EventKind::Expire, cb).unwrap();
        d.set_with_ttl("k", 7, h.short_ttl()).await.unwrap();
        h.pass(h.short_ttl() + h.grace()).await;
        eventually("the second delivery", || count(&seen) >= 2).await;
        support::settle().await;
        let got = seen.lock().unwrap().clone();
        assert_eq!(got, vec![("k".to_owned(), Some(7), 1), ("k".to_owned(), Some(7), 2)]);
        let stats = d.stats();
        assert_eq!(stats.expirations, 1);
        assert_eq!(stats.expirations_redelivered, 1);
        assert_eq!(stats.expirations_abandoned, 0);
    }

    async fn an_expiration_is_dropped_after_its_last_attempt(h: Harness) {
        let url = h.url_with("expire_delivery=at_least_once&expire_max_attempts=3");
        let d: LiveDict<u64> = LiveDict::open(&url).await.unwrap();
        let (seen, cb) = recorder(|_| true);
        d.register_callback(EventKind::Expire, cb).unwrap();
        d.set_with_ttl("k", 1, h.short_ttl()).await.unwrap();
        h.pass(h.short_ttl() + h.grace()).await;
        eventually("the expiration abandoned", || d.stats().expirations_abandoned == 1).await;
        let attempts: Vec<u32> = seen.lock().unwrap().iter().map(|s| s.2).collect();
        assert_eq!(attempts, vec![1, 2, 3]);
        assert_eq!(d.stats().expirations_redelivered, 2);
    }

    async fn without_failures_each_expiration_is_delivered_once(h: Harness) {
        // A lease shorter than the wait below: an acknowledgement that was not
        // written would show up as a second delivery.
        let url = h.url_with("expire_delivery=at_least_once&expire_lease_ms=400");
        let d: LiveDict<u64> = LiveDict::open(&url).await.unwrap();
        let (seen, cb) = recorder(|_| false);
        d.register_callback(EventKind::Expire, cb).unwrap();
        let n = h.scale(10_000, 2_000);
        for i in 0..n {
            d.set_with_ttl(format!("k{i}"), i as u64, h.short_ttl()).await.unwrap();
        }
        h.pass(h.short_ttl() + h.grace()).await;
        eventually_within("every expiration", Duration::from_secs(30), || count(&seen) >= n).await;
        // Several leases later, nothing came back.
        h.pass(Duration::from_millis(1500)).await;
        support::settle().await;
        let got = seen.lock().unwrap().clone();
        assert_eq!(got.len(), n, "duplicates: {}", got.len() - n);
        let mut by_key: HashMap<String, (Option<u64>, u32)> = HashMap::new();
        for (k, v, a) in got {
            assert!(by_key.insert(k, (v, a)).is_none(), "a key delivered twice");
        }
        for i in 0..n {
            assert_eq!(by_key[&format!("k{i}")], (Some(i as u64), 1));
        }
        assert_eq!(d.stats().expirations_redelivered, 0);
    }

    async fn an_expiration_a_write_finds_is_delivered_too(h: Harness) {
        let url = h.url_with("expire_delivery=at_least_once&expire_lease_ms=5000");
        let d: LiveDict<u64> = LiveDict::open(&url).await.unwrap();
        let (seen, cb) = recorder(|attempt| attempt == 1);
        d.register_callback(EventKind::Expire, cb).unwrap();
        for i in 0..20u64 {
            d.set_with_ttl(format!("k{i}"), i, Duration::from_millis(50)).await.unwrap();
        }
        h.pass(Duration::from_millis(60)).await;
        // Writes racing the expiry driver: whoever finds them, each is leased and retried.
        for i in 0..20u64 {
            d.set(format!("k{i}"), 100 + i).await.unwrap();
        }
        h.pass(h.grace()).await;
        eventually("every expiration twice (one failed attempt each)", || count(&seen) >= 40).await;
        let got = seen.lock().unwrap().clone();
        for i in 0..20u64 {
            let attempts: Vec<u32> =
                got.iter().filter(|s| s.0 == format!("k{i}") && s.1 == Some(i)).map(|s| s.2).collect();
            assert_eq!(attempts, vec![1, 2], "k{i}");
        }
    }
}

/// The child side (a no-op in a normal run): `<url>`. Writes `KEYS` entries
/// that expire at once, claims them with an Expire callback that never
/// returns, says `claimed`, and waits to be killed.
#[test]
fn child_entry() {
    let Some(url) = child::role() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let d: LiveDict<u64> = LiveDict::open(&url).await.unwrap();
        d.register_callback(
            EventKind::Expire,
            Callback::new(|_ev: &Event<u64>| {
                loop {
                    std::thread::sleep(Duration::from_secs(60));
                }
            })
            .timeout(Duration::from_secs(3600)),
        )
        .unwrap();
        for i in 0..KEYS {
            d.set_with_ttl(format!("k{i}"), i, Duration::from_millis(100)).await.unwrap();
        }
        while d.stats().expirations < KEYS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("claimed");
        std::future::pending::<()>().await;
    });
}

const KEYS: u64 = 1_000;

/// A child claims `KEYS` expirations whose callback never returns and is
/// SIGKILLed; a new store on the same data then gets every one of them.
async fn survives_a_killed_claimer(url: &str) {
    let options = "expire_delivery=at_least_once&expire_lease_ms=1000";
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}{options}");
    let (mut kid, mut out) = child::spawn(&url);
    let waited = tokio::task::spawn_blocking(move || {
        child::wait_for_line(&mut out, "claimed");
        out
    });
    let out = waited.await.unwrap();
    kid.kill().unwrap(); // SIGKILL
    kid.wait().unwrap();
    drop(out);
    let d: LiveDict<u64> = LiveDict::open(&url).await.unwrap();
    let (seen, cb) = recorder(|_| false);
    d.register_callback(EventKind::Expire, cb).unwrap();
    // The lease (1 s) and, on Redis, the dead instance's sweeper membership (3 s) run out first.
    eventually_within("every expiration of the killed child", Duration::from_secs(60), || {
        count(&seen) >= KEYS as usize
    })
    .await;
    support::settle().await;
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), KEYS as usize);
    let mut keys: Vec<u64> = got
        .iter()
        .map(|(k, v, attempt)| {
            let i: u64 = k[1..].parse().unwrap();
            assert_eq!(*v, Some(i), "{k} with its value");
            assert!(*attempt >= 2, "{k}: attempt {attempt}");
            i
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), KEYS as usize, "0 lost");
    assert_eq!(d.stats().expirations_redelivered, KEYS);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_expirations_survive_a_killed_claimer() {
    let dir = tempfile::tempdir().unwrap();
    survives_a_killed_claimer(&format!("sqlite://{}", dir.path().join("s.db").display())).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_expirations_survive_a_killed_claimer() {
    let Some(server) = support::redis_server::RedisServer::start() else { return };
    survives_a_killed_claimer(&format!("{}?namespace=durable", server.url())).await;
}

#[tokio::test]
async fn bad_delivery_options_are_invalid_urls() {
    for url in [
        "memory://?expire_delivery=exactly_once",
        "memory://?expire_lease_ms=0",
        "memory://?expire_max_attempts=0",
        "sqlite::memory:?expire_delivery=",
        "sqlite::memory:?expire_lease_ms=soon",
    ] {
        match LiveDict::<u64>::open(url).await {
            Err(livedict::Error::InvalidUrl { .. }) => {}
            other => panic!("{url}: {:?}", other.map(|_| ())),
        }
    }
    let d = LiveDict::<u64>::builder()
        .url("sqlite::memory:")
        .expire_delivery(livedict::Delivery::AtLeastOnce)
        .expire_lease(Duration::from_secs(5))
        .expire_max_attempts(3)
        .build()
        .await
        .unwrap();
    d.shutdown().await.unwrap();
}
