//! One function per command, each on a store opened by [`open`].

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use livedict::inspect::{Inspector, Status};
use livedict::{EventKind, LiveDict, WatchFilter, WatchItem};
use serde_json::{Value, json};

use crate::{Cli, Command};

/// A command's failure: the one-line message printed before exit status 2.
type Failed = String;

/// Runs the command of `cli`; `Ok` carries its exit status.
pub async fn run(cli: Cli) -> Result<ExitCode, Failed> {
    let url = cli.url.ok_or("no store URL: give --url or set LIVEDICT_URL")?;
    match cli.command {
        Command::Get { key } => get(&url, &key).await,
        Command::Set { key, value, ttl, string } => set(&url, &key, &value, ttl, string).await,
        Command::Del { keys } => del(&url, &keys).await,
        Command::Ttl { key } => ttl(&url, &key).await,
        Command::Keys { prefix, limit, json } => keys(&url, &prefix, limit, json).await,
        Command::Len { json } => len(&url, json).await,
        Command::Export { prefix } => export(&url, &prefix).await,
        Command::Import => import(&url).await,
        Command::Watch { kinds, prefix } => watch(&url, kinds, &prefix).await,
        Command::Lock { key, hold, timeout } => lock(&url, &key, hold, timeout).await,
        Command::Locks { prefix, json } => locks(&url, &prefix, json).await,
        Command::Pending { json } => pending(&url, json).await,
        Command::Doctor { json } => doctor(&url, json).await,
    }
}

/// How a command opens the store: always as an observer (no expiry driver or
/// sweeper, no claims, no `CONFIG SET`); `Write` also creates a missing store,
/// `Watch` also shares events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    /// Creates nothing: a missing store is an error.
    Read,
    /// Creates a missing table or key layout, to write into it.
    Write,
    /// As `Read`, with `share_events=true` to see the other processes' events.
    Watch,
}

/// Opens the store at `url` as an observer.
async fn open(url: &str, how: Open) -> Result<LiveDict<Value>, Failed> {
    let url = if how == Open::Watch && !has_option(url, "share_events") {
        let joiner = if url.contains('?') { '&' } else { '?' };
        format!("{url}{joiner}share_events=true")
    } else {
        url.to_owned()
    };
    if has_option(&url, "observer") {
        return Err("the store URL may not set `observer`: the client always opens it as an observer".into());
    }
    let builder = LiveDict::<Value>::builder().url(&url);
    let builder = if how == Open::Write { builder.observer_create(true) } else { builder.observer(true) };
    builder.build().await.map_err(|e| e.to_string())
}

/// Whether the query of `url` sets option `name`.
fn has_option(url: &str, name: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|pair| pair.split_once('=').map_or(pair, |(k, _)| k) == name)
    })
}

/// Closes the store (flushing its writes and shared events), then answers `code`.
async fn finish(d: &LiveDict<Value>, code: ExitCode) -> Result<ExitCode, Failed> {
    d.shutdown().await.map_err(|e| e.to_string())?;
    Ok(code)
}

fn failed(e: impl std::fmt::Display) -> Failed {
    e.to_string()
}

/// Writes one line to stdout (a closed pipe, as with `| head`, ends the command quietly).
fn line(out: &mut impl Write, text: impl std::fmt::Display) -> Result<(), Failed> {
    writeln!(out, "{text}").map_err(|e| format!("writing to stdout: {e}"))
}

async fn get(url: &str, key: &str) -> Result<ExitCode, Failed> {
    let d = open(url, Open::Read).await?;
    let found = d.get(key).await.map_err(failed)?;
    let code = match found {
        Some(value) => {
            line(&mut std::io::stdout().lock(), &value)?;
            ExitCode::SUCCESS
        }
        None => ExitCode::from(1),
    };
    finish(&d, code).await
}

async fn set(
    url: &str,
    key: &str,
    raw: &str,
    ttl: Option<Duration>,
    string: bool,
) -> Result<ExitCode, Failed> {
    let value = if string {
        Value::String(raw.to_owned())
    } else {
        serde_json::from_str(raw)
            .map_err(|e| format!("the value is not JSON ({e}); add --string to store it as a string"))?
    };
    let d = open(url, Open::Write).await?;
    match ttl {
        Some(ttl) => d.set_with_ttl(key, value, ttl).await,
        None => d.set(key, value).await,
    }
    .map_err(failed)?;
    finish(&d, ExitCode::SUCCESS).await
}

async fn del(url: &str, keys: &[String]) -> Result<ExitCode, Failed> {
    let d = open(url, Open::Read).await?;
    let removed = d.delete_many(keys).await.map_err(failed)?;
    line(&mut std::io::stdout().lock(), removed)?;
    finish(&d, ExitCode::SUCCESS).await
}

async fn ttl(url: &str, key: &str) -> Result<ExitCode, Failed> {
    let d = open(url, Open::Read).await?;
    let ms: i128 = match d.ttl(key).await.map_err(failed)? {
        Some(left) => left.as_millis() as i128,
        None if d.exists(key).await.map_err(failed)? => -1,
        None => -2,
    };
    line(&mut std::io::stdout().lock(), ms)?;
    finish(&d, ExitCode::SUCCESS).await
}

async fn keys(url: &str, prefix: &str, limit: Option<u64>, json: bool) -> Result<ExitCode, Failed> {
    let d = open(url, Open::Read).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut stream = std::pin::pin!(d.scan_keys(prefix));
    let mut n = 0u64;
    if json {
        write!(out, "[").map_err(failed)?;
    }
    while limit.is_none_or(|limit| n < limit) {
        let Some(key) = stream.try_next().await.map_err(failed)? else { break };
        if json {
            let sep = if n == 0 { "" } else { "," };
            write!(out, "{sep}{}", Value::String(key)).map_err(failed)?;
        } else {
            line(&mut out, key)?;
        }
        n += 1;
    }
    if json {
        line(&mut out, "]")?;
    }
    out.flush().map_err(failed)?;
    drop(out);
    finish(&d, ExitCode::SUCCESS).await
}

async fn len(url: &str, json: bool) -> Result<ExitCode, Failed> {
    let d = open(url, Open::Read).await?;
    let n = d.len().await.map_err(failed)?;
    let text = if json { json!({ "len": n }).to_string() } else { n.to_string() };
    line(&mut std::io::stdout().lock(), text)?;
    finish(&d, ExitCode::SUCCESS).await
}

/// One entry as `export` writes it and `import` reads it.
fn entry_line(key: String, value: Value, ttl: Option<Duration>) -> String {
    // Rounded up: an entry exported with 0.4 ms left is imported with 1 ms, never without a TTL.
    let ttl_ms = ttl.map_or(Value::Null, |t| Value::from(t.as_nanos().div_ceil(1_000_000) as u64));
    // Written field by field: the documented order (serde_json's maps sort their keys).
    format!("{{\"key\":{},\"value\":{value},\"ttl_ms\":{ttl_ms}}}", Value::String(key))
}

async fn export(url: &str, prefix: &str) -> Result<ExitCode, Failed> {
    let d = open(url, Open::Read).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut stream = std::pin::pin!(d.scan(prefix));
    while let Some((key, value)) = stream.try_next().await.map_err(failed)? {
        let ttl = d.ttl(&key).await.map_err(failed)?;
        // No TTL, or gone since the scan read it (then it is not exported: it
        // must not come back without a deadline).
        if ttl.is_none() && !d.exists(&key).await.map_err(failed)? {
            continue;
        }
        line(&mut out, entry_line(key, value, ttl))?;
    }
    out.flush().map_err(failed)?;
    drop(out);
    finish(&d, ExitCode::SUCCESS).await
}

/// Reads one line of `import`: `{"key": string, "value": any, "ttl_ms": positive integer | null}`.
fn parse_entry(text: &str) -> Result<(String, Value, Option<Duration>), String> {
    let mut entry: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
    let key = match entry.remove("key") {
        Some(Value::String(key)) => key,
        _ => return Err("`key` must be a string".into()),
    };
    let value = entry.remove("value").ok_or("`value` is missing")?;
    let ttl = match entry.remove("ttl_ms") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(ms) if ms > 0 => Some(Duration::from_millis(ms)),
            _ => return Err(format!("`ttl_ms` must be a positive integer or null, not {n}")),
        },
        Some(other) => return Err(format!("`ttl_ms` must be a positive integer or null, not {other}")),
    };
    if let Some(extra) = entry.keys().next() {
        return Err(format!("unknown field `{extra}`"));
    }
    Ok((key, value, ttl))
}

async fn import(url: &str) -> Result<ExitCode, Failed> {
    let d = open(url, Open::Write).await?;
    let stdin = std::io::stdin();
    let mut written = 0u64;
    // Read and written one line at a time: constant memory, and a bad line stops everything after it.
    let outcome: Result<(), Failed> = async {
        for (i, text) in stdin.lock().lines().enumerate() {
            let number = i + 1;
            let text = text.map_err(|e| format!("reading stdin at line {number}: {e}"))?;
            if text.trim().is_empty() {
                continue;
            }
            let (key, value, ttl) = parse_entry(&text).map_err(|why| format!("line {number}: {why}"))?;
            match ttl {
                Some(ttl) => d.set_with_ttl(&key, value, ttl).await,
                None => d.set(&key, value).await,
            }
            .map_err(|e| format!("line {number}: {e}"))?;
            written += 1;
        }
        Ok(())
    }
    .await;
    // What was written before a bad line stays written (and is flushed).
    d.shutdown().await.map_err(failed)?;
    outcome?;
    line(&mut std::io::stdout().lock(), written)?;
    Ok(ExitCode::SUCCESS)
}

/// Reads a `--kinds` item (`get` is not shared between processes and not offered).
pub fn parse_kind(text: &str) -> Result<EventKind, String> {
    match text.trim() {
        "set" => Ok(EventKind::Set),
        "delete" => Ok(EventKind::Delete),
        "expire" => Ok(EventKind::Expire),
        "evict" => Ok(EventKind::Evict),
        other => Err(format!("unknown event kind `{other}` (use set, delete, expire, evict)")),
    }
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Set => "set",
        EventKind::Get => "get",
        EventKind::Delete => "delete",
        EventKind::Expire => "expire",
        _ => "evict",
    }
}

async fn watch(url: &str, kinds: Vec<EventKind>, prefix: &str) -> Result<ExitCode, Failed> {
    let d = open(url, Open::Watch).await?;
    let kinds = if kinds.is_empty() {
        vec![EventKind::Set, EventKind::Delete, EventKind::Expire, EventKind::Evict]
    } else {
        kinds
    };
    let mut events = d.watch(WatchFilter::kinds(kinds).prefix(prefix)).map_err(failed)?;
    let mut out = std::io::stdout().lock();
    // Stops on Ctrl-C (exit 0), or when the store closes.
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    // Readiness, for scripts and tests: the watch is open from here on.
    eprintln!("livedict: watching");
    loop {
        let item = tokio::select! {
            item = events.next() => item,
            _ = &mut interrupted => break,
        };
        match item {
            Some(WatchItem::Event(event)) => {
                let at = event.at().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let value = event.value().cloned().unwrap_or(Value::Null);
                let key = Value::String(event.key().to_owned());
                let text = format!(
                    "{{\"kind\":\"{}\",\"key\":{key},\"value\":{value},\"at\":{at}}}",
                    kind_name(event.kind())
                );
                line(&mut out, text)?;
                out.flush().map_err(failed)?;
            }
            Some(WatchItem::Lagged(n)) => eprintln!("livedict: {n} events skipped (the output fell behind)"),
            None => break,
        }
    }
    out.flush().map_err(failed)?;
    drop(events);
    finish(&d, ExitCode::SUCCESS).await
}

async fn lock(url: &str, key: &str, hold: Duration, timeout: Duration) -> Result<ExitCode, Failed> {
    let d = open(url, Open::Write).await?;
    let guard = d.lock(key, timeout).await.map_err(failed)?;
    let mut out = std::io::stdout().lock();
    line(&mut out, guard.fence())?;
    out.flush().map_err(failed)?;
    drop(out);
    tokio::time::sleep(hold).await;
    guard.unlock().await.map_err(failed)?;
    finish(&d, ExitCode::SUCCESS).await
}

/// Opens `url` for `locks`, `pending` and `doctor` (an observer too).
async fn inspector(url: &str) -> Result<Inspector, Failed> {
    if has_option(url, "observer") {
        return Err("the store URL may not set `observer`: the client always opens it as an observer".into());
    }
    Inspector::open(url).await.map_err(failed)
}

async fn locks(url: &str, prefix: &str, json: bool) -> Result<ExitCode, Failed> {
    let inspector = inspector(url).await?;
    let held = inspector.locks(prefix).await.map_err(failed)?;
    let mut out = std::io::stdout().lock();
    if json {
        let all: Vec<Value> = held
            .iter()
            .map(|l| json!({ "key": l.key, "fence": l.fence, "lease_ms": l.lease_left.as_millis() as u64 }))
            .collect();
        line(&mut out, Value::Array(all))?;
    } else {
        for l in &held {
            let fence = l.fence.map_or_else(|| "-".to_owned(), |f| f.to_string());
            line(&mut out, format_args!("{}\t{fence}\t{}", l.key, l.lease_left.as_millis()))?;
        }
    }
    drop(out);
    inspector.close().await.map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

async fn pending(url: &str, json: bool) -> Result<ExitCode, Failed> {
    let inspector = inspector(url).await?;
    let waiting = inspector.pending().await.map_err(failed)?;
    let mut out = std::io::stdout().lock();
    if json {
        let all: Vec<Value> = waiting
            .iter()
            .map(|p| json!({ "key": p.key, "attempt": p.attempt, "lease_ms": p.lease_left.as_millis() as u64 }))
            .collect();
        line(&mut out, Value::Array(all))?;
    } else {
        for p in &waiting {
            line(&mut out, format_args!("{}\t{}\t{}", p.key, p.attempt, p.lease_left.as_millis()))?;
        }
    }
    drop(out);
    inspector.close().await.map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

async fn doctor(url: &str, json: bool) -> Result<ExitCode, Failed> {
    let inspector = inspector(url).await?;
    let checks = inspector.doctor().await.map_err(failed)?;
    let mut out = std::io::stdout().lock();
    if json {
        let all: Vec<Value> = checks
            .iter()
            .map(|c| json!({ "check": c.name, "status": c.status.as_str(), "detail": c.detail }))
            .collect();
        line(&mut out, Value::Array(all))?;
    } else {
        for c in &checks {
            line(&mut out, format_args!("{:<4} {}: {}", c.status.as_str(), c.name, c.detail))?;
        }
    }
    drop(out);
    inspector.close().await.map_err(failed)?;
    let healthy = checks.iter().all(|c| c.status == Status::Ok);
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
