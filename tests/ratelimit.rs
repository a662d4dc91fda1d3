//! Distributed rate limiting (`livedict::ratelimit`): GCRA checks on memory,
//! SQLite, Redis and a Redis Cluster; one limit shared by handles and by
//! processes; idle state that expires; bad quotas; the Tower layer under axum.
#![cfg(feature = "ratelimit")]

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use livedict::ratelimit::{OnError, Quota, RateLimitLayer, RateLimiter};
use livedict::{Error, EventKind, LiveDict};
use support::{Harness, Kind, child};

/// Expands test bodies into one test per store: memory (paused Tokio time),
/// SQLite, Redis and a local Redis Cluster (the Sentinel store of the shared
/// suite adds nothing here: the same script on one master).
macro_rules! for_each_store {
    ($( async fn $name:ident($h:ident : Harness) $body:block )*) => {
        mod memory {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    let $h = Harness::memory();
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
                    let $h = Harness::sqlite();
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
                    let Some($h) = Harness::redis() else { return };
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
                    let Some($h) = tokio::task::spawn_blocking(Harness::redis_cluster).await.expect("cluster start")
                    else {
                        return;
                    };
                    $body
                }
            )*
        }
    };
}

/// Microseconds since the Unix epoch (shared by processes).
fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// How long the hammering tests run.
const HAMMER: Duration = Duration::from_secs(2);

/// The quota of the hammering tests: 50/s, burst 25 (a burst of half a
/// second of cells: a loaded machine that stalls every checker for a moment
/// loses no cells, so the 90 % bound holds without asserting on timing).
fn hammer_quota() -> Quota {
    Quota::per_second(50).allow_burst(25)
}

/// `tasks` tasks checking `key` through `limiter` until `until_us` (wall
/// clock, µs); how many checks were allowed. On a paused clock (memory) each
/// task sleeps 1 ms between checks, so virtual time moves.
fn hammer(
    limiter: &RateLimiter,
    key: &str,
    tasks: usize,
    paused: bool,
    until: Duration,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..tasks)
        .map(|_| {
            let (limiter, key) = (limiter.clone(), key.to_owned());
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let mut allowed = 0;
                while started.elapsed() < until {
                    if limiter.check(&key).await.unwrap().allowed() {
                        allowed += 1;
                    }
                    if paused {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                allowed
            })
        })
        .collect()
}

/// `allowed` checks over `elapsed` are within the quota (`burst + elapsed / T`)
/// and at least 90 % of it.
fn assert_within_quota(quota: Quota, allowed: u64, elapsed: Duration) {
    let most = u64::from(quota.burst()) + (elapsed.as_micros() / quota.interval().as_micros()) as u64;
    assert!(allowed <= most, "allowed {allowed} > {most} (burst + rate × {elapsed:?})");
    assert!(allowed * 10 >= most * 9, "allowed {allowed} < 90% of {most} over {elapsed:?}");
}

/// Waits (in store time: virtual on memory) until `limiter`'s store is empty.
async fn until_empty(d: &LiveDict<u64>, within: Duration) {
    let started = tokio::time::Instant::now();
    loop {
        let len = d.len().await.unwrap();
        if len == 0 {
            return;
        }
        assert!(started.elapsed() < within, "{len} entries left after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

for_each_store! {
    async fn a_burst_then_the_rate(h: Harness) {
        let d = h.open::<u64>().await;
        if h.kind == Kind::Memory {
            // A paused clock: every number is exact to the ms.
            let limiter = RateLimiter::new(d, Quota::per_second(10).allow_burst(5));
            for left in (0..5).rev() {
                let ok = limiter.check("k").await.unwrap();
                assert!(ok.allowed() && ok.retry_after().is_none());
                assert_eq!(ok.remaining(), left);
                assert_eq!(ok.limit(), 5);
            }
            let denied = limiter.check("k").await.unwrap();
            assert!(!denied.allowed());
            assert_eq!(denied.remaining(), 0);
            assert_eq!(denied.retry_after(), Some(Duration::from_millis(100)));
            assert_eq!(denied.reset_after(), Duration::from_millis(500));
            tokio::time::advance(Duration::from_millis(40)).await;
            assert_eq!(limiter.check("k").await.unwrap().retry_after(), Some(Duration::from_millis(60)));
            tokio::time::advance(Duration::from_millis(60)).await;
            let again = limiter.check("k").await.unwrap();
            assert!(again.allowed());
            assert_eq!(again.reset_after(), Duration::from_millis(500));
            assert_eq!(limiter.check("k").await.unwrap().retry_after(), Some(Duration::from_millis(100)));
            // Then one cell per 100 ms, and a cost of 3 waits for 3 cells.
            tokio::time::advance(Duration::from_millis(250)).await;
            let three = limiter.check_n("k", 3).await.unwrap();
            assert!(!three.allowed());
            assert_eq!(three.remaining(), 2);
            assert_eq!(three.retry_after(), Some(Duration::from_millis(50)));
            tokio::time::advance(Duration::from_millis(50)).await;
            assert!(limiter.check_n("k", 3).await.unwrap().allowed());
            return;
        }
        // Real time: a slow quota (one cell per 10 s) so the burst is never
        // refilled during the test, however slow the machine.
        let limiter = RateLimiter::new(d.clone(), Quota::per_minute(6).allow_burst(5));
        let started = tokio::time::Instant::now();
        for left in (0..5).rev() {
            let ok = limiter.check("k").await.unwrap();
            assert!(ok.allowed() && ok.retry_after().is_none());
            assert_eq!(ok.remaining(), left);
        }
        let denied = limiter.check("k").await.unwrap();
        let elapsed = started.elapsed();
        assert!(!denied.allowed());
        assert_eq!(denied.remaining(), 0);
        let retry = denied.retry_after().expect("a retry time");
        assert!(retry <= Duration::from_secs(10) && retry + elapsed + Duration::from_millis(2) >= Duration::from_secs(10), "{retry:?} after {elapsed:?}");
        let reset = denied.reset_after();
        assert!(reset <= Duration::from_secs(50) && reset + elapsed + Duration::from_millis(2) >= Duration::from_secs(50), "{reset:?}");
        // The rate: one cell per 200 ms; after the retry time, allowed again.
        let fast = RateLimiter::new(d, Quota::with_period(Duration::from_millis(200)));
        assert!(fast.check("f").await.unwrap().allowed());
        let denied = fast.check("f").await.unwrap();
        assert!(!denied.allowed());
        let retry = denied.retry_after().unwrap();
        assert!(retry <= Duration::from_millis(200));
        // +2 ms: the clocks' granularity (server µs, timer ms).
        tokio::time::sleep(retry + Duration::from_millis(2)).await;
        assert!(fast.check("f").await.unwrap().allowed());
    }

    async fn three_handles_hammering_one_key_share_one_limit(h: Harness) {
        // Memory stores are per handle: three clones of one limiter there.
        let first = h.open::<u64>().await;
        let handles = if h.shared() {
            vec![first, h.open::<u64>().await, h.open::<u64>().await]
        } else {
            vec![first.clone(), first.clone(), first]
        };
        let quota = hammer_quota();
        let paused = h.kind == Kind::Memory;
        let started = tokio::time::Instant::now();
        let mut joins = Vec::new();
        for d in handles {
            joins.extend(hammer(&RateLimiter::new(d, quota), "shared", 3, paused, HAMMER));
        }
        let mut allowed = 0;
        for j in joins {
            allowed += j.await.unwrap();
        }
        assert_within_quota(quota, allowed, started.elapsed());
    }

    async fn idle_state_is_gone_once_the_bucket_has_refilled(h: Harness) {
        let d = h.open::<u64>().await;
        let limiter = RateLimiter::new(d.clone(), Quota::per_second(10).allow_burst(3));
        let mut reset = Duration::ZERO;
        for i in 0..20 {
            reset = reset.max(limiter.check(format!("client:{i}")).await.unwrap().reset_after());
            limiter.check(format!("client:{i}")).await.unwrap();
        }
        assert_eq!(d.len().await.unwrap(), 20);
        assert!(d.ttl("client:0").await.unwrap().is_some_and(|t| t <= Duration::from_millis(200)));
        h.pass(reset + Duration::from_millis(100)).await;
        until_empty(&d, Duration::from_secs(10)).await;
        // A new budget, full again.
        assert_eq!(limiter.check("client:0").await.unwrap().remaining(), 2);
    }

    async fn a_check_that_takes_cells_is_a_set_event_and_a_denied_one_fires_nothing(h: Harness) {
        let d = h.open::<u64>().await;
        let seen = support::Collector::new();
        d.register_callback(EventKind::Set, seen.callback()).unwrap();
        let limiter = RateLimiter::new(d, Quota::per_minute(2));
        assert!(limiter.check("k").await.unwrap().allowed());
        assert!(limiter.check("k").await.unwrap().allowed());
        assert!(!limiter.check("k").await.unwrap().allowed());
        assert!(limiter.check_n("k", 0).await.unwrap().allowed());
        support::eventually("two Set events", || seen.len() >= 2).await;
        support::settle().await;
        assert_eq!(seen.keys(), vec!["k", "k"]);
    }

    async fn bad_quotas_costs_and_keys_are_typed_errors(h: Harness) {
        let d = h.open::<u64>().await;
        for quota in [
            Quota::per_second(0),
            Quota::per_minute(10).allow_burst(0),
            Quota::with_period(Duration::ZERO),
            Quota::per_second(2_000_000),
            Quota::per_hour(1).allow_burst(u32::MAX),
        ] {
            assert!(matches!(quota.validate(), Err(Error::InvalidConfig(_))), "{quota:?}");
            let limiter = RateLimiter::new(d.clone(), quota);
            assert!(matches!(limiter.check("k").await, Err(Error::InvalidConfig(_))), "{quota:?}");
        }
        let limiter = RateLimiter::new(d.clone(), Quota::per_second(5));
        assert!(matches!(limiter.check_n("k", 6).await, Err(Error::InvalidConfig(_))));
        assert!(matches!(limiter.check("").await, Err(Error::InvalidKey { .. })));
        assert!(matches!(limiter.check("x".repeat(2000)).await, Err(Error::InvalidKey { .. })));
        assert_eq!(d.len().await.unwrap(), 0, "nothing was written");
        // A store with time_to_idle would forget spent cells: refused.
        let idle: LiveDict<u64> = h.builder().url(&h.url_with("time_to_idle_ms=60000")).build().await.unwrap();
        let on_idle = RateLimiter::new(idle, Quota::per_second(5));
        assert!(matches!(on_idle.check("k").await, Err(Error::InvalidConfig(_))));
        if h.shared() {
            // A key holding something no limiter wrote: a decode error, left in place.
            let other = h.open::<String>().await;
            other.set("taken", "hello".into()).await.unwrap();
            assert!(matches!(limiter.check("taken").await, Err(Error::Decode { .. })));
            assert_eq!(other.get("taken").await.unwrap().as_deref(), Some("hello"));
        }
    }
}

// ---------------------------------------------------------------------------
// Separate processes on one SQLite file or Redis namespace.

/// The child side (a no-op in a normal run): `hammer|url|start_us`, prints
/// `allowed <n> <first check µs> <last reply µs>`.
#[test]
fn child_entry() {
    let Some(role) = child::role() else { return };
    let parts: Vec<&str> = role.splitn(3, '|').collect();
    assert_eq!(parts[0], "hammer");
    let (url, start) = (parts[1].to_owned(), parts[2].parse::<u64>().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (allowed, first, last) = rt.block_on(async move {
        let limiter = RateLimiter::new(LiveDict::open(&url).await.unwrap(), hammer_quota());
        tokio::time::sleep(Duration::from_micros(start.saturating_sub(now_us()))).await;
        let first = now_us();
        let mut allowed = 0;
        for j in hammer(&limiter, "shared", 3, false, HAMMER) {
            allowed += j.await.unwrap();
        }
        (allowed, first, now_us())
    });
    writeln!(std::io::stdout(), "allowed {allowed} {first} {last}").unwrap();
}

/// Three processes hammer one key for [`HAMMER`]; together they stay within the quota.
fn three_processes_share_one_limit(url: &str) {
    let start = now_us() + 1_500_000; // time for the children to open the store
    let mut children: Vec<_> = (0..3).map(|_| child::spawn(&format!("hammer|{url}|{start}"))).collect();
    let (mut allowed, mut first, mut last) = (0, u64::MAX, 0);
    for (mut process, out) in children.drain(..) {
        let lines = child::lines(out);
        assert!(process.wait().unwrap().success(), "child failed: {lines:?}");
        let line = lines.iter().find_map(|l| l.split("allowed ").nth(1)).expect("a result line");
        let nums: Vec<u64> = line.split_whitespace().map(|n| n.parse().unwrap()).collect();
        allowed += nums[0];
        first = first.min(nums[1]);
        last = last.max(nums[2]);
    }
    assert_within_quota(hammer_quota(), allowed, Duration::from_micros(last - first));
}

#[cfg(feature = "sqlite")]
#[test]
fn three_processes_share_one_limit_on_sqlite() {
    three_processes_share_one_limit(Harness::sqlite().url());
}

#[cfg(feature = "redis")]
#[test]
fn three_processes_share_one_limit_on_redis() {
    let Some(h) = Harness::redis() else { return };
    three_processes_share_one_limit(h.url());
}

// ---------------------------------------------------------------------------
// The layer under axum.

mod layer {
    use super::*;
    use axum::{Router, body::Body, routing::get};
    use reqwest::StatusCode;

    fn api_key(req: &http::Request<Body>) -> Option<String> {
        req.headers().get("x-api-key")?.to_str().ok().map(str::to_owned)
    }

    /// Serves a router behind `layer` on a free port; its base URL, and how
    /// many requests reached the handler.
    async fn serve<K>(layer: RateLimitLayer<K>) -> (String, Arc<AtomicU64>)
    where
        K: Fn(&http::Request<Body>) -> Option<String> + Send + Sync + 'static,
    {
        let calls = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&calls);
        let app = Router::new()
            .route(
                "/",
                get(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async { "hello" }
                }),
            )
            .layer(layer);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (base, calls)
    }

    async fn get_with(base: &str, key: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new().get(format!("{base}/"));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.send().await.unwrap()
    }

    fn header(resp: &reqwest::Response, name: &str) -> String {
        resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_over_the_budget_get_429_with_headers_and_never_reach_the_service() {
        let limiter = RateLimiter::new(LiveDict::open("memory://").await.unwrap(), Quota::per_minute(3));
        let (base, calls) = serve(RateLimitLayer::new(limiter, api_key)).await;
        for left in (0..3).rev() {
            let ok = get_with(&base, Some("k1")).await;
            assert_eq!(ok.status(), StatusCode::OK);
            assert_eq!(header(&ok, "ratelimit-policy"), "\"default\";q=3;w=60");
            let rl = header(&ok, "ratelimit");
            assert!(rl.starts_with(&format!("\"default\";r={left};t=")), "{rl}");
            assert_eq!(ok.text().await.unwrap(), "hello");
        }
        let denied = get_with(&base, Some("k1")).await;
        assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = header(&denied, "retry-after").parse().unwrap();
        assert!((19..=20).contains(&retry), "one cell per 20 s, rounded up: {retry}");
        assert_eq!(header(&denied, "ratelimit-policy"), "\"default\";q=3;w=60");
        let rl = header(&denied, "ratelimit");
        assert!(rl.starts_with("\"default\";r=0;t="), "{rl}");
        let t: u64 = rl.rsplit("t=").next().unwrap().parse().unwrap();
        assert!((59..=60).contains(&t), "{rl}");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "the denied request never reached the handler");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_key_has_its_own_budget_and_requests_without_a_key_are_unlimited() {
        let limiter = RateLimiter::new(LiveDict::open("memory://").await.unwrap(), Quota::per_hour(1));
        let (base, calls) = serve(RateLimitLayer::new(limiter, api_key)).await;
        assert_eq!(get_with(&base, Some("a")).await.status(), StatusCode::OK);
        assert_eq!(get_with(&base, Some("a")).await.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(get_with(&base, Some("b")).await.status(), StatusCode::OK);
        assert_eq!(get_with(&base, Some("b")).await.status(), StatusCode::TOO_MANY_REQUESTS);
        for _ in 0..20 {
            let free = get_with(&base, None).await;
            assert_eq!(free.status(), StatusCode::OK);
            assert!(free.headers().get("ratelimit").is_none(), "an unlimited request carries no RateLimit");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 22);
    }

    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_a_dead_redis_the_layer_fails_closed_by_default_or_open_if_asked() {
        let Some(mut server) = support::redis_server::RedisServer::start() else { return };
        let store = LiveDict::<u64>::builder()
            .url(&format!("{}?namespace=limits", server.url()))
            .request_timeout(Duration::from_millis(500))
            .build()
            .await
            .unwrap();
        let limiter = RateLimiter::new(store, Quota::per_second(100));
        let (closed, closed_calls) = serve(RateLimitLayer::new(limiter.clone(), api_key)).await;
        let (open, open_calls) =
            serve(RateLimitLayer::new(limiter, api_key).on_error(OnError::FailOpen)).await;
        assert_eq!(get_with(&closed, Some("k")).await.status(), StatusCode::OK);
        assert_eq!(get_with(&open, Some("k")).await.status(), StatusCode::OK);
        server.kill();
        for _ in 0..2 {
            assert_eq!(get_with(&closed, Some("k")).await.status(), StatusCode::SERVICE_UNAVAILABLE);
            let through = get_with(&open, Some("k")).await;
            assert_eq!(through.status(), StatusCode::OK);
            assert!(through.headers().get("ratelimit").is_none());
        }
        // Requests without a key never touch the store.
        assert_eq!(get_with(&closed, None).await.status(), StatusCode::OK);
        assert_eq!(closed_calls.load(Ordering::SeqCst), 2);
        assert_eq!(open_calls.load(Ordering::SeqCst), 3);
    }
}
