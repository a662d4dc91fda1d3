//! The `scan` suite: a streaming prefix scan (`LiveDict::scan("")`) of 1M
//! entries on `memory://`, `sqlite://` and `redis://`, its throughput
//! (entries/s) and its peak RSS growth while it runs, next to the data
//! (memory: its RSS; SQLite: the file; Redis: the server's `used_memory`).
//!
//! Peak RSS: the kernel's high-water mark (`VmHWM` in `/proc/self/status`),
//! reset to the current RSS just before the scan (`5` into
//! `/proc/self/clear_refs`); the growth is the mark after the scan minus the
//! RSS before it. Raw: `items()` (the whole store in one `Vec`) on the same
//! store for memory, a prepared `SELECT key, value ... ORDER BY key` stepped
//! row by row with the same JSON decoding for SQLite, fred `SCAN` pages of
//! 1,000 keys each followed by an `MGET` of the page (no decoding) for Redis.

use std::hint::black_box;
use std::time::Instant;

use fred::bytes::Bytes;
use fred::prelude::*;
use futures::TryStreamExt;
use livedict::LiveDict;

use crate::redis::Server;
use crate::report::Report;
use crate::{Opts, keys, on_tasks, part, runtime, value};

/// A field of `/proc/self/status` in bytes (Linux).
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak RSS to the current one; false where that is not possible.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Runs `f`; returns its seconds and the peak RSS growth (bytes) while it ran.
fn peak_during<T>(f: impl FnOnce() -> T) -> Option<(f64, i64, T)> {
    if !reset_peak() {
        return None;
    }
    let before = status_bytes("VmRSS:")? as i64;
    let started = Instant::now();
    let out = f();
    let secs = started.elapsed().as_secs_f64();
    let peak = status_bytes("VmHWM:")? as i64;
    Some((secs, peak - before, out))
}

pub fn run(rep: &mut Report, o: &Opts, server: Option<&Server>) {
    let n = o.pick(100_000, 1_000_000);
    let rt = runtime();
    let v = value();
    let raw_redis = server.map(|server| crate::redis::raw_client(&rt, &server.raw_url()));
    for backend in ["memory", "sqlite", "redis"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = match (backend, server) {
            ("memory", _) => "memory://".to_owned(),
            ("sqlite", _) => format!("sqlite://{}", dir.path().join("scan.db").display()),
            (_, Some(server)) => server.url("scan"),
            (_, None) => {
                rep.skipped("scan", backend, "no redis-server on PATH");
                continue;
            }
        };
        let rss0 = status_bytes("VmRSS:").unwrap_or(0) as i64;
        let used0 = server.map_or(0.0, |s| crate::redis::used_memory(s.port()));
        let d: LiveDict<String> = rt.block_on(LiveDict::open(&url)).expect("open");
        let all = std::sync::Arc::new(keys(n));
        if backend == "redis" {
            // Batches of 1,000: one script call each.
            rt.block_on(async {
                for chunk in all.chunks(1000) {
                    let entries = chunk.iter().map(|k| (k.clone(), v.clone())).collect();
                    d.set_many(entries, None).await.expect("set_many");
                }
            });
        } else {
            // 32 writers: on SQLite their sets share the group commit.
            on_tasks(&rt, 32, |t| {
                let (d, v, all) = (d.clone(), v.clone(), std::sync::Arc::clone(&all));
                async move {
                    for k in &all[part(t, 32, all.len())] {
                        d.set(k, v.clone()).await.expect("set");
                    }
                }
            });
        }
        // The data: the RSS the fill added (memory), the file with its WAL
        // (SQLite), the server's memory the fill added (Redis).
        let data = match (backend, server) {
            ("memory", _) => status_bytes("VmRSS:").unwrap_or(0) as i64 - rss0,
            ("redis", Some(server)) => (crate::redis::used_memory(server.port()) - used0) as i64,
            _ => ["scan.db", "scan.db-wal"]
                .iter()
                .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
                .map(|m| m.len() as i64)
                .sum(),
        };
        let scan =
            || rt.block_on(d.scan("").try_fold(0usize, |n, _| async move { Ok(n + 1) })).expect("scan");
        let Some((secs, growth, seen)) = peak_during(scan) else {
            rep.skipped("scan", backend, "could not read or reset the peak RSS (/proc/self/clear_refs)");
            return;
        };
        assert_eq!(seen, n, "the scan saw every entry");
        let raw = match (backend, &raw_redis) {
            ("memory", _) => peak_during(|| rt.block_on(d.items()).expect("items").len()),
            ("redis", Some(c)) => peak_during(|| rt.block_on(raw_scan(c))),
            _ => peak_during(|| raw_sqlite(&dir.path().join("scan.db"))),
        };
        let (raw_rate, raw_growth) = match &raw {
            Some((s, g, count)) => {
                assert_eq!(*count, n);
                (Some(n as f64 / s), Some(*g as f64 / 1e6))
            }
            None => (None, None),
        };
        let raw_name = match backend {
            "memory" => "items()",
            "redis" => "fred SCAN COUNT 1000 + MGET of each page",
            _ => "raw SELECT stepped",
        };
        rep.measure(
            "scan",
            backend,
            &format!("scan(\"\") of {}k entries", n / 1000),
            n as f64 / secs,
            raw_rate,
            "entries/s",
            "report",
            true,
            &format!(
                "LiveDict::scan(\"\") counted to the end, pages of up to {} through the stack (SQLite: \
                 1,000 rows; Redis: a SCAN page, ~1,000 keys); raw: {raw_name}",
                livedict::SCAN_PAGE
            ),
        );
        let share = growth as f64 / data.max(1) as f64;
        rep.measure(
            "scan",
            backend,
            &format!("scan peak RSS growth, {}k entries", n / 1000),
            growth as f64 / 1e6,
            raw_growth,
            "MB",
            "<= 5% of the data",
            share <= 0.05,
            &format!(
                "peak RSS (VmHWM, reset before) minus RSS before the scan; the data: {:.0} MB \
                 ({}; the growth is {:.2}% of it); raw: the same for {raw_name}",
                data as f64 / 1e6,
                match backend {
                    "memory" => "its RSS",
                    "redis" => "the server's used_memory the fill added",
                    _ => "the file and its WAL",
                },
                share * 100.0
            ),
        );
        if backend == "redis" {
            rt.block_on(d.clear()).expect("clear");
        }
        rt.block_on(d.shutdown()).expect("shutdown");
        drop(d);
        black_box(&dir);
    }
}

/// Every row of livedict's SQLite table, stepped in key order and decoded
/// as a user of rusqlite would.
fn raw_sqlite(path: &std::path::Path) -> usize {
    let conn = rusqlite::Connection::open(path).expect("raw open");
    let mut stmt = conn
        .prepare("SELECT key, value FROM livedict WHERE expires_at IS NULL OR expires_at > ?1 ORDER BY key")
        .expect("raw prepare");
    let mut rows = stmt.query([0i64]).expect("raw query");
    let mut count = 0;
    while let Some(row) = rows.next().expect("raw step") {
        let key: String = row.get(0).expect("key");
        let value: String =
            serde_json::from_slice(row.get_ref(1).expect("value").as_blob().expect("blob")).expect("json");
        black_box((key, value));
        count += 1;
    }
    count
}

/// Every key of the server through `SCAN` pages of 1,000, each followed by
/// an `MGET` of its keys: the values present.
async fn raw_scan(c: &Client) -> usize {
    let mut cursor = "0".to_owned();
    let mut count = 0;
    loop {
        let (next, keys): (String, Vec<Bytes>) =
            c.scan_page(cursor, "ld:*:v:*", Some(1000), None).await.expect("SCAN");
        if !keys.is_empty() {
            let values: Vec<Option<Bytes>> = c.mget(keys).await.expect("MGET");
            count += black_box(values).iter().filter(|v| v.is_some()).count();
        }
        if next == "0" {
            return count;
        }
        cursor = next;
    }
}
