//! Redis rows: livedict next to raw fred, same server, same number of tasks.

use std::hint::black_box;
use std::sync::Arc;

use fred::bytes::Bytes;
use fred::prelude::*;
use livedict::LiveDict;

use crate::report::{Report, Target};
use crate::{Opts, keys, on_tasks, part, runtime, value};

/// A private `redis-server` from the test harness (a leased loopback port,
/// proven to be ours by its pid); killed (by its pid) on drop.
pub struct Server {
    inner: crate::redis_server::RedisServer,
}

impl Server {
    /// Starts one if `redis-server` is on `PATH`.
    pub fn start() -> Option<Server> {
        crate::redis_server::RedisServer::start().map(|inner| Server { inner })
    }

    /// The livedict URL of `namespace` on this server.
    pub fn url(&self, namespace: &str) -> String {
        format!(
            "redis://127.0.0.1:{}/0?namespace={namespace}{}",
            self.inner.port(),
            std::env::var("COMPARE_REDIS_OPTS").unwrap_or_default()
        )
    }

    pub fn raw_url(&self) -> String {
        self.inner.url()
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.inner.port()
    }
}

pub fn run(rep: &mut Report, o: &Opts, server: Option<&Server>) {
    let Some(server) = server else {
        rep.skipped("redis", "redis", "no redis-server on PATH");
        return;
    };
    let opts = std::env::var("COMPARE_REDIS_OPTS").unwrap_or_default();
    throughput(rep, o, "redis", &server.raw_url(), &|ns| server.url(ns), &[server.inner.port()]);
    atomics(rep, o, "redis", &server.raw_url(), &server.url("atomics"));
    memory(rep, o, server);
    idle(rep, "redis", &[server.inner.port()], &server.url("idle"));
    // The same rows on a local 3-master cluster, raw fred on the same cluster.
    match crate::redis_server::RedisCluster::start(3, 0) {
        Some(cluster) => {
            let url = cluster.url();
            let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
            throughput(rep, o, "cluster", &url, &|ns| format!("{url}&namespace={ns}{opts}"), &ports);
            atomics(rep, o, "cluster", &url, &format!("{url}&namespace=atomics{opts}"));
            idle(rep, "cluster", &ports, &format!("{url}&namespace=idle{opts}"));
            spread(rep, &cluster, &format!("{url}&namespace=spread{opts}"));
        }
        None => rep.skipped("redis", "cluster", "no redis-server on PATH"),
    }
}

/// Connects a raw fred client (a cluster client for `redis-cluster://`).
pub fn raw_client(rt: &tokio::runtime::Runtime, url: &str) -> Client {
    rt.block_on(async {
        let client = Builder::from_config(Config::from_url(url).expect("url"))
            .with_connection_config(|c| c.tcp = TcpConfig { nodelay: Some(true), ..Default::default() })
            .build()
            .expect("fred client");
        client.init().await.expect("connect");
        client
    })
}

/// `used_memory` of the server on `port`.
pub fn used_memory(port: u16) -> f64 {
    let info = crate::redis_server::command(port, &["INFO", "memory"]).expect("INFO memory");
    crate::redis_server::info_field(&info, "used_memory").and_then(|v| v.parse().ok()).expect("used_memory")
}

/// Bytes per entry in Redis: livedict against raw `SET k v PX ttl` / `SET k v`, same keys and values.
fn memory(rep: &mut Report, o: &Opts, server: &Server) {
    // Enough entries that fixed costs (script cache, connection buffers, table growth) do not count.
    let n = o.pick(20_000, 50_000);
    let port = server.inner.port();
    let rt = runtime();
    let raw = raw_client(&rt, &server.raw_url());
    let v = value();
    for ttl in [true, false] {
        let flush = || crate::redis_server::command(port, &["FLUSHALL", "SYNC"]).expect("FLUSHALL");
        flush();
        let before = used_memory(port);
        rt.block_on(async {
            for i in 0..n {
                let expire = ttl.then_some(Expiration::PX(600_000));
                let _: () = raw.set(format!("key:{i}"), v.as_str(), expire, None, false).await.expect("SET");
            }
        });
        let raw_bytes = (used_memory(port) - before) / n as f64;
        flush();
        let d: LiveDict<String> = rt.block_on(LiveDict::open(&server.url("mem"))).expect("store");
        let before = used_memory(port);
        rt.block_on(async {
            for i in 0..n {
                let k = format!("key:{i}");
                if ttl {
                    d.set_with_ttl(&k, v.clone(), std::time::Duration::from_secs(600)).await.expect("set");
                } else {
                    d.set(&k, v.clone()).await.expect("set");
                }
            }
            assert_eq!(d.len().await.expect("len"), n, "every entry is there");
        });
        let live_bytes = (used_memory(port) - before) / n as f64;
        rt.block_on(d.shutdown()).expect("shutdown");
        let (op, bound, raw_cmd) = if ttl {
            ("bytes/entry, TTL'd, 100 B value", 1.5, "SET k v PX ttl")
        } else {
            ("bytes/entry, no TTL, 100 B value", 1.2, "SET k v")
        };
        let ratio = live_bytes / raw_bytes;
        let note = format!("INFO used_memory over {n} entries; raw: `{raw_cmd}` on the same keys");
        rep.measure(
            "redis-size",
            "redis",
            op,
            live_bytes,
            Some(raw_bytes),
            "B",
            &format!("<= {bound}x raw"),
            ratio <= bound,
            &note,
        );
    }
    crate::redis_server::command(port, &["FLUSHALL", "SYNC"]).expect("FLUSHALL");
    rt.block_on(async {
        let _ = raw.quit().await;
    });
}

/// Commands per second an idle instance sends (one key with a far deadline), from
/// `INFO stats` on every node; nothing else is connected.
fn idle(rep: &mut Report, backend: &str, ports: &[u16], url: &str) {
    let rt = runtime();
    let d: LiveDict<String> = rt.block_on(LiveDict::open(url)).expect("store");
    rt.block_on(d.set_with_ttl("far", "v".into(), std::time::Duration::from_secs(3600))).expect("set");
    std::thread::sleep(std::time::Duration::from_secs(2)); // settle: heartbeat, first sweeps
    let total = || -> f64 {
        ports
            .iter()
            .filter_map(|&p| {
                let info = crate::redis_server::command(p, &["INFO", "stats"]).ok()?;
                crate::redis_server::info_field(&info, "total_commands_processed")?.parse::<f64>().ok()
            })
            .sum()
    };
    let secs = 5.0;
    let c0 = total();
    std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    // Our own INFO calls (one per node) are counted too.
    let per_s = (total() - c0 - ports.len() as f64) / secs;
    rt.block_on(d.shutdown()).expect("shutdown");
    let note = format!("{} node(s), one store with one key due in an hour, {secs:.0} s", ports.len());
    rep.measure(
        "redis-idle",
        backend,
        "commands/s, idle instance",
        per_s,
        None,
        "cmd/s",
        "<= 20",
        per_s <= 20.0,
        &note,
    );
}

/// Keys of one namespace per master of the cluster (3,000 TTL'd keys).
fn spread(rep: &mut Report, cluster: &crate::redis_server::RedisCluster, url: &str) {
    let rt = runtime();
    let d: LiveDict<u32> = rt.block_on(LiveDict::open(url)).expect("store");
    let n = 3000u32;
    rt.block_on(async {
        for i in 0..n {
            d.set_with_ttl(&format!("key:{i}"), i, std::time::Duration::from_secs(600)).await.expect("set");
        }
    });
    let per_master: Vec<f64> = cluster
        .current_masters()
        .into_iter()
        .map(|i| {
            let count = crate::redis_server::scan(cluster.nodes()[i].port(), "ld:{spread:*}:v:*").len();
            count as f64 * 100.0 / f64::from(n)
        })
        .collect();
    rt.block_on(d.shutdown()).expect("shutdown");
    let least = per_master.iter().copied().fold(f64::INFINITY, f64::min);
    let shares: Vec<String> = per_master.iter().map(|p| format!("{p:.1}%")).collect();
    let note = format!("one namespace, {n} TTL'd keys, share per master: {}", shares.join(" / "));
    rep.measure(
        "redis-spread",
        "cluster",
        "least share of one namespace per master",
        least,
        None,
        "%",
        ">= 15%",
        least >= 15.0,
        &note,
    );
}

/// set / get rows against raw fred on the same server or cluster.
/// `incr` and `compare_and_set`, one task, against raw fred `INCR` (one
/// round trip): a ratio near the `set` row's means one round trip each
/// (they were lock, get, set, unlock: four).
fn atomics(rep: &mut Report, o: &Opts, backend: &str, raw_url: &str, live_url: &str) {
    let n = o.pick(2_000, 10_000);
    // Counters of their own (the raw rows' keys hold strings).
    let keys: Arc<Vec<String>> = Arc::new((0..100).map(|i| format!("counter{i}")).collect());
    let rt = runtime();
    let raw = raw_client(&rt, raw_url);
    let d: LiveDict<i64> = rt.block_on(LiveDict::open(live_url)).expect("redis store");
    let raw_op = || {
        on_tasks(&rt, 1, |_| {
            let (c, keys) = (raw.clone(), Arc::clone(&keys));
            async move {
                for i in 0..n {
                    let _: i64 = c.incr(keys[i % keys.len()].as_str()).await.expect("INCR");
                }
            }
        })
    };
    let incr_op = || {
        on_tasks(&rt, 1, |_| {
            let (d, keys) = (d.clone(), Arc::clone(&keys));
            async move {
                for i in 0..n {
                    black_box(d.incr(&keys[i % keys.len()], 1).await.expect("incr"));
                }
            }
        })
    };
    // Each round on keys of its own, so the first write of each is an insert-if-absent.
    let round = std::cell::Cell::new(0usize);
    let cas_op = || {
        round.set(round.get() + 1);
        let prefix = format!("cas{}:", round.get());
        on_tasks(&rt, 1, |_| {
            let (d, prefix) = (d.clone(), prefix.clone());
            async move {
                let mut seen: Vec<Option<i64>> = vec![None; 100];
                for i in 0..n {
                    let k = i % seen.len();
                    let next = seen[k].map_or(0, |v| v + 1);
                    let key = format!("{prefix}{k}");
                    assert!(
                        d.compare_and_set(&key, seen[k].as_ref(), next).await.expect("cas"),
                        "no other writer"
                    );
                    seen[k] = Some(next);
                }
            }
        })
    };
    let update_op = || {
        on_tasks(&rt, 1, |_| {
            let (d, keys) = (d.clone(), Arc::clone(&keys));
            async move {
                for i in 0..n {
                    black_box(
                        d.update(&keys[i % keys.len()], |v| Some(v.unwrap_or(0) + 1)).await.expect("update"),
                    );
                }
            }
        })
    };
    let rounds = o.pick(2, 5);
    let note =
        "1 task; raw: fred INCR (one round trip); livedict: one script call, waits for any lock holder";
    let (r, l) = crate::best_pair(rounds, n, raw_op, incr_op);
    rep.ops("redis", backend, "incr", 1, l, Some(r), Target::None, note);
    rt.block_on(d.clear()).expect("clear");
    let (r, l) = crate::best_pair(rounds, n, raw_op, cas_op);
    rep.ops("redis", backend, "compare_and_set", 1, l, Some(r), Target::None, note);
    let (r, l) = crate::best_pair(rounds, n, raw_op, update_op);
    let note = "1 task; raw: fred INCR; livedict: optimistic, GET then one compare-and-set script call";
    rep.ops("redis", backend, "update (optimistic)", 1, l, Some(r), Target::None, note);
    rt.block_on(async {
        d.shutdown().await.expect("shutdown");
        let _ = raw.quit().await;
    });
}

/// `GET` commands the servers on `ports` have run so far.
fn gets(ports: &[u16]) -> u64 {
    crate::redis_server::command_calls(ports, "get")
}

fn throughput(
    rep: &mut Report,
    o: &Opts,
    backend: &str,
    raw_url: &str,
    live_url: &dyn Fn(&str) -> String,
    ports: &[u16],
) {
    let n = o.pick(2_000, 10_000);
    let many_ops = o.pick(20_000, 100_000);
    let keys = Arc::new(keys(n));
    let v = value();
    let rt = runtime();
    let raw = raw_client(&rt, raw_url);
    let d: LiveDict<String> = rt.block_on(LiveDict::open(&live_url("bench"))).expect("redis store");
    let raw_v = Bytes::from(v.clone().into_bytes());

    let raw_op = |set: bool, tasks: usize, ops: usize| {
        on_tasks(&rt, tasks, |t| {
            let (c, keys, v) = (raw.clone(), Arc::clone(&keys), raw_v.clone());
            async move {
                for i in part(t, tasks, ops) {
                    let k = keys[i % n].as_str();
                    if set {
                        let _: () = c.set(k, v.clone(), None, None, false).await.expect("SET");
                    } else {
                        let got: Option<Bytes> = c.get(k).await.expect("GET");
                        assert!(black_box(got).is_some());
                    }
                }
            }
        })
    };
    let live_op = |set: bool, tasks: usize, ops: usize| {
        on_tasks(&rt, tasks, |t| {
            let (d, keys, v) = (d.clone(), Arc::clone(&keys), v.clone());
            async move {
                for i in part(t, tasks, ops) {
                    let k = &keys[i % n];
                    if set {
                        d.set(k, v.clone()).await.expect("set");
                    } else {
                        assert!(black_box(d.get(k).await.expect("get")).is_some());
                    }
                }
            }
        })
    };
    let rounds = o.pick(2, 5);
    for set in [true, false] {
        for (tasks, ops, target) in [(1, n, 0.9), (50, many_ops, 0.8)] {
            let (r, l) =
                crate::best_pair(rounds, ops, || raw_op(set, tasks, ops), || live_op(set, tasks, ops));
            let (op, note) = if set {
                (
                    "set",
                    "raw: fred SET (1 connection, pipelined); livedict: one Lua script per set, concurrent sets batched into one call (default pool)",
                )
            } else {
                (
                    "get (hit)",
                    "raw: fred GET (1 connection, pipelined); livedict: GET + JSON decode (default pool: half the CPUs)",
                )
            };
            rep.ops("redis", backend, op, tasks, l, Some(r), Target::Ratio(target), note);
        }
    }
    // The near cache (`near_cache_ms`): repeated reads of the same keys cost no
    // round trip. Same namespace, so the keys written above are there. Its
    // bound (a minute) outlasts the rounds, and nothing writes the keys
    // meanwhile, so every timed read is a hit once the cache is filled right
    // before each round (the fill is not timed); the `GET`s the servers ran
    // during the timed rounds are the witness.
    let near: LiveDict<String> = rt
        .block_on(LiveDict::open(&format!(
            "{}&near_cache_ms=60000&near_cache_entries={}",
            live_url("bench"),
            2 * n
        )))
        .expect("redis store with near cache");
    let fill = || {
        rt.block_on(async {
            for k in keys.iter() {
                assert!(near.get(k).await.expect("get").is_some());
            }
        })
    };
    let near_op = |tasks: usize, ops: usize| {
        on_tasks(&rt, tasks, |t| {
            let (d, keys) = (near.clone(), Arc::clone(&keys));
            async move {
                for i in part(t, tasks, ops) {
                    assert!(black_box(d.get(&keys[i % n]).await.expect("get")).is_some());
                }
            }
        })
    };
    for (tasks, ops, target) in [(1, n, 10.0), (50, many_ops, 2.0)] {
        let (mut live_gets, mut live_ops) = (0, 0);
        let (r, l) = crate::best_pair(
            rounds,
            ops,
            || raw_op(false, tasks, ops),
            || {
                fill();
                let before = gets(ports);
                let t = near_op(tasks, ops);
                live_gets += gets(ports) - before;
                live_ops += ops as u64;
                t
            },
        );
        let hits = 100.0 * (1.0 - live_gets as f64 / live_ops as f64);
        let note = "raw: fred GET (1 connection, pipelined); livedict: near_cache_ms=60000, filled (untimed) before each round; hit % = 1 - server GETs / reads";
        let op = format!("get, near cache ({hits:.1}% hits)");
        rep.ops("redis", backend, &op, tasks, l, Some(r), Target::Ratio(target), note);
    }
    // The miss path: every key read once through a fresh store (opened and
    // shut down untimed), so each read misses and fills; against a plain
    // livedict get in the same run.
    let read_all = |d: &LiveDict<String>| {
        on_tasks(&rt, 1, |_| {
            let (d, keys) = (d.clone(), Arc::clone(&keys));
            async move {
                for i in 0..n {
                    assert!(black_box(d.get(&keys[i % n]).await.expect("get")).is_some());
                }
            }
        })
    };
    let cold = || {
        let url = format!("{}&near_cache_ms=60000&near_cache_entries={}", live_url("bench"), 2 * n);
        let fresh: LiveDict<String> = rt.block_on(LiveDict::open(&url)).expect("redis store with near cache");
        let t = read_all(&fresh);
        rt.block_on(fresh.shutdown()).expect("shutdown");
        t
    };
    let (plain, miss) = crate::best_pair(rounds, n, || read_all(&d), cold);
    let note = "\"raw\" here: a plain livedict get (no near cache), same run; livedict: a fresh near-cached store reads each key once (every read misses and fills)";
    rep.ops("redis", backend, "get (miss), near cache", 1, miss, Some(plain), Target::Ratio(0.9), note);
    // Time-to-idle (`time_to_idle_ms`): a get is one TOUCH script call that
    // reads the value and moves its deadline, against a plain get (one GET)
    // in the same run. 10 s: a read writes the new deadline when it moves by
    // more than 100 ms (1%), so in these rounds nearly every read writes.
    let idle: LiveDict<String> = rt
        .block_on(LiveDict::open(&format!("{}&time_to_idle_ms=10000", live_url("bench_idle"))))
        .expect("redis store with time_to_idle");
    rt.block_on(async {
        for k in keys.iter() {
            idle.set(k, v.clone()).await.expect("set");
        }
    });
    let idle_op = |tasks: usize, ops: usize| {
        on_tasks(&rt, tasks, |t| {
            let (d, keys) = (idle.clone(), Arc::clone(&keys));
            async move {
                for i in part(t, tasks, ops) {
                    assert!(black_box(d.get(&keys[i % n]).await.expect("get")).is_some());
                }
            }
        })
    };
    for (tasks, ops) in [(1, n), (50, many_ops)] {
        let (plain, with_idle) =
            crate::best_pair(rounds, ops, || live_op(false, tasks, ops), || idle_op(tasks, ops));
        let note = "\"raw\" here: a plain livedict get (one GET), same run; livedict: time_to_idle_ms=10000, each get one EVALSHA (TOUCH) that also rewrites the deadline (header, index) when it moved by > 100 ms";
        rep.ops("redis", backend, "get, time_to_idle", tasks, with_idle, Some(plain), Target::None, note);
    }
    rt.block_on(async {
        idle.shutdown().await.expect("shutdown");
        near.shutdown().await.expect("shutdown");
        d.shutdown().await.expect("shutdown");
        let _ = raw.quit().await;
    });
}
