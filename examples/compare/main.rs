//! The comparison bench: livedict next to the raw engine it sits on, in one
//! process and one run, so that noise on a shared machine cancels out in the
//! ratios.
//!
//! ```text
//! cargo run --release --example compare --all-features -- [--quick] [--only memory,sqlite,redis,expire,callback,lock,memory-size,memory-rss,expire-scale,batch,scan,ratelimit] [--json] [--svg DIR]
//! ```
//!
//! - `memory`: `get` / `set` / `set_with_ttl` through the full default stack
//!   (`LiveDict::open("memory://")`, async, 1 and 2 tasks) and the blocking
//!   facade (1 and 2 threads), next to raw `moka::sync::Cache` (1 and 2 threads).
//! - `lock`: uncontended `lock` + `unlock` round trip on the memory store.
//! - `callback`: `set` + 1 sync / 1 async callback, end to end: events
//!   delivered to the callback per second, until every event arrived.
//! - `expire`: lateness of `Expire` events after their deadline, 10,000 keys,
//!   on every backend (p50/p99/max, delivered, duplicates), and 100,000 keys
//!   over one second on SQLite.
//! - `sqlite`: async `set` (1 and 32 tasks) and blocking `set` (1 thread) vs
//!   raw rusqlite WAL autocommit one at a time, each round half new keys and
//!   half updates, at `synchronous=NORMAL` and `FULL`; blocking `set` vs
//!   Python diskcache on the same workload (`$COMPARE_PYTHON`, when it has
//!   diskcache); `get` (1 and 8 tasks) vs a raw prepared `SELECT`; async
//!   `set` with `max_capacity` (every round evicting half its writes) vs
//!   without (1 and 32 tasks).
//! - `redis`: `get`/`set` with 1 and 50 tasks vs raw fred, same server, same
//!   tasks. A private `redis-server` is started on a free loopback port (and
//!   killed at the end) when one is on `PATH`; otherwise the rows are skipped.
//!   livedict runs with its defaults (a pool of half the CPUs); append URL
//!   options with e.g. `COMPARE_REDIS_OPTS='&pool_size=1'`.
//! - `memory-size`: heap bytes per entry (100-byte values, with a TTL) vs a
//!   plain `HashMap<String, String>`, counted by this program's allocator.
//! - `memory-rss`: resident memory per TTL'd entry at 1M keys: the RSS growth
//!   (`/proc/self/statm`) while filling `memory://`, next to raw moka, each in
//!   a fresh child process.
//! - `batch`: `get_many` / `set_many` of 100 and 1,000 keys (keys/s, 1 task)
//!   against the same number of single `get` / `set` calls on memory, SQLite
//!   and Redis, and on Redis against raw fred `MGET` / pipelined `SET`s.
//! - `expire-scale`: 1M keys on `memory://` with deadlines spread evenly over
//!   one second (1M expirations/s), one sync `Expire` callback: delivered
//!   count and lateness (p99 goal 50 ms).
//! - `scan`: `scan("")` of 1M entries on memory and SQLite: entries/s and the
//!   peak RSS growth during the scan next to the data's RSS (see `scan.rs`).
//! - `ratelimit` (feature `ratelimit`): `RateLimiter::check` on memory vs
//!   `governor`'s keyed limiter, on Redis vs raw fred `EVALSHA` of a GCRA
//!   script (1 and 50 tasks), on SQLite with 1 and 32 tasks (see `ratelimit.rs`).
//!
//! Workload everywhere: keys `k0..kN` built before timing, 100-byte `String`
//! values. Throughputs are the best of several rounds, raw and livedict
//! alternating, so both see the same machine. Output: one JSON object per row
//! (stdout), then a table (skipped with `--json`). With `--svg DIR`, also two
//! charts drawn with `plotters` (see `svg.rs`): `DIR/ratios.svg` (livedict ÷
//! raw per row, targets marked) and `DIR/expire_lateness.svg` (the CDF of
//! expire lateness per backend and scenario).

mod alloc;
mod batch;
mod callback;
mod expire;
mod memory;
#[cfg(feature = "ratelimit")]
mod ratelimit;
mod redis;
#[path = "../../tests/support/redis_server.rs"]
mod redis_server;
mod report;
mod scan;
mod sqlite;
mod svg;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use report::Report;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Length of every value.
pub const VALUE_LEN: usize = 100;

/// Run settings.
pub struct Opts {
    pub quick: bool,
    pub json_only: bool,
    only: Option<Vec<String>>,
    /// Where `--svg` writes the charts.
    svg: Option<PathBuf>,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts { quick: false, json_only: false, only: None, svg: None };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                // Internal: one measurement of the `memory-rss` suite, in a fresh process.
                "--rss-child" => {
                    let kind = args.next().unwrap_or_else(|| die("--rss-child needs a store"));
                    let n = args
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| die("--rss-child needs N"));
                    memory::rss_child(&kind, n);
                    std::process::exit(0);
                }
                "--json" => o.json_only = true,
                "--only" => {
                    let list = args.next().unwrap_or_else(|| die("--only needs a list"));
                    o.only = Some(list.split(',').map(|s| s.trim().to_owned()).collect());
                }
                "--svg" => {
                    let dir = args.next().unwrap_or_else(|| die("--svg needs a directory"));
                    o.svg = Some(PathBuf::from(dir));
                }
                "-h" | "--help" => {
                    println!(
                        "compare [--quick] [--only memory,sqlite,redis,expire,callback,lock,memory-size,memory-rss,expire-scale,batch,scan,ratelimit] [--json] [--svg DIR]\n\n\
                         --quick        fewer keys and rounds (~1 min instead of ~7)\n\
                         --only LIST    run only these suites (comma-separated)\n\
                         --json         print only the JSON rows, no table\n\
                         --svg DIR      also write DIR/ratios.svg (livedict / raw per row, targets marked)\n\
                         \x20              and DIR/expire_lateness.svg (expire lateness CDF per backend)"
                    );
                    std::process::exit(0);
                }
                other => die(&format!("unknown argument `{other}`")),
            }
        }
        if let Some(only) = &o.only {
            for s in only {
                if !SUITES.contains(&s.as_str()) {
                    die(&format!("unknown suite `{s}` (expected one of {})", SUITES.join(",")));
                }
            }
        }
        o
    }

    fn wants(&self, suite: &str) -> bool {
        self.only.as_ref().is_none_or(|v| v.iter().any(|s| s == suite))
    }

    /// Rounds of each throughput measurement (the best is kept).
    pub fn rounds(&self) -> usize {
        if self.quick { 2 } else { 7 }
    }

    /// Picks the quick or the full value.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

const SUITES: [&str; 12] = [
    "memory",
    "sqlite",
    "redis",
    "expire",
    "callback",
    "lock",
    "memory-size",
    "memory-rss",
    "expire-scale",
    "batch",
    "scan",
    "ratelimit",
];

fn die(msg: &str) -> ! {
    eprintln!("compare: {msg}");
    std::process::exit(2)
}

/// `k0..k{n-1}`.
pub fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

/// A 100-byte value.
pub fn value() -> String {
    "v".repeat(VALUE_LEN)
}

/// The slice of `0..ops` task `t` of `tasks` works on.
pub fn part(t: usize, tasks: usize, ops: usize) -> std::ops::Range<usize> {
    ops * t / tasks..ops * (t + 1) / tasks
}

/// Runs `body(t)` on `tasks` Tokio tasks at once; returns the wall time until all finished.
pub fn on_tasks<F, Fut>(rt: &tokio::runtime::Runtime, tasks: usize, body: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks).map(|t| rt.spawn(body(t))).collect();
    rt.block_on(async {
        for h in handles {
            h.await.expect("bench task panicked");
        }
    });
    started.elapsed().as_secs_f64()
}

/// Runs `body(t)` on `threads` OS threads at once; returns the wall time until all finished.
pub fn on_threads<F>(threads: usize, body: F) -> f64
where
    F: Fn(usize) + Sync,
{
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let body = &body;
            s.spawn(move || body(t));
        }
    });
    started.elapsed().as_secs_f64()
}

/// Best throughput (ops/s) of `ops` operations over rounds of `measure`.
pub fn best(rounds: usize, ops: usize, mut measure: impl FnMut() -> f64) -> f64 {
    (0..rounds.max(1)).map(|_| ops as f64 / measure()).fold(0.0, f64::max)
}

/// Best throughputs of two measurements, alternated round by round.
pub fn best_pair(
    rounds: usize,
    ops: usize,
    mut raw: impl FnMut() -> f64,
    mut live: impl FnMut() -> f64,
) -> (f64, f64) {
    let (mut r, mut l) = (0.0f64, 0.0f64);
    for _ in 0..rounds.max(1) {
        r = r.max(ops as f64 / raw());
        l = l.max(ops as f64 / live());
    }
    (r, l)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// Waits (polling) until `done()` or `timeout`; true if done.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    done()
}

fn main() {
    let o = Opts::parse();
    let started = Instant::now();
    let mut rep = Report::new(o.json_only);
    rep.meta(&o);

    if o.wants("memory") {
        memory::run(&mut rep, &o);
    }
    if o.wants("lock") {
        memory::lock(&mut rep, &o);
    }
    if o.wants("callback") {
        callback::run(&mut rep, &o);
    }
    if o.wants("memory-size") {
        memory::size(&mut rep, &o);
    }
    if o.wants("memory-rss") {
        memory::rss(&mut rep, &o);
    }
    if o.wants("expire-scale") {
        expire::scale(&mut rep, &o);
    }
    let server = if ["redis", "expire", "batch", "scan", "ratelimit"].iter().any(|s| o.wants(s)) {
        redis::Server::start()
    } else {
        None
    };
    if o.wants("scan") {
        scan::run(&mut rep, &o, server.as_ref());
    }
    if o.wants("sqlite") {
        sqlite::run(&mut rep, &o);
    }
    if o.wants("redis") {
        redis::run(&mut rep, &o, server.as_ref());
    }
    if o.wants("expire") {
        expire::run(&mut rep, &o, server.as_ref());
    }
    if o.wants("batch") {
        batch::run(&mut rep, &o, server.as_ref());
    }
    if o.wants("ratelimit") {
        #[cfg(feature = "ratelimit")]
        ratelimit::run(&mut rep, &o, server.as_ref());
        #[cfg(not(feature = "ratelimit"))]
        rep.skipped("ratelimit", "all", "built without the `ratelimit` feature (use --all-features)");
    }
    drop(server);
    rep.table(started.elapsed());
    if let Some(dir) = &o.svg {
        match svg::write(&rep, dir) {
            Ok(files) => {
                for f in files {
                    eprintln!("compare: wrote {}", f.display());
                }
            }
            Err(e) => die(&format!("--svg {}: {e}", dir.display())),
        }
    }
}
