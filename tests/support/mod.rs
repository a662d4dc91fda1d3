//! The behavioural suite's harness: one test body, every backend.
//!
//! `for_each_backend! { async fn name(h: Harness) { … } }` expands each body
//! into `memory::name` (paused Tokio time, so TTLs cost nothing),
//! `sqlite::name` (a temp file, real short TTLs) and `redis::name` (a
//! throw-away redis-server, real short TTLs). A new backend gets the whole
//! suite by adding one arm to the macro.
#![allow(dead_code)]

pub mod child;
pub mod redis_server;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livedict::{Builder, Callback, Event, EventKind, LiveDict, Value};

/// Which backend a test body runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Sqlite,
    Redis,
    /// A local 3-master Redis Cluster (`redis-cluster://`).
    RedisCluster,
    /// A master found through a Sentinel (`redis-sentinel://`).
    RedisSentinel,
}

/// One test's store location and the resources behind it.
pub struct Harness {
    pub kind: Kind,
    url: String,
    _dir: Option<tempfile::TempDir>,
    _redis: Option<redis_server::RedisServer>,
    _cluster: Option<redis_server::RedisCluster>,
    _sentinel: Option<redis_server::RedisSentinel>,
}

static NEXT_NAMESPACE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Harness {
    pub fn memory() -> Self {
        Harness {
            kind: Kind::Memory,
            url: "memory://".into(),
            _dir: None,
            _redis: None,
            _cluster: None,
            _sentinel: None,
        }
    }

    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        Harness { kind: Kind::Sqlite, url, _dir: Some(dir), _redis: None, _cluster: None, _sentinel: None }
    }

    /// `None` when redis-server is missing and not required (the test skips).
    pub fn redis() -> Option<Self> {
        let server = redis_server::RedisServer::start()?;
        let n = NEXT_NAMESPACE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!("{}?namespace=t{}", server.url(), n);
        Some(Harness {
            kind: Kind::Redis,
            url,
            _dir: None,
            _redis: Some(server),
            _cluster: None,
            _sentinel: None,
        })
    }

    /// A namespace on a fresh local 3-master Redis Cluster; `None` as for [`Harness::redis`].
    pub fn redis_cluster() -> Option<Self> {
        let cluster = redis_server::RedisCluster::start(3, 0)?;
        let n = NEXT_NAMESPACE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!("{}&namespace=t{}", cluster.url(), n);
        Some(Harness {
            kind: Kind::RedisCluster,
            url,
            _dir: None,
            _redis: None,
            _cluster: Some(cluster),
            _sentinel: None,
        })
    }

    /// A namespace on a fresh master found through a Sentinel; `None` as for [`Harness::redis`].
    pub fn redis_sentinel() -> Option<Self> {
        let sentinel = redis_server::RedisSentinel::start_minimal()?;
        let n = NEXT_NAMESPACE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!("{}&namespace=t{}", sentinel.url(), n);
        Some(Harness {
            kind: Kind::RedisSentinel,
            url,
            _dir: None,
            _redis: None,
            _cluster: None,
            _sentinel: Some(sentinel),
        })
    }

    /// Whether this is a Redis store (single server, cluster or Sentinel).
    pub fn is_redis(&self) -> bool {
        matches!(self.kind, Kind::Redis | Kind::RedisCluster | Kind::RedisSentinel)
    }

    /// The ports of every Redis server behind this store (one, or every cluster node).
    pub fn redis_ports(&self) -> Vec<u16> {
        match (&self._redis, &self._cluster, &self._sentinel) {
            (Some(server), _, _) => vec![server.port()],
            (_, Some(cluster), _) => cluster.nodes().iter().map(|n| n.port()).collect(),
            (_, _, Some(sentinel)) => sentinel.data.iter().map(|n| n.port()).collect(),
            _ => Vec::new(),
        }
    }

    /// Keys matching `pattern` on every Redis server behind this store (`SCAN`).
    pub fn redis_keys_matching(&self, pattern: &str) -> Vec<String> {
        self.redis_ports().into_iter().flat_map(|port| redis_server::scan(port, pattern)).collect()
    }

    /// Client connections open on the Redis servers behind this store (not counting the one asking).
    pub fn redis_connections(&self) -> usize {
        self.redis_ports()
            .into_iter()
            .map(|port| {
                let list = redis_server::command(port, &["CLIENT", "LIST"]).unwrap_or_default();
                // Not counted: Sentinels watching the master, and replicas.
                list.lines()
                    .filter(|l| !l.is_empty() && !l.contains("name=sentinel-") && !l.contains(" flags=S "))
                    .count()
                    .saturating_sub(1)
            })
            .sum()
    }

    /// For Redis: a URL a plain client can use (for Sentinel, the master's own `redis://`).
    pub fn raw_redis_url(&self) -> String {
        match &self._sentinel {
            Some(sentinel) => format!("redis://127.0.0.1:{}/0", sentinel.data[0].port()),
            None => self.redis_parts().0,
        }
    }

    /// For Redis: the server URL without livedict's options, and the namespace.
    pub fn redis_parts(&self) -> (String, String) {
        let (server, ns) = self.url.split_once("namespace=").expect("a redis url with a namespace");
        (server.trim_end_matches(['?', '&']).to_owned(), ns.to_owned())
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store's URL with more `options` (`a=1&b=2`).
    pub fn url_with(&self, options: &str) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}{options}", self.url)
    }

    /// A builder for this store; `open` is `builder().build()`.
    pub fn builder<V: Value>(&self) -> Builder<V> {
        LiveDict::builder().url(&self.url)
    }

    /// A new handle (with its own stack) on this test's store. For memory that
    /// is a new, separate store; for SQLite and Redis the same data.
    pub async fn open<V: Value>(&self) -> LiveDict<V> {
        self.builder().build().await.expect("open store")
    }

    /// Whether two `open` calls share data (SQLite file, Redis namespace).
    pub fn shared(&self) -> bool {
        self.kind != Kind::Memory
    }

    /// Lets `d` of (virtual on memory, real elsewhere) time pass.
    pub async fn pass(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// A TTL short enough for real-time backends, long enough to act before it.
    pub fn short_ttl(&self) -> Duration {
        Duration::from_millis(300)
    }

    /// How long after a deadline events are surely delivered.
    pub fn grace(&self) -> Duration {
        match self.kind {
            Kind::Memory => Duration::from_millis(50),
            Kind::Sqlite | Kind::Redis | Kind::RedisCluster | Kind::RedisSentinel => {
                Duration::from_millis(600)
            }
        }
    }

    /// Scales iteration counts down for backends that do I/O per operation.
    pub fn scale(&self, memory: usize, io: usize) -> usize {
        if self.kind == Kind::Memory { memory } else { io }
    }
}

/// Waits (in real time, up to 10 s) until `cond` holds; panics naming `what` otherwise.
/// Works under paused Tokio time: it never idles the runtime, so virtual time
/// does not jump while callbacks on other threads catch up.
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(10), cond).await
}

/// [`eventually`] with another bound, for what waits out leases of its own
/// (an at-least-once redelivery after its claimer was killed).
pub async fn eventually_within(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < bound, "timed out waiting for: {what}");
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Gives callbacks time to run (real time, without advancing virtual time).
pub async fn settle() {
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(100) {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// One recorded event: kind, key, value.
pub type Seen<V> = (EventKind, String, Option<V>);

/// Records the events a callback sees.
pub struct Collector<V> {
    seen: Arc<Mutex<Vec<Seen<V>>>>,
}

impl<V> Clone for Collector<V> {
    fn clone(&self) -> Self {
        Collector { seen: Arc::clone(&self.seen) }
    }
}

impl<V: Value> Collector<V> {
    pub fn new() -> Self {
        Collector { seen: Arc::default() }
    }

    /// A sync callback recording into this collector.
    pub fn callback(&self) -> Callback<V> {
        let seen = Arc::clone(&self.seen);
        Callback::new(move |ev: &Event<V>| {
            seen.lock().unwrap().push((ev.kind(), ev.key().to_owned(), ev.value().cloned()));
        })
    }

    /// An async callback recording into this collector.
    pub fn async_callback(&self) -> Callback<V> {
        let seen = Arc::clone(&self.seen);
        Callback::new_async(move |ev: Event<V>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push((ev.kind(), ev.key().to_owned(), ev.value().cloned()));
            }
        })
    }

    pub fn events(&self) -> Vec<Seen<V>> {
        self.seen.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn keys(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|(_, k, _)| k.clone()).collect()
    }
}

/// Expands test bodies into one test per backend.
#[macro_export]
macro_rules! for_each_backend {
    ($( async fn $name:ident($h:ident : Harness) $body:block )*) => {
        mod memory {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    let $h = $crate::support::Harness::memory();
                    $body
                }
            )*
        }
        #[cfg(feature = "sqlite")]
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $h = $crate::support::Harness::sqlite();
                    $body
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some($h) = $crate::support::Harness::redis() else { return };
                    $body
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis_sentinel {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some($h) = tokio::task::spawn_blocking($crate::support::Harness::redis_sentinel)
                        .await
                        .expect("sentinel start")
                    else {
                        return;
                    };
                    $body
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis_cluster {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some($h) = tokio::task::spawn_blocking($crate::support::Harness::redis_cluster)
                        .await
                        .expect("cluster start")
                    else {
                        return;
                    };
                    $body
                }
            )*
        }
    };
}
