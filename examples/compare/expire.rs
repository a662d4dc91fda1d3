//! Expire-event lateness: 10,000 keys with a TTL on each backend; how long
//! after its deadline each `Expire` event reached a callback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livedict::{Callback, Event, EventKind, LiveDict};

use crate::report::Report;
use crate::{Opts, runtime, value};

type Fired = Arc<Mutex<Vec<(usize, Instant)>>>;

/// Keys per expire row (the scale row has more).
const N: usize = 10_000;

pub fn run(rep: &mut Report, o: &Opts, redis: Option<&crate::redis::Server>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}", dir.path().join("expire.db").display());
    for spread in [true, false] {
        one(rep, o, "memory", "memory://", 10.0, spread, false, N);
        one(rep, o, "sqlite", &sqlite, 10.0, spread, false, N);
        match redis {
            Some(s) => one(rep, o, "redis", &s.url("expire"), 50.0, spread, false, N),
            None => rep.skipped("expire", "redis", "no redis-server on PATH"),
        }
    }
    if let Some(s) = redis {
        // Deadlines written by another instance: two stores on one namespace,
        // one writes, the shards' sweepers are split between them.
        one(rep, o, "redis", &s.url("expire2"), 50.0, true, true, N);
    }
    // At-least-once delivery (leased claims, acknowledged after the callback):
    // beside the at-most-once rows above (goals: p99 15 ms SQLite, 60 ms Redis).
    let durable = |url: &str| {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}expire_delivery=at_least_once")
    };
    for spread in [true, false] {
        one(rep, o, "sqlite", &durable(&sqlite), 15.0, spread, false, N);
        if let Some(s) = redis {
            one(rep, o, "redis", &durable(&s.url("expire3")), 60.0, spread, false, N);
        }
    }
    // Expiry at scale: 100,000 deadlines over one second.
    one(rep, o, "sqlite", &sqlite, 10.0, true, false, 100_000);
    // The same on a local 3-master cluster.
    if let Some(cluster) = crate::redis_server::RedisCluster::start(3, 0) {
        for spread in [true, false] {
            one(rep, o, "cluster", &format!("{}&namespace=expire", cluster.url()), 50.0, spread, false, N);
        }
    }
}

/// `spread`: TTLs from 0.5 s to 1.5 s (deadlines spread evenly over a
/// second, 10,000 expirations/s); else all 1 s (every deadline within the
/// few milliseconds it took to set them: a burst). `two`: a second store on
/// the same namespace writes, and both report (the callback is on both).
/// `n`: keys.
#[allow(clippy::too_many_arguments)]
fn one(
    rep: &mut Report,
    _o: &Opts,
    backend: &str,
    url: &str,
    p99_target_ms: f64,
    spread: bool,
    two: bool,
    n: usize,
) {
    let base = Duration::from_millis(if spread { 500 } else { 1000 });
    let ttl_of = move |i: usize| base + Duration::from_millis(if spread { (i * 1000 / n) as u64 } else { 0 });
    let writers = 32;
    let rt = runtime();
    let d: LiveDict<String> = rt.block_on(LiveDict::open(url)).expect("store");
    rt.block_on(async { d.clear().await.expect("clear") });
    let fired: Fired = Arc::default();
    let writer: LiveDict<String> =
        if two { rt.block_on(LiveDict::open(url)).expect("store") } else { d.clone() };
    let stores = if two { vec![d.clone(), writer.clone()] } else { vec![d.clone()] };
    for store in &stores {
        let f = Arc::clone(&fired);
        store
            .register_callback(
                EventKind::Expire,
                Callback::new(move |ev: &Event<String>| {
                    let at = Instant::now();
                    let i: usize = ev.key()[1..].parse().expect("key index");
                    f.lock().unwrap().push((i, at));
                }),
            )
            .expect("register");
    }
    // Both instances heartbeat before the writes, so the shards are split between them.
    if two {
        std::thread::sleep(Duration::from_millis(1500));
    }
    // Deadlines as seen from here: taken before each call, so the measured
    // lateness is never less than the real one.
    let deadlines: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let v = value();
    let set_started = Instant::now();
    rt.block_on(async {
        let mut hs = Vec::new();
        for t in 0..writers {
            let (d, v, deadlines) = (writer.clone(), v.clone(), Arc::clone(&deadlines));
            hs.push(tokio::spawn(async move {
                for i in crate::part(t, writers, n) {
                    let ttl = ttl_of(i);
                    let at = Instant::now() + ttl;
                    d.set_with_ttl(format!("e{i}"), v.clone(), ttl).await.expect("set");
                    deadlines.lock().unwrap()[i] = Some(at);
                }
            }));
        }
        for h in hs {
            h.await.expect("writer");
        }
    });
    let set_ms = set_started.elapsed().as_secs_f64() * 1e3;
    let deadlines: Vec<Instant> =
        deadlines.lock().unwrap().iter().map(|d| d.expect("every key written")).collect();
    let last = deadlines.iter().max().copied().expect("keys");
    let window = last + Duration::from_secs(5);
    crate::wait_until(window.saturating_duration_since(Instant::now()), || fired.lock().unwrap().len() >= n);
    // A little longer, to catch duplicates.
    std::thread::sleep(Duration::from_millis(200));
    let fired = fired.lock().unwrap().clone();
    let mut count: HashMap<usize, usize> = HashMap::new();
    let mut late = Vec::with_capacity(fired.len());
    for (i, at) in &fired {
        let c = count.entry(*i).or_default();
        *c += 1;
        if *c == 1 {
            let d = deadlines[*i];
            late.push(if *at >= d {
                (*at - d).as_secs_f64() * 1e3
            } else {
                -((d - *at).as_secs_f64() * 1e3)
            });
        }
    }
    let duplicates = count.values().map(|c| c - 1).sum();
    let op = match (spread, two) {
        (_, true) => "expire lateness, other instance writes",
        (true, false) => "expire lateness, deadlines over 1 s",
        (false, false) => "expire lateness, burst",
    };
    let op = if n == N { op.to_owned() } else { format!("{op}, {}k keys", n / 1000) };
    let op = if url.contains("expire_delivery=at_least_once") { format!("{op}, at_least_once") } else { op };
    rep.lateness(
        backend,
        &op,
        n,
        base,
        &mut late,
        count.len(),
        duplicates,
        p99_target_ms,
        &format!(
            "{}; set by {writers} tasks in {:.0} ms; lateness = callback time - (time before set + ttl)",
            if spread { "ttl 500..1500 ms" } else { "ttl 1000 ms" },
            set_ms
        ),
    );
    rt.block_on(async {
        for store in stores {
            store.shutdown().await.expect("shutdown");
        }
    });
}

/// Expiry at scale on memory://: `n` keys (1M) whose deadlines are spread
/// evenly over one second (1M expirations/s), one sync `Expire` callback.
///
/// The deadlines are absolute (`t0 + i/n s`, `t0` a few seconds after the
/// writes start), so they cover exactly one second whatever the write speed;
/// the note says whether the writes finished before the first deadline.
pub fn scale(rep: &mut Report, o: &Opts) {
    let n = o.pick(200_000, 1_000_000);
    let lead = Duration::from_millis(o.pick(2_000, 4_000));
    let writers = 8;
    let rt = runtime();
    let d: LiveDict<String> = rt.block_on(LiveDict::open("memory://")).expect("memory store");
    let fired: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let f = Arc::clone(&fired);
    d.register_callback(
        EventKind::Expire,
        Callback::new(move |ev: &Event<String>| {
            let at = Instant::now();
            let i: u32 = ev.key()[1..].parse().expect("key index");
            f.lock().unwrap().push((i, at));
        }),
    )
    .expect("register");
    let keys: Arc<Vec<String>> = Arc::new((0..n).map(|i| format!("e{i}")).collect());
    let v = value();
    let started = Instant::now();
    let t0 = started + lead;
    let spread_ns = 1_000_000_000u64;
    // Each writer answers the deadlines of its keys as seen from here (taken
    // before each call, so the measured lateness is never less than the real one).
    let parts: Vec<Vec<Instant>> = rt.block_on(async {
        let hs: Vec<_> = (0..writers)
            .map(|t| {
                let (d, v, keys) = (d.clone(), v.clone(), Arc::clone(&keys));
                tokio::spawn(async move {
                    let mut deadlines = Vec::with_capacity(n / writers + 1);
                    for i in crate::part(t, writers, n) {
                        let at = t0 + Duration::from_nanos(i as u64 * spread_ns / n as u64);
                        let now = Instant::now();
                        let ttl = at.saturating_duration_since(now).max(Duration::from_millis(1));
                        d.set_with_ttl(&keys[i], v.clone(), ttl).await.expect("set");
                        deadlines.push(now + ttl);
                    }
                    deadlines
                })
            })
            .collect();
        let mut parts = Vec::new();
        for h in hs {
            parts.push(h.await.expect("writer"));
        }
        parts
    });
    let set_ms = started.elapsed().as_secs_f64() * 1e3;
    let deadlines: Vec<Instant> = parts.into_iter().flatten().collect();
    let last = deadlines.iter().max().copied().expect("keys");
    let window = last + Duration::from_secs(10);
    crate::wait_until(window.saturating_duration_since(Instant::now()), || fired.lock().unwrap().len() >= n);
    // A little longer, to catch duplicates.
    std::thread::sleep(Duration::from_millis(200));
    let fired = std::mem::take(&mut *fired.lock().unwrap());
    let mut count = vec![0u32; n];
    let mut late = Vec::with_capacity(fired.len());
    for (i, at) in &fired {
        let i = *i as usize;
        count[i] += 1;
        if count[i] == 1 {
            let d = deadlines[i];
            late.push(if *at >= d {
                (*at - d).as_secs_f64() * 1e3
            } else {
                -((d - *at).as_secs_f64() * 1e3)
            });
        }
    }
    let delivered = count.iter().filter(|&&c| c > 0).count();
    let duplicates = count.iter().map(|&c| c.saturating_sub(1) as usize).sum();
    let stats = d.stats();
    rep.lateness(
        "memory",
        &format!("expire at scale, {}k keys over 1 s", n / 1000),
        n,
        lead,
        &mut late,
        delivered,
        duplicates,
        50.0,
        &format!(
            "deadlines t0 + i/n s (t0 = start + {} ms), 1 sync Expire callback; set by {writers} tasks in {set_ms:.0} ms{}; \
             events dropped {}; lateness = callback time - (time before set + ttl)",
            lead.as_millis(),
            if set_ms <= lead.as_secs_f64() * 1e3 { "" } else { " (PAST the first deadline)" },
            stats.events_dropped,
        ),
    );
    rt.block_on(async { d.shutdown().await.expect("shutdown") });
}
