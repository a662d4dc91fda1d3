//! Rows: one JSON object per line as they are measured, then a human table.

use std::time::Duration;

use serde_json::{Value as J, json};

use crate::Opts;

/// A throughput target, checked against the ratio or an absolute rate.
#[derive(Clone, Copy)]
pub enum Target {
    /// No target for this row (shown for context).
    None,
    /// `livedict / raw >= x`.
    Ratio(f64),
    /// Microseconds per op `<= x`.
    MicrosAtMost(f64),
    /// Throughput with 2 tasks above the 1-task throughput (given), and how
    /// raw moka scaled from 1 to 2 threads in the same run (for context).
    Grows(f64, f64),
}

pub struct Report {
    json_only: bool,
    rows: Vec<J>,
    /// Rows with a livedict ÷ raw ratio, for the ratio chart (`--svg`).
    pub bars: Vec<Bar>,
    /// Each expire row's lateness samples, for the CDF chart (`--svg`).
    pub lateness: Vec<Lateness>,
}

/// One row's livedict ÷ raw ratio.
pub struct Bar {
    /// Suite, backend, op and tasks, as in the table.
    pub label: String,
    pub ratio: f64,
    /// The ratio the row must reach (`>=`) or stay under (`<=`), if any.
    pub target: Option<Bound>,
    pub meets: Option<bool>,
}

/// A target on a ratio.
#[derive(Clone, Copy)]
pub enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    pub fn value(self) -> f64 {
        match self {
            Bound::AtLeast(x) | Bound::AtMost(x) => x,
        }
    }

    /// A ratio target from a row's `target` text: `>= 0.6x raw`, `<= 1.5x HashMap…`.
    fn parse(target: &str) -> Option<Bound> {
        let (at_least, rest) = if let Some(rest) = target.strip_prefix(">= ") {
            (true, rest)
        } else {
            (false, target.strip_prefix("<= ")?)
        };
        let (number, after) = rest.split_once('x')?;
        if !(after.is_empty() || after.starts_with(' ')) {
            return None;
        }
        let x: f64 = number.parse().ok()?;
        Some(if at_least { Bound::AtLeast(x) } else { Bound::AtMost(x) })
    }
}

/// The lateness of every `Expire` event of one expire row.
pub struct Lateness {
    pub backend: String,
    pub op: String,
    /// Milliseconds after the deadline, sorted ascending.
    pub sorted_ms: Vec<f64>,
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M/s", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k/s", x / 1e3)
    } else {
        format!("{x:.0}/s")
    }
}

impl Report {
    pub fn new(json_only: bool) -> Self {
        Report { json_only, rows: Vec::new(), bars: Vec::new(), lateness: Vec::new() }
    }

    pub fn meta(&mut self, o: &Opts) {
        let meta = json!({
            "suite": "meta", "quick": o.quick, "value_bytes": crate::VALUE_LEN,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "tokio_worker_threads": 2, "rounds": o.rounds(),
            "sqlite_version": rusqlite::version(),
            "note": "ops/s: best of `rounds` rounds, raw and livedict alternating",
        });
        println!("{meta}");
    }

    fn emit(&mut self, row: J) {
        println!("{row}");
        if let Some(ratio) = row.get("ratio").and_then(J::as_f64) {
            let s = |k: &str| row.get(k).and_then(J::as_str).unwrap_or("").to_owned();
            let tasks = match row.get("tasks").and_then(J::as_u64) {
                Some(t) => format!(", {t} task{}", if t == 1 { "" } else { "s" }),
                None => String::new(),
            };
            self.bars.push(Bar {
                label: format!("{} {}: {}{tasks}", s("suite"), s("backend"), s("op")),
                ratio,
                target: Bound::parse(&s("target")),
                meets: row.get("meets").and_then(J::as_bool),
            });
        }
        self.rows.push(row);
    }

    /// A throughput row.
    #[allow(clippy::too_many_arguments)]
    pub fn ops(
        &mut self,
        suite: &str,
        backend: &str,
        op: &str,
        tasks: usize,
        live: f64,
        raw: Option<f64>,
        target: Target,
        note: &str,
    ) {
        let ratio = raw.map(|r| live / r);
        let (target_s, meets) = match target {
            Target::None => (None, None),
            Target::Ratio(x) => (Some(format!(">= {x}x raw")), ratio.map(|r| r >= x)),
            Target::MicrosAtMost(x) => (Some(format!("<= {x} us/op")), Some(1e6 / live <= x)),
            Target::Grows(one, raw_scaling) => {
                (Some(format!("> 1 task {} (raw 2/1: {raw_scaling:.2}x)", rate(one))), Some(live > one))
            }
        };
        self.emit(json!({
            "suite": suite, "backend": backend, "op": op, "tasks": tasks,
            "livedict_ops_per_s": round(live, 0),
            "raw_ops_per_s": raw.map(|r| round(r, 0)),
            "ratio": ratio.map(|r| round(r, 3)),
            "target": target_s, "meets": meets,
            "us_per_op": round(1e6 / live, 3),
            "note": note,
        }));
    }

    /// An end-to-end callback row: events delivered per second.
    pub fn events(&mut self, backend: &str, op: &str, per_s: f64, delivered: u64, dropped: u64, sent: u64) {
        // SPEC.md: set + 1 callback, end to end, >= 1M events/s, 0 dropped.
        let target = 1_000_000.0;
        self.emit(json!({
            "suite": "callback", "backend": backend, "op": op, "tasks": 1,
            "livedict_ops_per_s": round(per_s, 0), "raw_ops_per_s": null, "ratio": null,
            "target": format!(">= {} events, 0 dropped", rate(target)), "meets": per_s >= target && dropped == 0,
            "sent": sent, "delivered": delivered, "dropped": dropped,
            "note": "events delivered to the callback / time until every event was delivered or counted dropped",
        }));
    }

    /// An expire-lateness row.
    #[allow(clippy::too_many_arguments)]
    pub fn lateness(
        &mut self,
        backend: &str,
        op: &str,
        n: usize,
        ttl: Duration,
        late_ms: &mut [f64],
        delivered: usize,
        duplicates: usize,
        p99_target_ms: f64,
        note: &str,
    ) {
        late_ms.sort_by(f64::total_cmp);
        self.lateness.push(Lateness { backend: backend.into(), op: op.into(), sorted_ms: late_ms.to_vec() });
        let pct = |p: f64| {
            (!late_ms.is_empty())
                .then(|| late_ms[((p / 100.0) * (late_ms.len() - 1) as f64).round() as usize])
        };
        let (p50, p99, max) = (pct(50.0), pct(99.0), late_ms.last().copied());
        let meets = delivered == n && duplicates == 0 && p99.is_some_and(|p| p <= p99_target_ms);
        self.emit(json!({
            "suite": "expire", "backend": backend, "op": op, "tasks": null,
            "livedict_ops_per_s": null, "raw_ops_per_s": null, "ratio": null,
            "n": n, "ttl_ms": ttl.as_millis() as u64,
            "p50_ms": p50.map(|x| round(x, 2)), "p99_ms": p99.map(|x| round(x, 2)),
            "max_ms": max.map(|x| round(x, 2)),
            "delivered": delivered, "duplicates": duplicates,
            "target": format!("p99 <= {p99_target_ms} ms, 100% delivered, 0 duplicates"),
            "meets": meets, "note": note,
        }));
    }

    /// A memory-size row.
    pub fn size(&mut self, n: usize, live_bytes: f64, map_bytes: f64, moka_bytes: f64, note: &str) {
        let ratio = live_bytes / map_bytes;
        self.emit(json!({
            "suite": "memory-size", "backend": "memory", "op": "bytes/entry (ttl, 100 B value)",
            "tasks": null, "livedict_ops_per_s": null, "raw_ops_per_s": null,
            "n": n, "livedict_bytes_per_entry": round(live_bytes, 1),
            "hashmap_bytes_per_entry": round(map_bytes, 1),
            "raw_moka_bytes_per_entry": round(moka_bytes, 1),
            "ratio": round(ratio, 3), "target": "<= 1.5x HashMap<String, String>",
            "meets": ratio <= 1.5, "note": note,
        }));
    }

    /// A measurement that is not a throughput (bytes per entry, commands per second, a share…).
    #[allow(clippy::too_many_arguments)]
    pub fn measure(
        &mut self,
        suite: &str,
        backend: &str,
        op: &str,
        live: f64,
        raw: Option<f64>,
        unit: &str,
        target: &str,
        meets: bool,
        note: &str,
    ) {
        self.emit(json!({
            "suite": suite, "backend": backend, "op": op, "tasks": null,
            "livedict_value": round(live, 1), "raw_value": raw.map(|r| round(r, 1)), "unit": unit,
            "ratio": raw.map(|r| round(live / r, 3)), "target": target, "meets": meets, "note": note,
        }));
    }

    /// A row that could not run.
    pub fn skipped(&mut self, suite: &str, backend: &str, why: &str) {
        self.emit(json!({
            "suite": suite, "backend": backend, "op": "skipped", "tasks": null,
            "livedict_ops_per_s": null, "raw_ops_per_s": null, "ratio": null,
            "target": null, "meets": null, "note": why,
        }));
    }

    pub fn table(&self, elapsed: Duration) {
        if self.json_only {
            return;
        }
        println!();
        println!(
            "{:<11} {:<7} {:<35} {:>5} {:>28} {:>18} {:>6}  {:<34} {:<5}",
            "suite", "backend", "op", "tasks", "livedict", "raw", "ratio", "target", "meets"
        );
        println!("{}", "-".repeat(160));
        for r in &self.rows {
            let s = |k: &str| r.get(k).and_then(J::as_str).unwrap_or("").to_owned();
            let f = |k: &str| r.get(k).and_then(J::as_f64);
            let tasks = f("tasks").map(|t| format!("{t:.0}")).unwrap_or_default();
            let ratio = f("ratio").map(|x| format!("{x:.2}x")).unwrap_or_default();
            let meets = match r.get("meets").and_then(J::as_bool) {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            let (live, raw) = match s("suite").as_str() {
                "expire" => (
                    format!("p50 {} p99 {} max {} ms", opt(f("p50_ms")), opt(f("p99_ms")), opt(f("max_ms"))),
                    format!(
                        "{}/{} dup {}",
                        f("delivered").unwrap_or(0.0),
                        f("n").unwrap_or(0.0),
                        f("duplicates").unwrap_or(0.0)
                    ),
                ),
                "memory-size" => (
                    format!("{:.0} B/entry", f("livedict_bytes_per_entry").unwrap_or(0.0)),
                    format!(
                        "{:.0} B map, {:.0} B moka",
                        f("hashmap_bytes_per_entry").unwrap_or(0.0),
                        f("raw_moka_bytes_per_entry").unwrap_or(0.0)
                    ),
                ),
                "callback" => (
                    format!("{} events", rate(f("livedict_ops_per_s").unwrap_or(0.0))),
                    format!("dropped {}", f("dropped").unwrap_or(0.0)),
                ),
                _ if s("op") == "skipped" => (s("note"), String::new()),
                _ if r.get("unit").is_some() => (
                    format!("{:.1} {}", f("livedict_value").unwrap_or(0.0), s("unit")),
                    f("raw_value").map(|x| format!("{x:.1} {}", s("unit"))).unwrap_or_default(),
                ),
                _ => {
                    let live = f("livedict_ops_per_s").unwrap_or(0.0);
                    let us = if live > 0.0 { format!(" ({:.2} us)", 1e6 / live) } else { String::new() };
                    (format!("{}{us}", rate(live)), f("raw_ops_per_s").map(rate).unwrap_or_default())
                }
            };
            println!(
                "{:<11} {:<7} {:<35} {:>5} {:>28} {:>18} {:>6}  {:<34} {:<5}",
                s("suite"),
                s("backend"),
                s("op"),
                tasks,
                live,
                raw,
                ratio,
                s("target"),
                meets
            );
        }
        let missed = self.rows.iter().filter(|r| r.get("meets").and_then(J::as_bool) == Some(false)).count();
        let checked = self.rows.iter().filter(|r| r.get("meets").and_then(J::as_bool).is_some()).count();
        println!("{}", "-".repeat(160));
        println!(
            "{} of {checked} targets met; {} cpus; {:.0} s",
            checked - missed,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            elapsed.as_secs_f64()
        );
    }
}

fn opt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}
