//! Child processes for multi-process tests: the test binary runs itself with
//! `LIVEDICT_CHILD=<role>` and only the `child_entry` test, which plays the role.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

/// Starts this test binary as a child playing `role` (see each test file's `child_entry`).
pub fn spawn(role: &str) -> (Child, BufReader<ChildStdout>) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads", "1"])
        .env("LIVEDICT_CHILD", role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child test process");
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    (child, stdout)
}

/// The role this process plays, if it is a child.
pub fn role() -> Option<String> {
    std::env::var("LIVEDICT_CHILD").ok()
}

/// Reads lines until one equals `line` (panics at end of output).
pub fn wait_for_line(out: &mut BufReader<ChildStdout>, line: &str) {
    let mut buf = String::new();
    loop {
        buf.clear();
        assert!(out.read_line(&mut buf).expect("read child output") > 0, "child ended before `{line}`");
        // The test harness prints "test child_entry ... " without a newline first.
        if buf.trim_end().ends_with(line) {
            return;
        }
    }
}

/// Every remaining line of the child's output.
pub fn lines(out: BufReader<ChildStdout>) -> Vec<String> {
    out.lines().map_while(Result::ok).collect()
}
