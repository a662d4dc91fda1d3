//! Rate-limit rows (`ratelimit` suite, feature `ratelimit`): one GCRA check
//! (`RateLimiter::check`) per operation.
//!
//! - memory: livedict's limiter on `memory://` against `governor`'s keyed
//!   limiter (`DefaultKeyedRateLimiter<String>`, a DashMap), 1 task / 1 thread;
//! - Redis: against raw fred `EVALSHA` of an equivalent GCRA script (the
//!   server's `TIME`, `GET`, `SET … PX`), 1 and 50 tasks;
//! - SQLite: 1 and 32 tasks (no raw row: each check is a write of the group commit).
//!
//! Workload: 1,000 keys (10,000 on memory) checked in turn, nearly every
//! check allowed (both sides), under two quotas:
//!
//! - `churn`: 1,000/s, burst 1,000: a check leaves 1 ms of state, so every
//!   key's entry has expired before the key comes back (each check creates
//!   an entry, and the store expires it: on livedict an `Expire` each);
//! - `active`: 1/s, burst 10,000: every key keeps its state through the run
//!   (each check rewrites a live entry; nothing expires).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;

use fred::prelude::*;
use fred::types::Value as RedisValue;
use fred::types::scripts::Script;
use livedict::LiveDict;
use livedict::ratelimit::{Quota, RateLimiter};

use crate::redis::Server;
use crate::report::{Report, Target};
use crate::{Opts, best, best_pair, keys, on_tasks, on_threads, part, runtime};

/// The two quotas (see the module docs): `(name, rate per second, burst)`.
const WORKLOADS: [(&str, u32, u32); 2] = [("churn", 1000, 1000), ("active", 1, 10_000)];

/// One quota of [`WORKLOADS`].
struct Workload {
    name: &'static str,
    rate: u32,
    burst: u32,
}

impl Workload {
    fn quota(&self) -> Quota {
        Quota::per_second(self.rate).allow_burst(self.burst)
    }

    fn describe(&self) -> String {
        format!("{}: {}/s burst {}", self.name, self.rate, self.burst)
    }
}

/// GCRA in one script, the way it is usually written by hand (redis-cell's
/// `CL.THROTTLE`, Stripe's write-up): the same numbers as livedict's check,
/// without its layout (no lock check, deadline index or entry count).
/// `ARGV`: interval µs, tolerance µs, cost → `{allowed, remaining or retry µs}`.
const RAW_GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tau, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + interval * cost
if new - tau > now then return {0, new - tau - now} end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000))
return {1, math.floor((now + tau - new) / interval)}
"#;

pub fn run(rep: &mut Report, o: &Opts, server: Option<&Server>) {
    for (name, rate, burst) in WORKLOADS {
        let w = Workload { name, rate, burst };
        memory(rep, o, &w);
        let dir = tempfile::tempdir().expect("temp dir");
        sqlite(rep, o, &w, &format!("sqlite://{}", dir.path().join("ratelimit.db").display()));
        match server {
            Some(server) => redis(rep, o, &w, server),
            None => rep.skipped("ratelimit", "redis", "no redis-server on PATH"),
        }
    }
}

/// livedict on `memory://` against governor's keyed limiter, 1 task / 1 thread.
fn memory(rep: &mut Report, o: &Opts, w: &Workload) {
    let rt = runtime();
    let keys = Arc::new(keys(10_000));
    let ops = o.pick(200_000, 1_000_000);
    let rate = NonZeroU32::new(w.rate).expect("non-zero");
    let burst = NonZeroU32::new(w.burst).expect("non-zero");
    let (mut raw_allowed, mut live_allowed) = (0usize, 0usize);
    let raw = || {
        // A fresh limiter each round, as livedict's store below.
        let governor = governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst));
        let allowed = std::sync::atomic::AtomicUsize::new(0);
        let t = on_threads(1, |_| {
            let mut n = 0;
            for i in 0..ops {
                n += usize::from(black_box(governor.check_key(&keys[i % keys.len()])).is_ok());
            }
            allowed.store(n, std::sync::atomic::Ordering::Relaxed);
        });
        raw_allowed = allowed.into_inner();
        t
    };
    let live = || {
        let limiter = RateLimiter::new(rt.block_on(LiveDict::open("memory://")).expect("store"), w.quota());
        let allowed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = on_tasks(&rt, 1, |_| {
            let (limiter, keys, allowed) = (limiter.clone(), Arc::clone(&keys), Arc::clone(&allowed));
            async move {
                let mut n = 0;
                for i in 0..ops {
                    n += usize::from(limiter.check(&keys[i % keys.len()]).await.expect("check").allowed());
                }
                allowed.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        });
        live_allowed = allowed.load(std::sync::atomic::Ordering::Relaxed);
        t
    };
    let (r, l) = best_pair(o.rounds(), ops, raw, live);
    let note = format!(
        "1 task; 10,000 keys in turn, {}; raw: governor 0.10 keyed (DashMap), 1 thread; \
         allowed in the last round: livedict {live_allowed}, governor {raw_allowed} of {ops}",
        w.describe()
    );
    let op = format!("check vs governor keyed ({})", w.name);
    rep.ops("ratelimit", "memory", &op, 1, l, Some(r), Target::Ratio(0.5), &note);
}

/// livedict on SQLite, 1 and 32 tasks.
fn sqlite(rep: &mut Report, o: &Opts, w: &Workload, url: &str) {
    let rt = runtime();
    let limiter = RateLimiter::new(rt.block_on(LiveDict::open(url)).expect("store"), w.quota());
    let keys = Arc::new(keys(1000));
    for tasks in [1, 32] {
        let ops = if tasks == 1 { o.pick(5_000, 20_000) } else { o.pick(20_000, 100_000) };
        let per_s = best(o.rounds(), ops, || {
            on_tasks(&rt, tasks, |t| {
                let (limiter, keys) = (limiter.clone(), Arc::clone(&keys));
                async move {
                    for i in part(t, tasks, ops) {
                        black_box(limiter.check(&keys[i % keys.len()]).await.expect("check"));
                    }
                }
            })
        });
        let note = format!(
            "{tasks} task(s); 1,000 keys in turn, {}; each check one write of the group commit",
            w.describe()
        );
        let op = format!("check ({})", w.name);
        rep.ops("ratelimit", "sqlite", &op, tasks, per_s, None, Target::None, &note);
    }
    rt.block_on(limiter.store().shutdown()).expect("shutdown");
}

/// livedict on Redis against raw fred `EVALSHA` of [`RAW_GCRA`], 1 and 50 tasks.
fn redis(rep: &mut Report, o: &Opts, w: &Workload, server: &Server) {
    let rt = runtime();
    let raw = crate::redis::raw_client(&rt, &server.raw_url());
    let script = Arc::new(Script::from_lua(RAW_GCRA));
    let store = rt.block_on(LiveDict::open(&server.url(&format!("ratelimit-{}", w.name)))).expect("store");
    let limiter = RateLimiter::new(store, w.quota());
    let keys = Arc::new(keys(1000));
    let raw_keys: Arc<Vec<String>> =
        Arc::new(keys.iter().map(|k| format!("rl:{}:{{{k}}}", w.name)).collect());
    let interval = w.quota().interval().as_micros() as i64;
    let tau = interval * i64::from(w.burst);
    for tasks in [1, 50] {
        let ops = if tasks == 1 { o.pick(10_000, 40_000) } else { o.pick(40_000, 200_000) };
        let raw_run = || {
            on_tasks(&rt, tasks, |t| {
                let (c, script, keys) = (raw.clone(), Arc::clone(&script), Arc::clone(&raw_keys));
                async move {
                    for i in part(t, tasks, ops) {
                        let key = keys[i % keys.len()].clone();
                        let args: Vec<RedisValue> = vec![interval.into(), tau.into(), 1i64.into()];
                        let got: RedisValue =
                            script.evalsha_with_reload(&c, vec![key], args).await.expect("EVALSHA");
                        black_box(got);
                    }
                }
            })
        };
        let live_run = || {
            on_tasks(&rt, tasks, |t| {
                let (limiter, keys) = (limiter.clone(), Arc::clone(&keys));
                async move {
                    for i in part(t, tasks, ops) {
                        black_box(limiter.check(&keys[i % keys.len()]).await.expect("check"));
                    }
                }
            })
        };
        let (r, l) = best_pair(o.rounds(), ops, raw_run, live_run);
        let target = if tasks == 1 { Target::Ratio(0.9) } else { Target::None };
        let note = format!(
            "{tasks} task(s); 1,000 keys in turn, {}; raw: fred `EVALSHA` of a GCRA script \
             (TIME, GET, SET PX) on one connection",
            w.describe()
        );
        let op = format!("check vs raw EVALSHA GCRA ({})", w.name);
        rep.ops("ratelimit", "redis", &op, tasks, l, Some(r), target, &note);
    }
    rt.block_on(async {
        limiter.store().shutdown().await.expect("shutdown");
        let _ = raw.quit().await;
    });
}
