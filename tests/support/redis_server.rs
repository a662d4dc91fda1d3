//! Throw-away Redis servers and clusters for tests and benches, on loopback
//! ports that no other test can take, each proven to be the server it started.
//!
//! # Why ports cannot collide
//!
//! - Ports come from [`PORTS`], below the OS ephemeral range (32768+ on
//!   Linux), so no client socket is ever given one as its local port. The
//!   cluster bus port (`port + 10000`) lies below that range too.
//! - A port is *leased* before a server is started on it: a lease file
//!   created with `create_new` in a shared directory, holding the owner's pid.
//!   Two threads or processes cannot both create it; a lease whose owner died
//!   is taken over. Each process starts its search at a pid-derived offset, so
//!   parallel test binaries rarely even try the same port.
//! - After start, the harness asks the port `INFO server` and checks that
//!   `process_id` is its own child's pid. If the child exited (the port was
//!   busy outside our leases) or someone else answers, it kills its child and
//!   retries on another port.
//!
//! Servers are stopped by their own pid (`Child::kill`) on drop; their
//! directories are temporary.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The ports servers may be given (cluster bus ports are these + 10000).
pub const PORTS: std::ops::Range<u16> = 12000..21000;

/// Offset of a cluster node's bus port.
const BUS_OFFSET: u16 = 10000;

/// Whether `redis-server` is installed; panics when it is not but
/// `LIVEDICT_REQUIRE_REDIS` is set (so CI can never skip silently).
pub fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("LIVEDICT_REQUIRE_REDIS").is_some() {
            panic!("LIVEDICT_REQUIRE_REDIS is set but redis-server is not on PATH");
        }
        eprintln!("skipping: redis-server not found (set LIVEDICT_REQUIRE_REDIS to fail instead)");
    }
    found
}

// ---------------------------------------------------------------------------
// Port leases

/// An exclusive claim on one port (and its bus port), released on drop.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    file: PathBuf,
}

impl PortLease {
    /// Leases a port no other lease holder (thread or process) has, and that
    /// nothing else listens on right now.
    pub fn new() -> PortLease {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = lease_dir();
        let span = u32::from(PORTS.end - PORTS.start);
        let start = std::process::id().wrapping_mul(97) % span;
        for _ in 0..span {
            let i = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            let port = PORTS.start + i as u16;
            if let Some(lease) = Self::try_take(&dir, port) {
                return lease;
            }
        }
        panic!("no free test port in {PORTS:?}");
    }

    fn try_take(dir: &Path, port: u16) -> Option<PortLease> {
        let file = dir.join(port.to_string());
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&file) {
            Ok(f) => f,
            Err(_) => {
                // Taken: by a live process, or left behind by a dead one.
                let owner: Option<u32> = fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok());
                let alive = owner.is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if alive {
                    return None;
                }
                // Stale: remove and race for it like anyone else would.
                let _ = fs::remove_file(&file);
                OpenOptions::new().write(true).create_new(true).open(&file).ok()?
            }
        };
        let _ = write!(f, "{}", std::process::id());
        let lease = PortLease { port, file };
        // Not used by anything outside the leases (another program, a server of a crashed run)?
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        (free(port) && free(port + BUS_OFFSET)).then_some(lease)
    }

    /// The leased port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
    }
}

fn lease_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("livedict-test-ports");
    let _ = fs::create_dir_all(&dir);
    dir
}

// ---------------------------------------------------------------------------
// A tiny RESP client (no async runtime needed, so it works from sync setup code)

/// Sends one command to `127.0.0.1:port`; the reply as text (bulk or simple
/// string, integer), or `Err` with the error reply / I/O failure.
pub fn command(port: u16, args: &[&str]) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(out.as_bytes()).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader)
}

fn read_reply(r: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end_matches("\r\n");
    match line.split_at_checked(1) {
        Some(("+", s)) | Some((":", s)) => Ok(s.to_owned()),
        Some(("-", e)) => Err(e.to_owned()),
        Some(("$", n)) => {
            let n: i64 = n.parse().map_err(|_| format!("bad bulk length {n}"))?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf).map_err(|e| e.to_string())?;
            buf.truncate(n as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        Some(("*", n)) => {
            let n: i64 = n.parse().map_err(|_| format!("bad array length {n}"))?;
            let mut parts = Vec::new();
            for _ in 0..n.max(0) {
                parts.push(read_reply(r)?);
            }
            Ok(parts.join("\n"))
        }
        _ => Err(format!("unexpected reply `{line}`")),
    }
}

/// One `field:value` line of an `INFO` / `CLUSTER INFO` reply.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_owned()))
}

/// Every key on the server on `port` that matches `pattern` (a `SCAN` loop).
pub fn scan(port: u16, pattern: &str) -> Vec<String> {
    let mut all = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let reply = command(port, &["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]).expect("SCAN");
        let mut lines = reply.lines();
        cursor = lines.next().unwrap_or("0").to_owned();
        all.extend(lines.map(str::to_owned));
        if cursor == "0" {
            return all;
        }
    }
}

/// How many times the servers on `ports` ran `command` (lower case, e.g.
/// `get`; calls from scripts included), from `INFO commandstats`.
pub fn command_calls(ports: &[u16], command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    ports
        .iter()
        .map(|&port| {
            let stats = self::command(port, &["INFO", "commandstats"]).unwrap_or_default();
            stats
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

// ---------------------------------------------------------------------------
// One server

/// How a server is configured.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// `appendonly yes` with `appendfsync always`.
    pub appendonly: bool,
    /// `cluster-enabled yes` with this node timeout (ms).
    pub cluster_node_timeout_ms: Option<u64>,
    /// More `--name value` arguments.
    pub extra: Vec<(String, String)>,
    /// Run as a Sentinel monitoring the master `(name, port, quorum)`.
    pub sentinel_of: Option<(String, u16, u32)>,
}

/// A running `redis-server` owned by one test.
pub struct RedisServer {
    child: Option<Child>,
    lease: PortLease,
    dir: tempfile::TempDir,
    options: ServerOptions,
}

impl RedisServer {
    /// Starts a server, or returns `None` (test skips) when `redis-server` is not
    /// installed and `LIVEDICT_REQUIRE_REDIS` is unset. With the variable set, a
    /// missing server panics, so CI cannot skip silently.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(false)
    }

    /// Like [`RedisServer::start`], with `appendonly yes` (fsync every write) when asked.
    pub fn start_with(appendonly: bool) -> Option<RedisServer> {
        Self::start_options(ServerOptions { appendonly, ..Default::default() })
    }

    /// Starts a server configured by `options` (see [`RedisServer::start`] for `None`).
    pub fn start_options(options: ServerOptions) -> Option<RedisServer> {
        if !redis_available() {
            return None;
        }
        Some(Self::spawn_new(options))
    }

    /// Leases ports until a server starts on one and proves to be ours.
    fn spawn_new(options: ServerOptions) -> RedisServer {
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("temp dir for redis-server");
            let mut server =
                RedisServer { child: None, lease: PortLease::new(), dir, options: options.clone() };
            if server.spawn().is_ok() {
                return server;
            }
        }
        panic!("could not start a redis-server of our own in 20 attempts");
    }

    /// The server's URL, `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port())
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.lease.port()
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends one command to this server (see [`command`]).
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        command(self.port(), args)
    }

    /// Kills the server with SIGKILL (no clean shutdown) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        // The port stays leased to us; only a foreign program could take it meanwhile.
        for _ in 0..50 {
            if self.spawn().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server could not restart on port {}", self.port());
    }

    /// Starts the child and waits until it answers as itself.
    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port().to_string();
        let o = &self.options;
        let mut cmd = Command::new("redis-server");
        if let Some((name, master, quorum)) = &o.sentinel_of {
            // Sentinel keeps its state in its config file, so it gets one of its own.
            let conf = self.dir.path().join("sentinel.conf");
            if !conf.exists() {
                let text = format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile sentinel.log\n\
                     sentinel monitor {name} 127.0.0.1 {master} {quorum}\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 5000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = self.dir.path().display()
                );
                fs::write(&conf, text).expect("write sentinel.conf");
            }
            cmd.arg(&conf).arg("--sentinel");
        } else {
            cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                .args(["--appendonly", if o.appendonly { "yes" } else { "no" }])
                .args(["--appendfsync", "always", "--daemonize", "no", "--protected-mode", "yes"])
                .args(["--loglevel", "warning", "--logfile", "server.log"])
                .arg("--dir")
                .arg(self.dir.path());
            if let Some(timeout) = o.cluster_node_timeout_ms {
                cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                    .args(["--cluster-node-timeout", &timeout.to_string()]);
            }
            for (name, value) in &o.extra {
                cmd.arg(format!("--{name}")).arg(value);
            }
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn redis-server");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.as_mut().map_or(Ok(None), Child::try_wait) {
                self.child = None;
                return Err(format!("redis-server on port {port} exited at start: {status}"));
            }
            if let Ok(info) = self.command(&["INFO", "server"]) {
                if info_field(&info, "process_id") == Some(pid.to_string()) {
                    return Ok(());
                }
                // Someone else's server answers on our port: never talk to it.
                self.kill();
                return Err(format!("port {port} is answered by another server"));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("redis-server on port {port} did not answer within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// A local Redis Cluster

/// A local Redis Cluster: `masters` masters with `replicas` replicas each,
/// every node a [`RedisServer`] of this test, joined by `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    masters: usize,
}

impl RedisCluster {
    /// Starts and joins the cluster and waits for `cluster_state:ok` on every
    /// node; `None` when Redis is not installed (and not required).
    pub fn start(masters: usize, replicas: usize) -> Option<RedisCluster> {
        Self::start_with_timeout(masters, replicas, 2000)
    }

    /// Like [`RedisCluster::start`] with a given `cluster-node-timeout` (ms).
    pub fn start_with_timeout(masters: usize, replicas: usize, node_timeout_ms: u64) -> Option<RedisCluster> {
        if !redis_available() {
            return None;
        }
        let options = ServerOptions { cluster_node_timeout_ms: Some(node_timeout_ms), ..Default::default() };
        let nodes: Vec<RedisServer> =
            (0..masters * (1 + replicas)).map(|_| RedisServer::spawn_new(options.clone())).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, masters };
        cluster.wait_until_ok(Duration::from_secs(30));
        if replicas > 0 {
            cluster.wait_until_replicas_synced(Duration::from_secs(30));
        }
        Some(cluster)
    }

    /// Waits until every running node reports `cluster_state:ok` and knows every running node.
    pub fn wait_until_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let running: Vec<&RedisServer> = self.nodes.iter().filter(|n| n.pid().is_some()).collect();
            let ok = running.iter().all(|n| {
                n.command(&["CLUSTER", "INFO"])
                    .is_ok_and(|i| info_field(&i, "cluster_state").as_deref() == Some("ok"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster did not reach cluster_state:ok within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_until_replicas_synced(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for n in &self.nodes {
            loop {
                let info = n.command(&["INFO", "replication"]).unwrap_or_default();
                let role = info_field(&info, "role");
                if role.as_deref() == Some("master")
                    || info_field(&info, "master_link_status").as_deref() == Some("up")
                {
                    break;
                }
                assert!(Instant::now() < deadline, "replica on {} did not sync", n.port());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `redis-cluster://` URL naming every node as a seed.
    pub fn url(&self) -> String {
        let first = self.nodes[0].port();
        let rest: Vec<String> =
            self.nodes[1..].iter().map(|n| format!("node=127.0.0.1:{}", n.port())).collect();
        if rest.is_empty() {
            format!("redis-cluster://127.0.0.1:{first}")
        } else {
            format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
        }
    }

    /// `redis-cluster://` URL naming only node `i` as its seed.
    pub fn url_via(&self, i: usize) -> String {
        format!("redis-cluster://127.0.0.1:{}", self.nodes[i].port())
    }

    /// Every node, masters first (as they were created).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `i`, mutably (to kill or restart it).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// How many masters the cluster was created with.
    pub fn master_count(&self) -> usize {
        self.masters
    }

    /// The running nodes that are masters now (indexes into [`nodes`](Self::nodes)).
    pub fn current_masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].pid().is_some()
                    && self.nodes[i]
                        .command(&["INFO", "replication"])
                        .is_ok_and(|info| info_field(&info, "role").as_deref() == Some("master"))
            })
            .collect()
    }

    /// The running node that serves `slot` now.
    pub fn master_of_slot(&self, slot: u16) -> Option<usize> {
        (0..self.nodes.len())
            .find(|&i| self.nodes[i].pid().is_some() && owns_slot(self.nodes[i].port(), slot))
    }
}

/// Whether the node on `port` serves `slot` itself (its `CLUSTER NODES` line for `myself`).
fn owns_slot(port: u16, slot: u16) -> bool {
    let Ok(nodes) = command(port, &["CLUSTER", "NODES"]) else { return false };
    let Some(me) = nodes.lines().find(|l| l.contains("myself")) else { return false };
    me.split_whitespace().skip(8).any(|range| match range.split_once('-') {
        Some((a, b)) => {
            a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b)
        }
        None => range.parse::<u16>() == Ok(slot),
    })
}

// ---------------------------------------------------------------------------
// Sentinel

/// A master, `replicas` replicas and three Sentinels (quorum 2) watching it as `mymaster`.
pub struct RedisSentinel {
    /// `[master, replica, …]` as started (roles change on failover).
    pub data: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
}

impl RedisSentinel {
    /// The name the Sentinels know the master by.
    pub const NAME: &'static str = "mymaster";

    /// Starts and waits until every Sentinel knows the replica and each other.
    pub fn start(replicas: usize) -> Option<RedisSentinel> {
        if !redis_available() {
            return None;
        }
        let master = RedisServer::spawn_new(ServerOptions::default());
        let replica_of = ServerOptions {
            extra: vec![("replicaof".into(), format!("127.0.0.1 {}", master.port()))],
            ..Default::default()
        };
        let mut data = vec![master];
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..replicas {
            let replica = RedisServer::spawn_new(replica_of.clone());
            while replica
                .command(&["INFO", "replication"])
                .ok()
                .and_then(|i| info_field(&i, "master_link_status"))
                != Some("up".into())
            {
                assert!(Instant::now() < deadline, "replica did not sync");
                std::thread::sleep(Duration::from_millis(50));
            }
            data.push(replica);
        }
        let master = &data[0];
        let watch =
            ServerOptions { sentinel_of: Some((Self::NAME.into(), master.port(), 2)), ..Default::default() };
        let sentinels: Vec<RedisServer> = (0..3).map(|_| RedisServer::spawn_new(watch.clone())).collect();
        for s in &sentinels {
            loop {
                let info = s.command(&["SENTINEL", "MASTER", Self::NAME]).unwrap_or_default();
                let field = |name: &str| {
                    let lines: Vec<&str> = info.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .map(|v| v.to_string())
                };
                if field("num-slaves") == Some(replicas.to_string())
                    && field("num-other-sentinels").as_deref() == Some("2")
                {
                    break;
                }
                assert!(Instant::now() < deadline, "sentinels did not discover each other and the replica");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Some(RedisSentinel { data, sentinels })
    }

    /// A master watched by one Sentinel, no replica: enough to run a store
    /// through `redis-sentinel://` (the Sentinel knows the master from its
    /// config at once), cheap enough for every test of the behavioural suite.
    pub fn start_minimal() -> Option<RedisSentinel> {
        if !redis_available() {
            return None;
        }
        let master = RedisServer::spawn_new(ServerOptions::default());
        let watch =
            ServerOptions { sentinel_of: Some((Self::NAME.into(), master.port(), 1)), ..Default::default() };
        let sentinel = RedisServer::spawn_new(watch);
        let deadline = Instant::now() + Duration::from_secs(10);
        while sentinel
            .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::NAME])
            .map_or(true, |r| r.is_empty())
        {
            assert!(Instant::now() < deadline, "sentinel does not know its master");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(RedisSentinel { data: vec![master], sentinels: vec![sentinel] })
    }

    /// `redis-sentinel://` URL naming every Sentinel.
    pub fn url(&self) -> String {
        let rest: Vec<String> =
            self.sentinels[1..].iter().map(|s| format!("&node=127.0.0.1:{}", s.port())).collect();
        format!(
            "redis-sentinel://127.0.0.1:{}/0?service_name={}{}",
            self.sentinels[0].port(),
            Self::NAME,
            rest.concat()
        )
    }

    /// The port of the current master, as the Sentinels see it.
    pub fn master_port(&self) -> Option<u16> {
        let reply = self.sentinels.iter().find_map(|s| {
            s.pid()?;
            s.command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::NAME]).ok()
        })?;
        reply.lines().nth(1)?.parse().ok()
    }
}
