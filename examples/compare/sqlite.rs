//! SQLite rows: livedict (`sqlite://file`, WAL, group commit) next to raw
//! rusqlite on a file of its own: WAL, `synchronous=NORMAL`, prepared
//! statements, autocommit (one transaction per write), one at a time.

use std::hint::black_box;
use std::sync::Arc;

use livedict::LiveDict;
use rusqlite::{Connection, OptionalExtension, params};

use crate::report::{Report, Target};
use crate::{Opts, keys, on_tasks, part, runtime, value};

const SCHEMA: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
    CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, expires_at INTEGER);
    CREATE INDEX IF NOT EXISTS kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;";
const UPSERT: &str = "INSERT INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3) \
    ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at";
const SELECT: &str = "SELECT value FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)";

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

pub fn run(rep: &mut Report, o: &Opts) {
    let n = o.pick(2_000, 10_000);
    let reads = o.pick(20_000, 100_000);
    let keys = Arc::new(keys(n));
    let v = value();
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = Connection::open(dir.path().join("raw.db")).expect("raw db");
    raw.execute_batch(SCHEMA).expect("raw schema");
    let rt = runtime();
    let url = format!("sqlite://{}", dir.path().join("livedict.db").display());
    let d: LiveDict<String> = rt.block_on(LiveDict::open(&url)).expect("sqlite store");

    let raw_set = || {
        let started = std::time::Instant::now();
        for k in keys.iter() {
            raw.prepare_cached(UPSERT)
                .unwrap()
                .execute(params![k, v.as_bytes(), Option::<i64>::None])
                .expect("upsert");
        }
        started.elapsed().as_secs_f64()
    };
    let live_set = |tasks: usize| {
        on_tasks(&rt, tasks, |t| {
            let (d, keys, v) = (d.clone(), Arc::clone(&keys), v.clone());
            async move {
                for i in part(t, tasks, n) {
                    d.set(&keys[i], v.clone()).await.expect("set");
                }
            }
        })
    };
    let rounds = o.pick(2, 5);
    let mut raw_w = 0.0f64;
    let (mut one, mut many) = (0.0f64, 0.0f64);
    for _ in 0..rounds {
        raw_w = raw_w.max(n as f64 / raw_set());
        one = one.max(n as f64 / live_set(1));
        many = many.max(n as f64 / live_set(32));
    }
    let note = "raw: rusqlite WAL sync=NORMAL, prepared upsert, autocommit, one at a time";
    rep.ops("sqlite", "sqlite", "set", 1, one, Some(raw_w), Target::None, note);
    rep.ops("sqlite", "sqlite", "set", 32, many, Some(raw_w), Target::Ratio(3.0), note);

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
    rep.ops("sqlite", "sqlite", "get (hit)", 1, one, Some(raw_r), Target::None, note);
    rep.ops("sqlite", "sqlite", "get (hit)", 8, many, Some(raw_r), Target::Ratio(0.5), note);
    rt.block_on(async { d.shutdown().await.expect("shutdown") });
}
