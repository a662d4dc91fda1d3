//! A soak: tasks looping over a mix of livedict calls for a while, on every
//! backend, as an application under steady load would (issue 38).
//!
//! ```text
//! cargo run --release --example soak -- [--seconds 60] [--backends memory,sqlite,redis]
//!                                       [--tasks 8] [--keys 50000] [--lock-timeout-ms 200] [--json]
//! ```
//!
//! Each of `--tasks` tasks, on a 2-worker runtime, loops over
//! `set_with_ttl` (a TTL of 50-500 ms, so entries keep expiring), `get`,
//! `delete`, `exists`, and `lock` (with `--lock-timeout-ms`) + a guarded
//! `set` + `unlock`, on random keys of a space of `--keys`, for `--seconds`
//! per backend. It reports, per backend: operations per second, operations
//! slower than 10 ms and than 100 ms, the slowest one, errors by kind, and
//! the process's resident memory sampled at every sixth of the run. The goal
//! (SPEC.md, issue 38): no `LockTimeout`, no operation over 50 ms, and RSS
//! flat after the first third (at most 2 MB of growth).
//!
//! Redis runs against a private `redis-server` started on a leased loopback
//! port (the test harness's), skipped when none is on `PATH`.

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livedict::{Error, LiveDict};
use rand::Rng;

/// Run settings.
struct Opts {
    seconds: u64,
    backends: Vec<String>,
    tasks: usize,
    keys: usize,
    lock_timeout: Duration,
    json: bool,
}

fn die(msg: &str) -> ! {
    eprintln!("soak: {msg}");
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut o = Opts {
        seconds: 60,
        backends: vec!["memory".into(), "sqlite".into(), "redis".into()],
        tasks: 8,
        keys: 50_000,
        lock_timeout: Duration::from_millis(200),
        json: false,
    };
    let mut args = std::env::args().skip(1);
    let number = |a: Option<String>, name: &str| -> u64 {
        a.and_then(|s| s.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| die(&format!("{name} needs a positive number")))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => o.seconds = number(args.next(), "--seconds"),
            "--tasks" => o.tasks = number(args.next(), "--tasks") as usize,
            "--keys" => o.keys = number(args.next(), "--keys") as usize,
            "--lock-timeout-ms" => {
                o.lock_timeout = Duration::from_millis(number(args.next(), "--lock-timeout-ms"))
            }
            "--backends" => {
                let list = args.next().unwrap_or_else(|| die("--backends needs a list"));
                o.backends = list.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(b) =
                    o.backends.iter().find(|b| !["memory", "sqlite", "redis"].contains(&b.as_str()))
                {
                    die(&format!("unknown backend `{b}` (memory, sqlite, redis)"));
                }
            }
            "--json" => o.json = true,
            "-h" | "--help" => {
                println!(
                    "soak [--seconds 60] [--backends memory,sqlite,redis] [--tasks 8] [--keys 50000] [--lock-timeout-ms 200] [--json]"
                );
                std::process::exit(0);
            }
            other => die(&format!("unknown argument `{other}`")),
        }
    }
    o
}

/// What the tasks of one run saw.
#[derive(Default)]
struct Tally {
    ops: u64,
    over_10ms: u64,
    over_100ms: u64,
    slowest: Duration,
    slowest_op: &'static str,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, op: &'static str, took: Duration, outcome: Result<(), Error>) {
        self.ops += 1;
        if took > Duration::from_millis(10) {
            self.over_10ms += 1;
        }
        if took > Duration::from_millis(100) {
            self.over_100ms += 1;
        }
        if took > self.slowest {
            self.slowest = took;
            self.slowest_op = op;
        }
        if let Err(e) = outcome {
            *self.errors.entry(error_kind(&e)).or_default() += 1;
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ops += other.ops;
        self.over_10ms += other.over_10ms;
        self.over_100ms += other.over_100ms;
        if other.slowest > self.slowest {
            self.slowest = other.slowest;
            self.slowest_op = other.slowest_op;
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }
}

/// The variant name of an error (`LockTimeout`, `Backend`, …).
fn error_kind(e: &Error) -> String {
    let debug = format!("{e:?}");
    debug.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("Error").to_owned()
}

/// Resident memory of this process in MB (`/proc/self/statm`).
fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / 1e6
}

/// One task's loop until `stop`.
async fn work(d: LiveDict<String>, keys: usize, lock_timeout: Duration, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let value = "v".repeat(100);
    while !stop.load(Ordering::Relaxed) {
        let (key, pick, ttl) = {
            let mut rng = rand::rng();
            (
                format!("k{}", rng.random_range(0..keys)),
                rng.random_range(0..10u32),
                rng.random_range(50..500u64),
            )
        };
        let started = Instant::now();
        let (op, outcome) = match pick {
            0..=2 => ("set_with_ttl", d.set_with_ttl(&key, value.clone(), Duration::from_millis(ttl)).await),
            3..=5 => ("get", d.get(&key).await.map(drop)),
            6 => ("delete", d.delete(&key).await.map(drop)),
            7 => ("exists", d.exists(&key).await.map(drop)),
            _ => (
                "lock",
                async {
                    let guard = d.lock(&key, lock_timeout).await?;
                    guard.set(value.clone()).await?;
                    guard.unlock().await
                }
                .await,
            ),
        };
        tally.record(op, started.elapsed(), outcome);
    }
    tally
}

/// Runs the mix on `url` for the configured time; prints and returns whether it met the goal.
fn soak(o: &Opts, backend: &str, url: &str) -> bool {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let d: LiveDict<String> =
        rt.block_on(LiveDict::open(url)).unwrap_or_else(|e| die(&format!("{backend}: {e}")));
    let stop = Arc::new(AtomicBool::new(false));
    let rss = Arc::new(Mutex::new(vec![rss_mb()]));
    let run = Duration::from_secs(o.seconds);
    let sampler = {
        let (stop, rss) = (Arc::clone(&stop), Arc::clone(&rss));
        std::thread::spawn(move || {
            for _ in 0..6 {
                let until = Instant::now() + run / 6;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                rss.lock().unwrap().push(rss_mb());
            }
        })
    };
    let started = Instant::now();
    let tasks: Vec<_> =
        (0..o.tasks).map(|_| rt.spawn(work(d.clone(), o.keys, o.lock_timeout, Arc::clone(&stop)))).collect();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    rt.block_on(async {
        for t in tasks {
            tally.merge(t.await.expect("soak task panicked"));
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    sampler.join().expect("sampler");
    rt.block_on(d.shutdown()).unwrap_or_else(|e| die(&format!("{backend}: shutdown: {e}")));
    let rss = rss.lock().unwrap().clone();
    // Growth after the first third: the last sample against the one at 2/6.
    let growth = rss.last().copied().unwrap_or(0.0) - rss.get(2).copied().unwrap_or(0.0);
    let lock_timeouts = tally.errors.get("LockTimeout").copied().unwrap_or(0);
    let met = lock_timeouts == 0 && tally.slowest <= Duration::from_millis(50) && growth <= 2.0;
    let rss_list: Vec<String> = rss.iter().map(|m| format!("{m:.1}")).collect();
    let errors: Vec<String> = tally.errors.iter().map(|(k, n)| format!("\"{k}\":{n}")).collect();
    println!(
        "{{\"backend\":\"{backend}\",\"seconds\":{:.1},\"tasks\":{},\"keys\":{},\"ops_per_s\":{:.0},\"over_10ms\":{},\"over_100ms\":{},\"slowest_ms\":{:.2},\"slowest_op\":\"{}\",\"errors\":{{{}}},\"rss_mb\":[{}],\"rss_growth_after_third_mb\":{:.1},\"goal_met\":{}}}",
        elapsed,
        o.tasks,
        o.keys,
        tally.ops as f64 / elapsed,
        tally.over_10ms,
        tally.over_100ms,
        tally.slowest.as_secs_f64() * 1e3,
        tally.slowest_op,
        errors.join(","),
        rss_list.join(","),
        growth,
        met
    );
    if !o.json {
        eprintln!(
            "soak {backend:<7} {:>9.0} ops/s  >10ms {:>6}  >100ms {:>5}  slowest {:>7.2} ms ({})  errors {:?}  RSS MB {}  growth after 1/3 {:+.1} MB  goal {}",
            tally.ops as f64 / elapsed,
            tally.over_10ms,
            tally.over_100ms,
            tally.slowest.as_secs_f64() * 1e3,
            tally.slowest_op,
            tally.errors,
            rss_list.join(" → "),
            growth,
            if met { "met" } else { "MISSED" }
        );
    }
    met
}

fn main() {
    let o = parse();
    let mut all_met = true;
    for backend in &o.backends {
        match backend.as_str() {
            "memory" => all_met &= soak(&o, "memory", "memory://"),
            "sqlite" => {
                let dir = tempfile::tempdir().expect("temp dir");
                all_met &= soak(&o, "sqlite", &format!("sqlite://{}", dir.path().join("soak.db").display()));
            }
            _ => match redis_server::RedisServer::start() {
                Some(server) => all_met &= soak(&o, "redis", &format!("{}?namespace=soak", server.url())),
                None => eprintln!("soak: redis skipped (no redis-server on PATH)"),
            },
        }
    }
    std::process::exit(if all_met { 0 } else { 1 });
}
