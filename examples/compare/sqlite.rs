//! SQLite rows: livedict (`sqlite://file`, WAL, group commit) next to what a
//! user would write with rusqlite: a file of its own, WAL, prepared
//! statements, autocommit (one transaction per write), one write after
//! another on one thread, at `synchronous=NORMAL` and at `synchronous=FULL`.
//!
//! Write workload (raw and livedict alike, each on its own file): round `r`
//! writes keys `k[r*n/2 .. r*n/2 + n]`, so every round inserts `n/2` new keys
//! and updates the `n/2` the previous round inserted, and the table grows as
//! it does for a user; each round writes another 100-byte value. (Rewriting
//! the same few thousand keys with the same value, the raw baseline ran
//! 4-9x faster than a plain program: SQLite leaves a page that an update
//! does not change unwritten, so such a commit writes no WAL frame and, at
//! `synchronous=FULL`, syncs nothing.)
//!
//! The diskcache row runs Python's `diskcache.Cache.set` on the same
//! workload in a child process, in the same run, when `$COMPARE_PYTHON`
//! (default `python3`) can import `diskcache`; otherwise it is skipped.

use std::hint::black_box;
use std::ops::Range;
use std::sync::Arc;

use livedict::LiveDict;
use rusqlite::{Connection, OptionalExtension, params};

use crate::report::{Report, Target};
use crate::{Opts, keys, on_tasks, part, runtime};

const SCHEMA: &str = "PRAGMA journal_mode=WAL;
    CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, expires_at INTEGER);
    CREATE INDEX IF NOT EXISTS kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;";
const UPSERT: &str = "INSERT INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3) \
    ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at";
/// What a size bound keeps, in raw SQL (as livedict's sized store and
/// diskcache keep it): each row's place in the store order, indexed, and an
/// exact count of entries and bytes kept by triggers.
const SIZED: &str = "ALTER TABLE kv ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX kv_seq ON kv (seq);
    CREATE TABLE kv_size (id INTEGER PRIMARY KEY, entries INTEGER NOT NULL, bytes INTEGER NOT NULL);
    INSERT INTO kv_size VALUES (0, 0, 0);
    CREATE TRIGGER kv_size_insert AFTER INSERT ON kv BEGIN
      UPDATE kv_size SET entries = entries + 1, bytes = bytes + length(NEW.key) + length(NEW.value) WHERE id = 0; END;
    CREATE TRIGGER kv_size_update AFTER UPDATE OF value ON kv BEGIN
      UPDATE kv_size SET bytes = bytes + length(NEW.value) - length(OLD.value) WHERE id = 0; END;
    CREATE TRIGGER kv_size_delete AFTER DELETE ON kv BEGIN
      UPDATE kv_size SET entries = entries - 1, bytes = bytes - length(OLD.key) - length(OLD.value) WHERE id = 0; END;";
const UPSERT_SEQ: &str = "INSERT INTO kv (key, value, expires_at, seq) VALUES (?1, ?2, ?3, ?4) \
    ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at, seq = excluded.seq";
const SELECT: &str = "SELECT value FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)";

/// What `diskcache.Cache.set` does on the same workload (argv: dir, n, rounds); prints ops/s.
const DISKCACHE: &str = r#"
import sys, time, diskcache
d, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cache = diskcache.Cache(d)
keys = ["k%d" % i for i in range(n // 2 * (rounds + 1))]
best = 0.0
for r in range(rounds):
    v = (b"%d" % r).ljust(100, b"v")
    ks = keys[r * n // 2 : r * n // 2 + n]
    t = time.perf_counter()
    for k in ks:
        cache.set(k, v)
    best = max(best, n / (time.perf_counter() - t))
cache.close()
print(best)
"#;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The 100-byte value round `r` writes (each round another).
fn round_value(r: usize) -> String {
    format!("{r:v<100}")
}

/// The keys round `r` writes: half new, half written by round `r - 1`.
fn window(r: usize, n: usize) -> Range<usize> {
    r * n / 2..r * n / 2 + n
}

/// A raw rusqlite connection the way a user sets one up.
fn raw_db(dir: &std::path::Path, name: &str, full: bool) -> Connection {
    let raw = Connection::open(dir.join(name)).expect("raw db");
    raw.execute_batch(SCHEMA).expect("raw schema");
    raw.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" }).expect("raw synchronous");
    raw
}

/// `diskcache.Cache.set` ops/s on the same workload, if Python has diskcache.
fn diskcache(dir: &std::path::Path, n: usize, rounds: usize) -> Result<f64, String> {
    let python = std::env::var("COMPARE_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(DISKCACHE)
        .arg(dir.join("diskcache"))
        .arg(n.to_string())
        .arg(rounds.to_string())
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{python}: {}", err.lines().last().unwrap_or("failed")));
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|e| format!("{python}: bad output: {e}"))
}

pub fn run(rep: &mut Report, o: &Opts) {
    let n = o.pick(2_000, 10_000);
    let reads = o.pick(20_000, 100_000);
    let rounds = o.pick(2, 5);
    let keys = Arc::new(keys(n / 2 * (rounds + 1)));
    assert_eq!(round_value(0).len(), crate::VALUE_LEN);
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime();

    for full in [false, true] {
        let sync = if full { "FULL" } else { "NORMAL" };
        let opts = if full { "?synchronous=full" } else { "" };
        let raw = raw_db(dir.path(), &format!("raw-{sync}.db"), full);
        // New files for each setting.
        let url =
            |name: &str| format!("sqlite://{}{opts}", dir.path().join(format!("{name}-{sync}.db")).display());
        let d: LiveDict<String> = rt.block_on(LiveDict::open(&url("async"))).expect("sqlite store");
        let d32: LiveDict<String> = rt.block_on(LiveDict::open(&url("tasks"))).expect("sqlite store");
        let b =
            livedict::blocking::LiveDict::<String>::open(&url("blocking")).expect("blocking sqlite store");

        let raw_set = |r: usize| {
            let started = std::time::Instant::now();
            let mut st = raw.prepare_cached(UPSERT).unwrap();
            let v = round_value(r);
            for k in &keys[window(r, n)] {
                st.execute(params![k, v.as_bytes(), Option::<i64>::None]).expect("upsert");
            }
            started.elapsed().as_secs_f64()
        };
        let live_set = |d: &LiveDict<String>, tasks: usize, r: usize| {
            on_tasks(&rt, tasks, |t| {
                let (d, keys, v) = (d.clone(), Arc::clone(&keys), round_value(r));
                async move {
                    let w = window(r, n);
                    for i in part(t, tasks, n) {
                        d.set(&keys[w.start + i], v.clone()).await.expect("set");
                    }
                }
            })
        };
        let blocking_set = |r: usize| {
            let started = std::time::Instant::now();
            let v = round_value(r);
            for k in &keys[window(r, n)] {
                b.set(k, v.clone()).expect("blocking set");
            }
            started.elapsed().as_secs_f64()
        };
        // With a size bound of n/2 entries every round evicts n/2 of its n writes
        // (round 0 fills the store twice over; each later round inserts n/2 new keys).
        let bounded = (!full).then(|| {
            let url = |name: &str| {
                format!("sqlite://{}?max_capacity={}", dir.path().join(format!("{name}.db")).display(), n / 2)
            };
            let open =
                |name| rt.block_on(LiveDict::<String>::open(&url(name))).expect("bounded sqlite store");
            (open("bound-async"), open("bound-tasks"))
        });
        // A bound the store never reaches: the cost of keeping the order and the size alone.
        let roomy = (!full).then(|| {
            let url = |name: &str| {
                format!(
                    "sqlite://{}?max_capacity=1000000000",
                    dir.path().join(format!("{name}.db")).display()
                )
            };
            let open =
                |name| rt.block_on(LiveDict::<String>::open(&url(name))).expect("bounded sqlite store");
            (open("roomy-async"), open("roomy-tasks"))
        });
        // The same raw upsert on a table that keeps what a bound needs: its ceiling at 1 task.
        let raw_sized = (!full).then(|| {
            let c = raw_db(dir.path(), "raw-sized.db", false);
            c.execute_batch(SIZED).expect("sized schema");
            c
        });
        let mut raw_seq = 0i64;
        let mut raw_sized_set = |r: usize| {
            let raw = raw_sized.as_ref()?;
            let started = std::time::Instant::now();
            let mut st = raw.prepare_cached(UPSERT_SEQ).unwrap();
            let v = round_value(r);
            for k in &keys[window(r, n)] {
                raw_seq += 1;
                st.execute(params![k, v.as_bytes(), Option::<i64>::None, raw_seq]).expect("upsert");
            }
            Some(started.elapsed().as_secs_f64())
        };
        let mut raw_sized_w = 0.0f64;
        let (mut raw_w, mut one, mut blocking, mut many) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let (mut bound_one, mut bound_many, mut roomy_one, mut roomy_many) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for r in 0..rounds {
            raw_w = raw_w.max(n as f64 / raw_set(r));
            if let Some(t) = raw_sized_set(r) {
                raw_sized_w = raw_sized_w.max(n as f64 / t);
            }
            one = one.max(n as f64 / live_set(&d, 1, r));
            blocking = blocking.max(n as f64 / blocking_set(r));
            many = many.max(n as f64 / live_set(&d32, 32, r));
            if let Some((b1, b32)) = &bounded {
                bound_one = bound_one.max(n as f64 / live_set(b1, 1, r));
                bound_many = bound_many.max(n as f64 / live_set(b32, 32, r));
            }
            if let Some((r1, r32)) = &roomy {
                roomy_one = roomy_one.max(n as f64 / live_set(r1, 1, r));
                roomy_many = roomy_many.max(n as f64 / live_set(r32, 32, r));
            }
        }
        if let Some((b1, b32)) = bounded {
            let note = "raw: the same livedict set without a bound, same run; bound max_capacity = n/2, so every round evicts half its writes";
            for (tasks, rate, unbounded) in [(1, bound_one, one), (32, bound_many, many)] {
                rep.ops(
                    "sqlite",
                    "sqlite",
                    "async set, max_capacity",
                    tasks,
                    rate,
                    Some(unbounded),
                    Target::Ratio(0.8),
                    note,
                );
            }
            rt.block_on(async {
                b1.shutdown().await.expect("shutdown");
                b32.shutdown().await.expect("shutdown");
            });
        }
        if !full {
            rep.ops(
                "sqlite",
                "sqlite",
                "raw upsert, order + size kept",
                1,
                raw_sized_w,
                Some(raw_w),
                Target::None,
                "both raw rusqlite, autocommit: the upsert also stamps an indexed `seq` and triggers keep an exact entry and byte count (what a bound needs, as diskcache keeps it) vs the plain upsert; the ceiling of \"bound not reached\" at 1 task",
            );
        }
        if let Some((r1, r32)) = roomy {
            let note = "raw: the same livedict set without a bound, same run; a bound never reached (the order and size kept, nothing evicted)";
            for (tasks, rate, unbounded) in [(1, roomy_one, one), (32, roomy_many, many)] {
                rep.ops(
                    "sqlite",
                    "sqlite",
                    "async set, bound not reached",
                    tasks,
                    rate,
                    Some(unbounded),
                    Target::Ratio(0.8),
                    note,
                );
            }
            rt.block_on(async {
                r1.shutdown().await.expect("shutdown");
                r32.shutdown().await.expect("shutdown");
            });
        }
        let note = format!(
            "raw: rusqlite WAL synchronous={sync}, prepared upsert, autocommit, 1 thread; each round half new keys, half updates"
        );
        let (one_target, many_target) = if full { (0.6, 6.0) } else { (0.6, 2.5) };
        let tag = if full { ", sync=full" } else { "" };
        rep.ops(
            "sqlite",
            "sqlite",
            &format!("async set{tag}"),
            1,
            one,
            Some(raw_w),
            Target::Ratio(one_target),
            &note,
        );
        rep.ops(
            "sqlite",
            "sqlite",
            &format!("blocking set{tag}"),
            1,
            blocking,
            Some(raw_w),
            Target::Ratio(one_target),
            &note,
        );
        rep.ops(
            "sqlite",
            "sqlite",
            &format!("async set{tag}"),
            32,
            many,
            Some(raw_w),
            Target::Ratio(many_target),
            &note,
        );
        if !full {
            // The single caller a Python script is: one key after another, blocking and async.
            match diskcache(dir.path(), n, rounds) {
                Ok(dc) => {
                    let note =
                        "raw: Python diskcache.Cache.set (WAL, synchronous=NORMAL), same workload, same run";
                    for (op, rate) in
                        [("blocking set vs diskcache", blocking), ("async set vs diskcache", one)]
                    {
                        rep.ops("sqlite", "sqlite", op, 1, rate, Some(dc), Target::Ratio(2.0), note);
                    }
                }
                Err(why) => rep.skipped("sqlite", "sqlite", &format!("diskcache row: {why}")),
            }
        }
        if full {
            rt.block_on(async {
                d.shutdown().await.expect("shutdown");
                d32.shutdown().await.expect("shutdown");
            });
            b.shutdown().expect("shutdown");
            continue;
        }

        let raw_get = || {
            let started = std::time::Instant::now();
            let now = now_ms();
            let mut st = raw.prepare_cached(SELECT).unwrap();
            for i in 0..reads {
                let got: Option<Vec<u8>> =
                    st.query_row(params![&keys[i % n], now], |r| r.get(0)).optional().expect("select");
                assert!(black_box(got).is_some());
            }
            started.elapsed().as_secs_f64()
        };
        let live_get = |tasks: usize| {
            on_tasks(&rt, tasks, |t| {
                let (d, keys) = (d.clone(), Arc::clone(&keys));
                async move {
                    for i in part(t, tasks, reads) {
                        assert!(black_box(d.get(&keys[i % n]).await.expect("get")).is_some());
                    }
                }
            })
        };
        let mut raw_r = 0.0f64;
        let (mut one, mut many) = (0.0f64, 0.0f64);
        for _ in 0..rounds {
            raw_r = raw_r.max(reads as f64 / raw_get());
            one = one.max(reads as f64 / live_get(1));
            many = many.max(reads as f64 / live_get(8));
        }
        let note = "raw: rusqlite prepared SELECT (with the expiry check), 1 thread";
        rep.ops("sqlite", "sqlite", "get (hit)", 1, one, Some(raw_r), Target::Ratio(0.8), note);
        rep.ops("sqlite", "sqlite", "get (hit)", 8, many, Some(raw_r), Target::Ratio(0.6), note);
        rt.block_on(async {
            d.shutdown().await.expect("shutdown");
            d32.shutdown().await.expect("shutdown");
        });
        b.shutdown().expect("shutdown");
    }
}
