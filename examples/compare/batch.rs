//! Batch rows (`batch` suite): `get_many` / `set_many` of 100 and 1,000 keys,
//! against the same number of single livedict calls on every backend, and
//! on Redis against raw fred `MGET` and pipelined `SET`s.
//!
//! Throughputs are keys per second (a batch of N counts N), one task, the
//! best of the rounds with both sides alternating.

use std::hint::black_box;
use std::sync::Arc;

use fred::bytes::Bytes;
use fred::prelude::*;
use livedict::LiveDict;

use crate::redis::Server;
use crate::report::{Report, Target};
use crate::{Opts, best_pair, keys, on_tasks, runtime, value};

/// Batch sizes measured.
const SIZES: [usize; 2] = [100, 1000];

pub fn run(rep: &mut Report, o: &Opts, server: Option<&Server>) {
    let dir = tempfile::tempdir().expect("temp dir");
    singles(rep, o, "memory", "memory://");
    let url = format!("sqlite://{}", dir.path().join("batch.db").display());
    singles(rep, o, "sqlite", &url);
    match server {
        Some(server) => {
            singles(rep, o, "redis", &server.url("batch"));
            raw(rep, o, server);
        }
        None => rep.skipped("batch", "redis", "no redis-server on PATH"),
    }
}

/// `get_many` / `set_many` of N keys against N single `get` / `set` calls, one task.
fn singles(rep: &mut Report, o: &Opts, backend: &str, url: &str) {
    let rt = runtime();
    let d: LiveDict<String> = rt.block_on(LiveDict::open(url)).expect("store");
    let v = value();
    // Fewer keys in all where each single call is a round trip or a commit.
    let total = if backend == "memory" { o.pick(100_000, 1_000_000) } else { o.pick(5_000, 20_000) };
    for n in SIZES {
        let keys = Arc::new(keys(n));
        let entries: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), v.clone())).collect();
        let rounds = total / n;
        let single_set = || {
            on_tasks(&rt, 1, |_| {
                let (d, keys, v) = (d.clone(), Arc::clone(&keys), v.clone());
                async move {
                    for _ in 0..rounds {
                        for k in keys.iter() {
                            d.set(k, v.clone()).await.expect("set");
                        }
                    }
                }
            })
        };
        let many_set = || {
            on_tasks(&rt, 1, |_| {
                let (d, entries) = (d.clone(), entries.clone());
                async move {
                    for _ in 0..rounds {
                        d.set_many(entries.clone(), None).await.expect("set_many");
                    }
                }
            })
        };
        let note = format!("1 task, {n} keys a batch; raw: {n} single `set` calls of livedict");
        let (s, m) = best_pair(o.rounds(), rounds * n, single_set, many_set);
        rep.ops(
            "batch",
            backend,
            &format!("set_many({n}) vs single set"),
            1,
            m,
            Some(s),
            target(backend),
            &note,
        );
        let single_get = || {
            on_tasks(&rt, 1, |_| {
                let (d, keys) = (d.clone(), Arc::clone(&keys));
                async move {
                    for _ in 0..rounds {
                        for k in keys.iter() {
                            assert!(black_box(d.get(k).await.expect("get")).is_some());
                        }
                    }
                }
            })
        };
        let many_get = || {
            on_tasks(&rt, 1, |_| {
                let (d, keys) = (d.clone(), Arc::clone(&keys));
                async move {
                    for _ in 0..rounds {
                        let got = d.get_many(&keys).await.expect("get_many");
                        assert!(black_box(got).iter().all(Option::is_some));
                    }
                }
            })
        };
        let note = format!("1 task, {n} keys a batch; raw: {n} single `get` calls of livedict");
        let (s, m) = best_pair(o.rounds(), rounds * n, single_get, many_get);
        rep.ops(
            "batch",
            backend,
            &format!("get_many({n}) vs single get"),
            1,
            m,
            Some(s),
            target(backend),
            &note,
        );
    }
    rt.block_on(d.shutdown()).expect("shutdown");
}

/// The SPEC's target against single calls: where each call is a round trip (Redis).
fn target(backend: &str) -> Target {
    if backend == "redis" { Target::Ratio(10.0) } else { Target::None }
}

/// `get_many` / `set_many` of N keys against raw fred `MGET` / N pipelined `SET`s, one task.
fn raw(rep: &mut Report, o: &Opts, server: &Server) {
    let rt = runtime();
    let raw = crate::redis::raw_client(&rt, &server.raw_url());
    let d: LiveDict<String> = rt.block_on(LiveDict::open(&server.url("batchraw"))).expect("store");
    let v = value();
    let raw_v = Bytes::from(v.clone().into_bytes());
    let total = o.pick(50_000, 200_000);
    for n in SIZES {
        let keys = Arc::new(keys(n));
        let entries: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), v.clone())).collect();
        let rounds = total / n;
        let raw_set = || {
            on_tasks(&rt, 1, |_| {
                let (c, keys, v) = (raw.clone(), Arc::clone(&keys), raw_v.clone());
                async move {
                    for _ in 0..rounds {
                        // Pipelined: every SET sent before the first reply is awaited.
                        let sets =
                            keys.iter().map(|k| c.set::<(), _, _>(k.as_str(), v.clone(), None, None, false));
                        futures::future::try_join_all(sets).await.expect("SET");
                    }
                }
            })
        };
        let many_set = || {
            on_tasks(&rt, 1, |_| {
                let (d, entries) = (d.clone(), entries.clone());
                async move {
                    for _ in 0..rounds {
                        d.set_many(entries.clone(), None).await.expect("set_many");
                    }
                }
            })
        };
        let note = format!("1 task, {n} keys a batch; raw: fred, {n} pipelined `SET`s");
        let (r, m) = best_pair(o.rounds(), rounds * n, raw_set, many_set);
        rep.ops(
            "batch",
            "redis",
            &format!("set_many({n}) vs pipelined SET"),
            1,
            m,
            Some(r),
            Target::Ratio(0.8),
            &note,
        );
        let raw_get = || {
            on_tasks(&rt, 1, |_| {
                let (c, keys) = (raw.clone(), Arc::clone(&keys));
                async move {
                    for _ in 0..rounds {
                        let got: Vec<Option<Bytes>> = c.mget(keys.to_vec()).await.expect("MGET");
                        assert!(black_box(got).iter().all(Option::is_some));
                    }
                }
            })
        };
        let many_get = || {
            on_tasks(&rt, 1, |_| {
                let (d, keys) = (d.clone(), Arc::clone(&keys));
                async move {
                    for _ in 0..rounds {
                        let got = d.get_many(&keys).await.expect("get_many");
                        assert!(black_box(got).iter().all(Option::is_some));
                    }
                }
            })
        };
        let note = format!("1 task, {n} keys a batch; raw: fred `MGET` of the {n} keys");
        let (r, m) = best_pair(o.rounds(), rounds * n, raw_get, many_get);
        rep.ops(
            "batch",
            "redis",
            &format!("get_many({n}) vs MGET"),
            1,
            m,
            Some(r),
            Target::Ratio(0.8),
            &note,
        );
    }
    rt.block_on(async {
        d.shutdown().await.expect("shutdown");
        let _ = raw.quit().await;
    });
}
