//! The `livedict` binary (feature `cli`), run as a child process against a
//! temporary SQLite file and a throw-away Redis (single server and cluster):
//! every command's output and exit status, moving data between stores, and
//! the observer rule (running the client never takes an expiration away from
//! the application).
#![cfg(feature = "cli")]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use livedict::{Callback, Event, EventKind, LiveDict};
use serde_json::Value;
use support::Harness;

const BIN: &str = env!("CARGO_BIN_EXE_livedict");

/// Runs `livedict --url URL ARGS…` with `stdin` and waits for it.
fn run_with(url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("LIVEDICT_URL")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run livedict");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("wait for livedict")
}

fn run(url: &str, args: &[&str]) -> Output {
    run_with(url, args, "")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(url: &str, args: &[&str]) -> String {
    let out = run(url, args);
    assert_eq!(out.status.code(), Some(0), "livedict {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// Asserts exit status 2 with one line on stderr (no panic, no backtrace) and nothing on stdout; returns the line.
fn fails(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stdout {:?}, stderr {err:?}", stdout(out));
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", stdout(out));
    err
}

fn sqlite() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    (dir, url)
}

/// The simple commands, their outputs and exit statuses, on one store.
fn commands_work_on(url: &str) {
    assert_eq!(ok(url, &["set", "user:1", r#"{"name":"ada","n":[1,2]}"#]), "");
    assert_eq!(ok(url, &["set", "user:2", "hello", "--string", "--ttl", "2m"]), "");
    assert_eq!(ok(url, &["set", "order:1", "42"]), "");
    let refused = fails(&run(url, &["set", "k", "not json"]));
    assert!(refused.contains("--string"), "{refused}");

    assert_eq!(ok(url, &["get", "user:1"]), "{\"n\":[1,2],\"name\":\"ada\"}\n");
    assert_eq!(ok(url, &["get", "user:2"]), "\"hello\"\n");
    let missing = run(url, &["get", "nobody"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty() && missing.stderr.is_empty());

    let left: i64 = ok(url, &["ttl", "user:2"]).trim().parse().unwrap();
    assert!(left > 0 && left <= 120_000, "{left}");
    assert_eq!(ok(url, &["ttl", "user:1"]), "-1\n");
    assert_eq!(ok(url, &["ttl", "nobody"]), "-2\n");

    let mut keys: Vec<String> = ok(url, &["keys"]).lines().map(String::from).collect();
    keys.sort();
    assert_eq!(keys, ["order:1", "user:1", "user:2"]);
    let mut users: Vec<String> = ok(url, &["keys", "--prefix", "user:"]).lines().map(String::from).collect();
    users.sort();
    assert_eq!(users, ["user:1", "user:2"]);
    assert_eq!(ok(url, &["keys", "--limit", "2"]).lines().count(), 2);
    let listed: Vec<String> =
        serde_json::from_str(&ok(url, &["keys", "--json", "--prefix", "order:"])).unwrap();
    assert_eq!(listed, ["order:1"]);

    assert_eq!(ok(url, &["len"]), "3\n");
    assert_eq!(ok(url, &["len", "--json"]), "{\"len\":3}\n");

    let fence: u64 = ok(url, &["lock", "order:1", "--hold", "10ms"]).trim().parse().unwrap();
    assert!(fence > 0);
    let later: u64 = ok(url, &["lock", "order:1", "--hold", "10ms"]).trim().parse().unwrap();
    assert!(later > fence, "fences grow: {fence} then {later}");

    assert_eq!(ok(url, &["del", "order:1", "nobody", "user:2"]), "2\n");
    assert_eq!(ok(url, &["len"]), "1\n");

    // Bad arguments: one line, exit 2.
    fails(&run(url, &["set", "k", "1", "--ttl", "5"]));
    fails(&run(url, &["frobnicate"]));
    fails(&run(url, &["watch", "--kinds", "get"]));
}

#[test]
fn every_command_answers_on_sqlite() {
    let (_dir, url) = sqlite();
    commands_work_on(&url);
}

#[test]
fn every_command_answers_on_redis() {
    let Some(h) = Harness::redis() else { return };
    commands_work_on(h.url());
}

#[test]
fn every_command_answers_on_a_redis_cluster() {
    let Some(h) = Harness::redis_cluster() else { return };
    commands_work_on(h.url());
}

#[test]
fn bad_urls_and_unreachable_servers_are_one_line_and_exit_2() {
    let no_url = Command::new(BIN).args(["get", "k"]).env_remove("LIVEDICT_URL").output().unwrap();
    assert!(fails(&no_url).contains("LIVEDICT_URL"));
    assert!(fails(&run("nosuch://x", &["get", "k"])).contains("nosuch"));
    assert!(fails(&run("sqlite://x.db?frob=1", &["len"])).contains("frob"));
    let unreachable = fails(&run("redis://127.0.0.1:1/0?connect_timeout_ms=500", &["get", "k"]));
    assert!(unreachable.contains("127.0.0.1:1"), "{unreachable}");
    let (_dir, url) = sqlite();
    let not_observing = fails(&run(&format!("{url}?observer=false"), &["len"]));
    assert!(not_observing.contains("observer"));
    // LIVEDICT_URL is read when --url is not given.
    let via_env = Command::new(BIN).args(["len"]).env("LIVEDICT_URL", "nosuch://y").output().unwrap();
    assert!(fails(&via_env).contains("nosuch://y"));
}

#[test]
fn read_commands_create_no_sqlite_file_or_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.db");
    let url = format!("sqlite://{}", path.display());
    for args in [&["get", "k"][..], &["keys"], &["len"], &["export"], &["ttl", "k"]] {
        let why = fails(&run(&url, args));
        assert!(why.contains("no such database file"), "{why}");
    }
    assert!(!path.exists(), "an observer creates no file");
    // A file with another store's table: this table is not created either.
    ok(&url, &["set", "k", "1"]);
    let other = format!("{url}?table=other");
    assert!(fails(&run(&other, &["len"])).contains("no livedict table `other`"));
    let conn = rusqlite_tables(&path);
    assert!(!conn.iter().any(|t| t.starts_with("other")), "{conn:?}");
}

/// The tables of the SQLite file at `path`.
fn rusqlite_tables(path: &std::path::Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut names = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").unwrap();
    names.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

#[test]
fn a_redis_namespace_without_a_layout_is_reported_and_left_alone() {
    let Some(h) = Harness::redis() else { return };
    let why = fails(&run(h.url(), &["get", "k"]));
    assert!(why.contains("no livedict layout"), "{why}");
    fails(&run(h.url(), &["keys"]));
    fails(&run(h.url(), &["watch"]));
    assert!(h.redis_keys_matching("ld:*").is_empty(), "nothing written: {:?}", h.redis_keys_matching("*"));
    // The server's configuration is untouched (no notify-keyspace-events).
    let port = h.redis_ports()[0];
    let notify = support::redis_server::command(port, &["CONFIG", "GET", "notify-keyspace-events"]).unwrap();
    assert_eq!(notify.lines().nth(1).unwrap_or(""), "", "{notify}");
}

/// Exports `from` (a SQLite store with values and TTLs) and imports it into `to`.
async fn export_then_import(to: &str) {
    let (_dir, from) = sqlite();
    let app = LiveDict::<Value>::open(&from).await.unwrap();
    app.set("plain", serde_json::json!({"a": [1, 2, {"b": null}]})).await.unwrap();
    app.set_with_ttl("short", Value::from("soon"), Duration::from_secs(60)).await.unwrap();
    app.set_with_ttl("long", Value::from(7.5), Duration::from_secs(3600)).await.unwrap();
    app.shutdown().await.unwrap();

    let dump = ok(&from, &["export"]);
    assert_eq!(dump.lines().count(), 3, "{dump}");
    let first: Value = serde_json::from_str(dump.lines().next().unwrap()).unwrap();
    assert!(first.get("key").is_some() && first.get("value").is_some() && first.get("ttl_ms").is_some());
    let imported = run_with(to, &["import"], &dump);
    assert_eq!(imported.status.code(), Some(0), "{}", stderr(&imported));
    assert_eq!(stdout(&imported), "3\n");

    assert_eq!(ok(to, &["get", "plain"]), "{\"a\":[1,2,{\"b\":null}]}\n");
    assert_eq!(ok(to, &["get", "short"]), "\"soon\"\n");
    assert_eq!(ok(to, &["get", "long"]), "7.5\n");
    assert_eq!(ok(to, &["ttl", "plain"]), "-1\n");
    let short: i64 = ok(to, &["ttl", "short"]).trim().parse().unwrap();
    let long: i64 = ok(to, &["ttl", "long"]).trim().parse().unwrap();
    assert!(short > 0 && short <= 60_000, "{short}");
    assert!(long > 60_000 && long <= 3_600_000, "{long}");
    // Read back by the library too: the same values, whatever wrote them.
    let d = LiveDict::<Value>::open(to).await.unwrap();
    assert_eq!(d.get("long").await.unwrap(), Some(Value::from(7.5)));
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_from_sqlite_imports_into_redis_with_values_and_ttls() {
    let Some(h) = Harness::redis() else { return };
    export_then_import(h.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_from_sqlite_imports_into_a_redis_cluster() {
    let Some(h) = Harness::redis_cluster() else { return };
    export_then_import(h.url()).await;
}

#[test]
fn a_bad_import_line_stops_with_its_number_and_writes_nothing_after_it() {
    let (_dir, url) = sqlite();
    let input = "{\"key\":\"a\",\"value\":1,\"ttl_ms\":null}\n\n{\"key\":\"b\",\"value\":2}\n\
                 {\"key\":\"c\",\"value\":3,\"ttl_ms\":-5}\n{\"key\":\"d\",\"value\":4}\n";
    let why = fails(&run_with(&url, &["import"], input));
    assert!(why.contains("line 4"), "{why}");
    let mut keys: Vec<String> = ok(&url, &["keys"]).lines().map(String::from).collect();
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
    assert!(fails(&run_with(&url, &["import"], "not json\n")).contains("line 1"));
}

/// A running `livedict watch`: its stdout lines arrive on a channel.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    /// Starts `livedict --url URL watch ARGS…` and waits until it watches.
    fn start(url: &str, args: &[&str]) -> Watcher {
        let mut child = Command::new(BIN)
            .arg("--url")
            .arg(url)
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run livedict watch");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first).unwrap();
        assert_eq!(first.trim(), "livedict: watching", "watch did not start: {first}");
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watcher { child, lines }
    }

    /// The next event line, parsed (within 10 s).
    fn next(&self) -> Value {
        let line = self.lines.recv_timeout(Duration::from_secs(10)).expect("a watch event");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    /// Ctrl-C: the watch exits 0.
    fn interrupt(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "watch exits 0 on Ctrl-C");
    }
}

/// A test that fails before [`Watcher::interrupt`] leaves no `watch` running.
impl Drop for Watcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `watch` sees another process's set and expiry (published with `share_events=true`).
async fn watch_sees_another_process(url: &str) {
    let shared = format!("{url}{}share_events=true", if url.contains('?') { '&' } else { '?' });
    let app = LiveDict::<Value>::open(&shared).await.unwrap();
    app.set("seed", Value::from(0)).await.unwrap(); // the store exists before the client looks
    let watch = Watcher::start(url, &["--kinds", "set,expire", "--prefix", "job:"]);
    app.set("other", Value::from(1)).await.unwrap(); // another prefix: not shown
    app.set_with_ttl("job:1", serde_json::json!({"id": 1}), Duration::from_millis(300)).await.unwrap();
    let set = watch.next();
    assert_eq!((set["kind"].as_str(), set["key"].as_str()), (Some("set"), Some("job:1")), "{set}");
    assert_eq!(set["value"], serde_json::json!({"id": 1}));
    assert!(set["at"].as_u64().unwrap() > 0);
    let expired = watch.next();
    assert_eq!(
        (expired["kind"].as_str(), expired["key"].as_str()),
        (Some("expire"), Some("job:1")),
        "{expired}"
    );
    assert_eq!(expired["value"], serde_json::json!({"id": 1}));
    watch.interrupt();
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_another_process_on_sqlite() {
    let (_dir, url) = sqlite();
    watch_sees_another_process(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_another_process_on_redis() {
    let Some(h) = Harness::redis() else { return };
    watch_sees_another_process(h.url()).await;
}

/// The observer rule: while the client runs `watch`, `keys` and `get` on the
/// store, the application's own instance still reports every one of its
/// expirations (a client that swept or claimed would take some away).
async fn the_application_keeps_every_expiration(url: &str) {
    const ENTRIES: usize = 30;
    let url = &format!("{url}{}share_events=true", if url.contains('?') { '&' } else { '?' });
    let app = LiveDict::<u32>::open(url).await.unwrap();
    let expired = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&expired);
    app.register_callback(
        EventKind::Expire,
        Callback::new(move |_: &Event<u32>| {
            count.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .unwrap();
    app.set("seed", 0).await.unwrap();
    let watch = Watcher::start(url, &["--kinds", "expire"]);
    for i in 0..ENTRIES {
        // Deadlines spread over the time the client runs below.
        let ttl = Duration::from_millis(150 + 40 * i as u64);
        app.set_with_ttl(format!("k{i}"), i as u32, ttl).await.unwrap();
    }
    let url_owned = url.to_owned();
    let client = tokio::task::spawn_blocking(move || {
        let mut runs = 0;
        while runs < 6 || !ok(&url_owned, &["keys", "--prefix", "k"]).is_empty() {
            for i in [0, ENTRIES / 2, ENTRIES - 1] {
                let got = run(&url_owned, &["get", &format!("k{i}")]);
                assert!(matches!(got.status.code(), Some(0 | 1)), "{}", stderr(&got));
            }
            runs += 1;
            assert!(runs < 500, "entries never expired");
        }
    });
    client.await.unwrap();
    support::eventually("the application reports every expiration", || {
        expired.load(Ordering::SeqCst) == ENTRIES
    })
    .await;
    support::settle().await;
    assert_eq!(expired.load(Ordering::SeqCst), ENTRIES, "each expiration exactly once");
    // The watch saw them too, as the application published them.
    let mut seen: Vec<String> =
        (0..ENTRIES).map(|_| watch.next()["key"].as_str().unwrap().to_owned()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), ENTRIES);
    watch.interrupt();
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_takes_no_expiration_from_the_application_on_sqlite() {
    let (_dir, url) = sqlite();
    the_application_keeps_every_expiration(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_takes_no_expiration_from_the_application_on_redis() {
    let Some(h) = Harness::redis() else { return };
    the_application_keeps_every_expiration(h.url()).await;
}

/// `locks` lists a lock another process holds, with its fence and lease.
async fn locks_lists_another_processs_lock(url: &str) {
    let app = LiveDict::<u32>::open(url).await.unwrap();
    app.set("seed", 0).await.unwrap();
    assert_eq!(ok(url, &["locks"]), "");
    let guard = app.lock("job:7", Duration::from_secs(5)).await.unwrap();
    let _other = app.lock("other", Duration::from_secs(5)).await.unwrap();
    let listed = ok(url, &["locks", "--prefix", "job:"]);
    let fields: Vec<&str> = listed.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 3, "{listed}");
    assert_eq!(fields[0], "job:7");
    assert_eq!(fields[1], guard.fence().to_string());
    let lease: u64 = fields[2].parse().unwrap();
    assert!(lease > 0 && lease <= 30_000, "{lease}");
    let all: Value = serde_json::from_str(&ok(url, &["locks", "--json"])).unwrap();
    let keys: Vec<&str> = all.as_array().unwrap().iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["job:7", "other"]);
    assert_eq!(all[0]["fence"].as_u64(), Some(guard.fence()));
    guard.unlock().await.unwrap();
    assert_eq!(ok(url, &["locks", "--prefix", "job:"]), "");
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_lists_another_processs_lock_on_sqlite() {
    let (_dir, url) = sqlite();
    locks_lists_another_processs_lock(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_lists_another_processs_lock_on_redis() {
    let Some(h) = Harness::redis() else { return };
    locks_lists_another_processs_lock(h.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_lists_another_processs_lock_on_a_redis_cluster() {
    let Some(h) = Harness::redis_cluster() else { return };
    locks_lists_another_processs_lock(h.url()).await;
}

/// `pending` lists an at-least-once expiration whose callback has not returned yet.
async fn pending_lists_a_leased_expiration(url: &str) {
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = &format!("{url}{sep}expire_delivery=at_least_once&expire_lease_ms=60000");
    let app =
        LiveDict::<u32>::builder().url(url).callback_timeout(Duration::from_secs(30)).build().await.unwrap();
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let delivered = Arc::new(AtomicUsize::new(0));
    let (hold, count) = (Arc::clone(&release), Arc::clone(&delivered));
    app.register_callback(
        EventKind::Expire,
        Callback::new(move |_: &Event<u32>| {
            count.fetch_add(1, Ordering::SeqCst);
            while !hold.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }),
    )
    .unwrap();
    assert_eq!(ok(url, &["pending"]), "");
    app.set_with_ttl("invoice:1", 1, Duration::from_millis(100)).await.unwrap();
    support::eventually("the expiration is delivered", || delivered.load(Ordering::SeqCst) == 1).await;
    let listed = ok(url, &["pending"]);
    let fields: Vec<&str> = listed.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 3, "{listed}");
    assert_eq!(fields[0], "invoice:1");
    let lease: u64 = fields[2].parse().unwrap();
    assert!(lease > 0 && lease <= 60_000, "{lease}");
    let json: Value = serde_json::from_str(&ok(url, &["pending", "--json"])).unwrap();
    assert_eq!(json[0]["key"], "invoice:1");
    release.store(true, Ordering::SeqCst);
    app.shutdown().await.unwrap();
    assert_eq!(ok(url, &["pending"]), "", "acknowledged at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_lists_a_leased_expiration_on_sqlite() {
    let (_dir, url) = sqlite();
    pending_lists_a_leased_expiration(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_lists_a_leased_expiration_on_redis() {
    let Some(h) = Harness::redis() else { return };
    pending_lists_a_leased_expiration(h.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_fresh_sqlite_store() {
    let (_dir, url) = sqlite();
    ok(&url, &["set", "k", "1"]);
    let report = ok(&url, &["doctor"]);
    for check in ["journal_mode", "synchronous", "schema_version", "wal_size", "file_mode", "filesystem"] {
        assert!(report.lines().any(|l| l.starts_with("ok") && l.contains(check)), "{check}: {report}");
    }
    let json: Value = serde_json::from_str(&ok(&url, &["doctor", "--json"])).unwrap();
    assert!(json.as_array().unwrap().iter().all(|c| c["status"] == "ok"), "{json}");
}

/// `doctor` warns on `allkeys-lru` without eviction notifications, and leaves the configuration as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_warns_on_allkeys_lru_without_notifications_and_changes_nothing() {
    let Some(h) = Harness::redis() else { return };
    ok(h.url(), &["set", "k", "1"]); // the namespace's layout, written by the client (no CONFIG SET either)
    let port = h.redis_ports()[0];
    let config = |name: &str| support::redis_server::command(port, &["CONFIG", "GET", name]).unwrap();
    support::redis_server::command(port, &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]).unwrap();
    support::redis_server::command(port, &["CONFIG", "SET", "notify-keyspace-events", ""]).unwrap();
    let before = (config("maxmemory-policy"), config("notify-keyspace-events"));
    let out = run(h.url(), &["doctor"]);
    assert_eq!(out.status.code(), Some(1), "a warning exits 1: {}", stdout(&out));
    let report = stdout(&out);
    let memory = report.lines().find(|l| l.contains("maxmemory-policy")).expect("a memory check");
    assert!(memory.starts_with("warn") && memory.contains("allkeys-lru"), "{memory}");
    assert!(
        report.lines().any(|l| l.starts_with("ok") && l.contains("layout") && l.contains("16 shards")),
        "{report}"
    );
    for check in ["persistence", "replicas", "clock"] {
        assert!(report.contains(check), "{check}: {report}");
    }
    assert_eq!(
        (config("maxmemory-policy"), config("notify-keyspace-events")),
        before,
        "configuration unchanged"
    );
    support::redis_server::command(port, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).unwrap();
}

#[test]
fn doctor_checks_the_slots_of_a_redis_cluster() {
    let Some(h) = Harness::redis_cluster() else { return };
    ok(h.url(), &["set", "k", "1"]);
    let out = run(h.url(), &["doctor", "--json"]);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    let checks: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let cluster =
        checks.as_array().unwrap().iter().find(|c| c["check"] == "cluster").expect("a cluster check");
    assert_eq!(cluster["status"], "ok", "{cluster}");
    assert!(cluster["detail"].as_str().unwrap().contains("16384"));
}

/// The client's reads are not uses: an idle entry it keeps reading still expires.
async fn reads_do_not_keep_an_idle_entry_alive(url: &str) {
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = &format!("{url}{sep}time_to_idle_ms=400");
    let app = LiveDict::<u32>::open(url).await.unwrap();
    app.set("session", 1).await.unwrap();
    let url_owned = url.clone();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        // Each `get` comes well within the idle time: an access would keep the entry forever.
        while run(&url_owned, &["get", "session"]).status.code() == Some(0) {
            assert!(started.elapsed() < Duration::from_secs(10), "the client's reads kept the entry alive");
        }
    })
    .await
    .unwrap();
    assert_eq!(app.get("session").await.unwrap(), None);
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_keep_an_idle_entry_alive_on_sqlite() {
    let (_dir, url) = sqlite();
    reads_do_not_keep_an_idle_entry_alive(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_keep_an_idle_entry_alive_on_redis() {
    let Some(h) = Harness::redis() else { return };
    reads_do_not_keep_an_idle_entry_alive(h.url()).await;
}
