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

    fn raw_url(&self) -> String {
        self.inner.url()
    }
}

pub fn run(rep: &mut Report, o: &Opts, server: Option<&Server>) {
    let Some(server) = server else {
        rep.skipped("redis", "redis", "no redis-server on PATH");
        return;
    };
    let n = o.pick(2_000, 10_000);
    let many_ops = o.pick(20_000, 100_000);
    let keys = Arc::new(keys(n));
    let v = value();
    let rt = runtime();
    let raw: Client = rt.block_on(async {
        let client = Builder::from_config(Config::from_url(&server.raw_url()).expect("url"))
            .with_connection_config(|c| c.tcp = TcpConfig { nodelay: Some(true), ..Default::default() })
            .build()
            .expect("fred client");
        client.init().await.expect("connect");
        client
    });
    let d: LiveDict<String> = rt.block_on(LiveDict::open(&server.url("bench"))).expect("redis store");
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
            rep.ops("redis", "redis", op, tasks, l, Some(r), Target::Ratio(target), note);
        }
    }
    // The near cache (`near_cache_ms`): repeated reads of the same keys cost no
    // round trip. Same namespace, so the keys written above are there.
    let near: LiveDict<String> = rt
        .block_on(LiveDict::open(&format!("{}&near_cache_ms=1000", server.url("bench"))))
        .expect("redis store with near cache");
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
    near_op(1, n); // fill the near cache
    for (tasks, ops) in [(1, n), (50, many_ops)] {
        let (r, l) = crate::best_pair(rounds, ops, || raw_op(false, tasks, ops), || near_op(tasks, ops));
        let note = "raw: fred GET (1 connection, pipelined); livedict: near_cache_ms=1000, every key cached";
        rep.ops("redis", "redis", "get (hit), near cache", tasks, l, Some(r), Target::None, note);
    }
    rt.block_on(async {
        near.shutdown().await.expect("shutdown");
        d.shutdown().await.expect("shutdown");
        let _ = raw.quit().await;
    });
}
