//! `livedict`: the operator's command-line client for any livedict store.
//!
//! One subcommand per verb ([`Command`]), one small function per command.
//! stdout carries only the answer, stderr the diagnostics; exit status 0 is
//! success, 1 a missing key (`get`) or a warning (`doctor`), 2 an error (a
//! bad URL or argument, an unreachable server), always with a one-line
//! message and never a panic. Every command opens the store as an observer
//! (see [`open`]): running it never changes what the application sees.

mod commands;
mod duration;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Inspect, watch, move and check a livedict store (memory, SQLite, Redis) from a shell.
///
/// Values are JSON: any store written with the JSON or MessagePack codec can
/// be read, whatever type the application stored. The client opens the store
/// as an observer: it never runs an expiry driver or sweeper, never claims an
/// expiration, never changes the server's configuration, and never creates a
/// table or key layout except to write into a new store (`set`, `import`,
/// `lock`).
#[derive(Debug, Parser)]
#[command(name = "livedict", version, propagate_version = true)]
pub struct Cli {
    /// The store URL: sqlite://file.db, redis://host:6379/0?namespace=app, redis-cluster://…
    /// (every option livedict accepts).
    #[arg(long, env = "LIVEDICT_URL", global = true)]
    url: Option<String>,

    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The commands; each prints its answer on stdout.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the value of KEY as one line of compact JSON (exit 1, nothing printed, if missing).
    Get {
        /// The key.
        key: String,
    },
    /// Store JSON under KEY (a value that is not JSON is refused unless --string).
    Set {
        /// The key.
        key: String,
        /// The value, as JSON (e.g. '{"user":1}', '42', '"text"').
        value: String,
        /// Expire the value after this long: 500ms, 30s, 2m, 1h, 1d.
        #[arg(long, value_parser = duration::parse)]
        ttl: Option<std::time::Duration>,
        /// Store VALUE as a JSON string, whatever it looks like.
        #[arg(long)]
        string: bool,
    },
    /// Delete KEYs and print how many were removed.
    Del {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print the remaining TTL of KEY in milliseconds: -1 without TTL, -2 if missing (as Redis PTTL).
    Ttl {
        /// The key.
        key: String,
    },
    /// List the keys, one per line (streamed: constant memory whatever the store's size).
    Keys {
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys.
        #[arg(long)]
        limit: Option<u64>,
        /// Print a JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Print the number of live entries.
    Len {
        /// Print {"len":N} instead of the number.
        #[arg(long)]
        json: bool,
    },
    /// Dump entries as JSON lines {"key":…,"value":…,"ttl_ms":…|null} (streamed).
    Export {
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Load JSON lines (as `export` writes them) from stdin, keeping each remaining TTL.
    ///
    /// Prints how many entries were written. A bad line stops the import with
    /// its line number (exit 2); the lines before it are written, nothing after it.
    Import,
    /// Follow the store's events: one JSON line {"kind":…,"key":…,"value":…,"at":ms} per event.
    ///
    /// Shows this client's events and the events that the store's other
    /// processes publish with `share_events=true` in their URL (this client
    /// turns it on for itself); without it their events stay private to
    /// them. Ctrl-C stops it (exit 0, after printing what arrived).
    Watch {
        /// The kinds to show, comma-separated: set,delete,expire,evict (default: all four).
        #[arg(long, value_delimiter = ',', value_parser = commands::parse_kind)]
        kinds: Vec<livedict::EventKind>,
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// List the locks held now, by any process: key, fence, lease left (ms), tab-separated.
    ///
    /// The fence is `-` for a lock taken by a livedict version that did not record it.
    Locks {
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Print a JSON array of {"key","fence","lease_ms"} instead.
        #[arg(long)]
        json: bool,
    },
    /// List the expirations leased or awaiting redelivery (expire_delivery=at_least_once):
    /// key, attempt, lease left (ms), tab-separated, soonest due first.
    Pending {
        /// Print a JSON array of {"key","attempt","lease_ms"} instead.
        #[arg(long)]
        json: bool,
    },
    /// Check the store's health, read-only: one line per check, `ok`, `warn` or `fail` and why.
    ///
    /// SQLite: journal mode, synchronous, schema version, WAL size, file mode,
    /// network filesystem. Redis: layout version and shards, maxmemory-policy
    /// and eviction notifications, persistence, replicas against
    /// replica_acks, cluster slot coverage and spread, clock offset. Exit 0
    /// when every check is ok, 1 if any warns or fails.
    Doctor {
        /// Print a JSON array of {"check","status","detail"} instead.
        #[arg(long)]
        json: bool,
    },
    /// Take the lock of KEY, hold it, release it; prints the fence once taken.
    Lock {
        /// The key.
        key: String,
        /// How long to hold it: 500ms, 5s, 2m.
        #[arg(long, default_value = "5s", value_parser = duration::parse)]
        hold: std::time::Duration,
        /// How long to wait for another holder before giving up (exit 2).
        #[arg(long, default_value = "5s", value_parser = duration::parse)]
        timeout: std::time::Duration,
    },
}

fn main() -> ExitCode {
    // A bug must still end in one line on stderr and exit 2, never a backtrace:
    // the hook prints the line, and a panic of the command is caught below.
    std::panic::set_hook(Box::new(|info| {
        let message = info.to_string().replace('\n', " ");
        eprintln!("livedict: internal error: {message}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let run = std::panic::AssertUnwindSafe(|| runtime.block_on(commands::run(cli)));
    let Ok(outcome) = std::panic::catch_unwind(run) else { return ExitCode::from(2) };
    // Background tasks of the store (a Redis client's reconnects) never hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(code) => code,
        Err(message) => fail(message),
    }
}

/// Help and version go to stdout (exit 0); any other parse error is one line (exit 2).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            fail(format!("{} (see livedict --help)", first.trim_start_matches("error: ")))
        }
    }
}

/// Prints `message` as one line on stderr; exit status 2.
fn fail(message: String) -> ExitCode {
    eprintln!("livedict: {}", message.replace('\n', " "));
    ExitCode::from(2)
}
