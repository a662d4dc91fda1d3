//! A throw-away `redis-server` on a free 127.0.0.1 port, stopped by its pid on drop.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` owned by one test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    appendonly: bool,
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
        if !redis_available() {
            if std::env::var_os("LIVEDICT_REQUIRE_REDIS").is_some() {
                panic!("LIVEDICT_REQUIRE_REDIS is set but redis-server is not on PATH");
            }
            eprintln!("skipping: redis-server not found (set LIVEDICT_REQUIRE_REDIS to fail instead)");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let port = free_port();
        let mut server = RedisServer { child: None, port, dir, appendonly };
        server.spawn();
        Some(server)
    }

    /// The server's URL, `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
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
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always", "--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        wait_until_listening(self.port, self.dir.path());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    // The OS picks a free port; the tiny race until redis binds it is acceptable in tests.
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

fn wait_until_listening(port: u16, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("redis-server on port {port} (dir {}) did not start within 10 s", dir.display());
}
