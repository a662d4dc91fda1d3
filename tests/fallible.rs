//! Fallible callbacks (`Callback::fallible`, `Callback::fallible_async`): an
//! `Err` is a failed delivery like a panic. Under `at_least_once` the
//! expiration comes again with `attempt() + 1` until `expire_max_attempts`
//! (the last failure logged at error level); under `at_most_once` the error
//! is logged (warn, with key, kind and the error's chain) and counted, not
//! retried. `stats().callbacks_failed` counts errors apart from panics and
//! timeouts.

mod support;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use livedict::{Callback, Event, EventKind, LiveDict};
use support::{Harness, eventually};

/// What a callback fails with: an error with a source, so the log shows a chain.
#[derive(Debug)]
struct MailerDown(std::io::Error);

impl fmt::Display for MailerDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mailer unavailable")
    }
}

impl std::error::Error for MailerDown {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn mailer_down() -> MailerDown {
    MailerDown(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"))
}

/// The chain `MailerDown` is logged with.
const CHAIN: &str = "mailer unavailable: connection refused";

/// Every delivery seen: key, value, attempt.
type Deliveries = Arc<Mutex<Vec<(String, Option<u64>, u32)>>>;

fn record(seen: &Deliveries, ev: &Event<u64>) {
    seen.lock().unwrap().push((ev.key().to_owned(), ev.value().copied(), ev.attempt()));
}

/// A sync fallible Expire callback recording each delivery, returning `Err` while `fail(attempt)`.
fn recorder(fail: impl Fn(u32) -> bool + Send + Sync + 'static) -> (Deliveries, Callback<u64>) {
    let seen: Deliveries = Arc::default();
    let s = Arc::clone(&seen);
    let cb = Callback::fallible(move |ev: &Event<u64>| {
        record(&s, ev);
        if fail(ev.attempt()) { Err(mailer_down()) } else { Ok(()) }
    });
    (seen, cb)
}

/// The same, async.
fn async_recorder(fail: impl Fn(u32) -> bool + Send + Sync + 'static) -> (Deliveries, Callback<u64>) {
    let seen: Deliveries = Arc::default();
    let (s, fail) = (Arc::clone(&seen), Arc::new(fail));
    let cb = Callback::fallible_async(move |ev: Event<u64>| {
        let (s, fail) = (Arc::clone(&s), Arc::clone(&fail));
        async move {
            tokio::task::yield_now().await;
            record(&s, &ev);
            if fail(ev.attempt()) { Err(mailer_down()) } else { Ok(()) }
        }
    })
    .timeout(Duration::from_secs(30));
    (seen, cb)
}

fn attempts(seen: &Deliveries) -> Vec<u32> {
    seen.lock().unwrap().iter().map(|s| s.2).collect()
}

/// A key no other test of this binary uses (logs are process-wide).
fn unique_key() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("trial:{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One log record: its level and fields (`message` included).
#[derive(Debug, Clone)]
struct Record {
    level: tracing::Level,
    fields: BTreeMap<String, String>,
}

/// Every WARN and ERROR record of this process, from the moment [`logs`] is first called.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<Record>>>);

impl Logs {
    /// The records whose `key` field is `key`.
    fn of(&self, key: &str) -> Vec<Record> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.fields.get("key").map(String::as_str) == Some(key))
            .cloned()
            .collect()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logs {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Record { level: *event.metadata().level(), fields });
    }
}

/// The process-wide log capture (callbacks log from their own threads, so a
/// thread-local subscriber would miss them).
fn logs() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        let logs = Logs::default();
        let layer = logs.clone().with_filter(tracing_subscriber::filter::LevelFilter::WARN);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only global subscriber of this test binary");
        logs
    })
    .clone()
}

/// Checks that `record` is a callback error's warning for `key`.
fn assert_warned(record: &Record, key: &str, kind: &str, attempt: u32) {
    assert_eq!(record.level, tracing::Level::WARN, "{record:?}");
    assert_eq!(record.fields["key"], key, "{record:?}");
    assert_eq!(record.fields["kind"], kind, "{record:?}");
    assert_eq!(record.fields["attempt"], attempt.to_string(), "{record:?}");
    assert_eq!(record.fields["error"], CHAIN, "{record:?}");
}

for_each_backend! {
    async fn an_err_gets_the_expiration_again_with_attempt_2(h: Harness) {
        let logs = logs();
        let key = unique_key();
        let d: LiveDict<u64> =
            LiveDict::open(&h.url_with("expire_delivery=at_least_once&expire_lease_ms=5000")).await.unwrap();
        let (seen, cb) = recorder(|attempt| attempt == 1);
        d.register_callback(EventKind::Expire, cb).unwrap();
        d.set_with_ttl(&key, 7, h.short_ttl()).await.unwrap();
        h.pass(h.short_ttl() + h.grace()).await;
        eventually("the second delivery", || attempts(&seen).len() >= 2).await;
        support::settle().await;
        let got = seen.lock().unwrap().clone();
        assert_eq!(got, vec![(key.clone(), Some(7), 1), (key.clone(), Some(7), 2)]);
        let stats = d.stats();
        assert_eq!((stats.callbacks_failed, stats.callbacks_panicked, stats.callbacks_timed_out), (1, 0, 0));
        assert_eq!((stats.expirations, stats.expirations_redelivered, stats.expirations_abandoned), (1, 1, 0));
        let logged = logs.of(&key);
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_warned(&logged[0], &key, "expire", 1);
    }

    async fn an_err_on_every_attempt_abandons_the_expiration(h: Harness) {
        let logs = logs();
        let key = unique_key();
        let url = h.url_with("expire_delivery=at_least_once&expire_max_attempts=3");
        let d: LiveDict<u64> = LiveDict::open(&url).await.unwrap();
        let (seen, cb) = recorder(|_| true);
        d.register_callback(EventKind::Expire, cb).unwrap();
        d.set_with_ttl(&key, 1, h.short_ttl()).await.unwrap();
        h.pass(h.short_ttl() + h.grace()).await;
        eventually("the expiration abandoned", || d.stats().expirations_abandoned == 1).await;
        eventually("the abandonment logged", || logs.of(&key).iter().any(|r| r.level == tracing::Level::ERROR))
            .await;
        support::settle().await;
        assert_eq!(attempts(&seen), vec![1, 2, 3]);
        let stats = d.stats();
        assert_eq!((stats.callbacks_failed, stats.callbacks_panicked, stats.callbacks_timed_out), (3, 0, 0));
        assert_eq!((stats.expirations_redelivered, stats.expirations_abandoned), (2, 1));
        let logged = logs.of(&key);
        let warned: Vec<&Record> = logged.iter().filter(|r| r.fields.contains_key("kind")).collect();
        assert_eq!(warned.len(), 3, "{logged:?}");
        for (i, record) in warned.iter().enumerate() {
            assert_warned(record, &key, "expire", i as u32 + 1);
        }
        // The last error, at error level, once.
        let errors: Vec<&Record> = logged.iter().filter(|r| r.level == tracing::Level::ERROR).collect();
        assert_eq!(errors.len(), 1, "{logged:?}");
        assert_eq!(errors[0].fields["attempt"], "3");
        assert_eq!(errors[0].fields["error"], format!("callback returned an error: {CHAIN}"));
    }

    async fn an_err_under_at_most_once_is_logged_and_counted_not_retried(h: Harness) {
        let logs = logs();
        let key = unique_key();
        let d: LiveDict<u64> = LiveDict::open(h.url()).await.unwrap();
        let (seen, cb) = recorder(|_| true);
        d.register_callback(EventKind::Expire, cb).unwrap();
        // Any kind of event: a failing Set callback is logged with its kind.
        d.register_callback(EventKind::Set, Callback::fallible(|_: &Event<u64>| Err(mailer_down()))).unwrap();
        d.set_with_ttl(&key, 3, h.short_ttl()).await.unwrap();
        h.pass(h.short_ttl() + h.grace()).await;
        eventually("both errors counted", || d.stats().callbacks_failed == 2).await;
        // Time for a redelivery that must not come.
        h.pass(h.short_ttl() + h.grace()).await;
        support::settle().await;
        assert_eq!(seen.lock().unwrap().clone(), vec![(key.clone(), Some(3), 1)]);
        let stats = d.stats();
        assert_eq!((stats.callbacks_failed, stats.callbacks_panicked, stats.callbacks_timed_out), (2, 0, 0));
        assert_eq!((stats.expirations, stats.expirations_redelivered, stats.expirations_abandoned), (1, 0, 0));
        let mut logged = logs.of(&key);
        logged.sort_by(|a, b| a.fields["kind"].cmp(&b.fields["kind"]));
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert_warned(&logged[0], &key, "expire", 1);
        assert_warned(&logged[1], &key, "set", 1);
    }

    async fn a_fallible_async_callback_gets_the_expiration_again(h: Harness) {
        let key = unique_key();
        let d: LiveDict<u64> =
            LiveDict::open(&h.url_with("expire_delivery=at_least_once&expire_lease_ms=5000")).await.unwrap();
        let (seen, cb) = async_recorder(|attempt| attempt == 1);
        d.register_callback(EventKind::Expire, cb).unwrap();
        d.set_with_ttl(&key, 5, h.short_ttl()).await.unwrap();
        h.pass(h.short_ttl() + h.grace()).await;
        eventually("the second delivery", || attempts(&seen).len() >= 2).await;
        support::settle().await;
        assert_eq!(seen.lock().unwrap().clone(), vec![(key.clone(), Some(5), 1), (key, Some(5), 2)]);
        let stats = d.stats();
        assert_eq!((stats.callbacks_failed, stats.callbacks_panicked, stats.callbacks_timed_out), (1, 0, 0));
        assert_eq!((stats.expirations_redelivered, stats.expirations_abandoned), (1, 0));
    }
}

/// Errors, panics and timeouts are three counters, each counting only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_panics_and_timeouts_are_counted_apart() {
    // The recipe of the `Callback` docs: the default hook stays quiet for the
    // callback threads (printing a backtrace can take seconds on a busy machine).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some(livedict::callback::THREAD_NAME) {
            default_hook(info);
        }
    }));
    let d: LiveDict<u64> = LiveDict::open("memory://").await.unwrap();
    let sync_cb = Callback::fallible(|ev: &Event<u64>| match ev.key() {
        "err" => Err(mailer_down()),
        "slow" => {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        }
        _ => Ok(()),
    })
    .timeout(Duration::from_millis(50));
    let async_cb = Callback::fallible_async(|ev: Event<u64>| async move {
        match ev.key() {
            "err" => Err(mailer_down()),
            "slow" => std::future::pending::<Result<(), MailerDown>>().await,
            _ => Ok(()),
        }
    })
    .timeout(Duration::from_millis(50));
    let panicking = Callback::fallible(|ev: &Event<u64>| match ev.key() {
        "panic" => panic!("a bug, on purpose"),
        _ => Ok::<(), MailerDown>(()),
    });
    for cb in [sync_cb, async_cb, panicking] {
        d.register_callback(EventKind::Set, cb).unwrap();
    }
    for key in ["ok", "err", "panic", "slow"] {
        d.set(key, 1).await.unwrap();
    }
    support::eventually_within("every outcome counted", Duration::from_secs(30), || {
        let s = d.stats();
        (s.callbacks_failed, s.callbacks_panicked, s.callbacks_timed_out) == (2, 1, 2)
    })
    .await;
    support::settle().await;
    let s = d.stats();
    assert_eq!((s.callbacks_failed, s.callbacks_panicked, s.callbacks_timed_out), (2, 1, 2));
    assert_eq!(s.events_delivered, 12);
}

/// The blocking facade takes the same fallible callbacks, sync and async.
fn blocking_twins(h: Harness) {
    let key = unique_key();
    let d: livedict::blocking::LiveDict<u64> =
        livedict::blocking::LiveDict::open(&h.url_with("expire_delivery=at_least_once&expire_lease_ms=5000"))
            .unwrap();
    let (seen, cb) = recorder(|attempt| attempt == 1);
    d.register_callback(EventKind::Expire, cb).unwrap();
    let (seen_async, cb) = async_recorder(|_| false);
    d.register_callback(EventKind::Expire, cb).unwrap();
    d.set_with_ttl(&key, 9, Duration::from_millis(100)).unwrap();
    let started = std::time::Instant::now();
    while attempts(&seen).len() < 2 || attempts(&seen_async).len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?} / {:?}",
            attempts(&seen),
            attempts(&seen_async)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Both callbacks get each delivery; the sync one's Err brought the second, and no third comes.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(attempts(&seen), vec![1, 2], "{:?}", h.kind);
    assert_eq!(attempts(&seen_async), vec![1, 2], "{:?}", h.kind);
    let stats = d.stats();
    assert_eq!((stats.callbacks_failed, stats.expirations_redelivered), (1, 1), "{:?}", h.kind);
    d.shutdown().unwrap();
}

#[test]
fn blocking_twins_on_memory() {
    blocking_twins(Harness::memory());
}

#[cfg(feature = "sqlite")]
#[test]
fn blocking_twins_on_sqlite() {
    blocking_twins(Harness::sqlite());
}

#[cfg(feature = "redis")]
#[test]
fn blocking_twins_on_redis() {
    let Some(h) = Harness::redis() else { return };
    blocking_twins(h);
}
