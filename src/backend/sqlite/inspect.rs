//! What [`Inspector`](crate::inspect::Inspector) reads from an SQLite store:
//! its locks, pending expirations and health checks (read-only queries on
//! the reader connections, and the file's metadata).

use std::path::Path;

use super::{SqliteBackend, now_ms, schema};
use crate::Value;
use crate::error::Result;
use crate::inspect::{Check, HeldLock, PendingExpiration, Status, left};

/// A WAL larger than this is a warning: checkpoints are not keeping up.
const WAL_WARN_BYTES: u64 = 64 << 20;

/// Filesystem types on which SQLite's locking (and so WAL) is unreliable.
const NETWORK_FILESYSTEMS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "fuse.sshfs",
    "ceph",
    "glusterfs",
    "lustre",
    "afs",
    "davfs",
];

impl<V: Value> SqliteBackend<V> {
    /// The locks held now on keys starting with `prefix`, in key order.
    pub(crate) async fn held_locks(&self, prefix: &str) -> Result<Vec<HeldLock>> {
        let t = format!("{}_locks", self.shared.config.table);
        let prefix = prefix.to_owned();
        self.shared
            .read(move |c, _| {
                let fence = if schema::has_column(c, &t, "fence")? { "fence" } else { "NULL" };
                let mut q = c.prepare(&format!(
                    "SELECT key, {fence}, lease_until FROM \"{t}\" WHERE lease_until > ?1 \
                     AND substr(key, 1, length(?2)) = ?2 ORDER BY key"
                ))?;
                let now = now_ms();
                let rows = q.query_map(rusqlite::params![now, prefix], |r| {
                    let fence: Option<i64> = r.get(1)?;
                    Ok(HeldLock {
                        key: r.get(0)?,
                        fence: fence.map(|f| f as u64),
                        lease_left: left(r.get::<_, i64>(2)? - now),
                    })
                })?;
                rows.collect()
            })
            .await
    }

    /// The leased or waiting expirations, soonest due first.
    pub(crate) async fn pending_expirations(&self) -> Result<Vec<PendingExpiration>> {
        let t = format!("{}_pending", self.shared.config.table);
        self.shared
            .read(move |c, _| {
                if !schema::has_column(c, &t, "key")? {
                    return Ok(Vec::new());
                }
                let mut q = c.prepare(&format!(
                    "SELECT key, attempt, lease_until FROM \"{t}\" ORDER BY lease_until"
                ))?;
                let now = now_ms();
                let rows = q.query_map([], |r| {
                    Ok(PendingExpiration {
                        key: r.get(0)?,
                        attempt: r.get::<_, i64>(1)?.clamp(0, u32::MAX as i64) as u32,
                        lease_left: left(r.get::<_, i64>(2)? - now),
                    })
                })?;
                rows.collect()
            })
            .await
    }

    /// Journal mode, synchronous, schema version, WAL size, file mode, filesystem.
    pub(crate) async fn doctor(&self) -> Result<Vec<Check>> {
        let config = &self.shared.config;
        let (mode, version): (String, Option<i64>) = self
            .shared
            .read(|c, _| {
                let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let version = c
                    .query_row("SELECT value FROM livedict_meta WHERE name = 'schema_version'", [], |r| {
                        r.get(0)
                    })
                    .ok();
                Ok((mode, version))
            })
            .await?;
        let mut checks = Vec::new();
        checks.push(if mode.eq_ignore_ascii_case("wal") {
            Check::new("journal_mode", Status::Ok, "wal: readers never wait for the writer")
        } else {
            Check::new(
                "journal_mode",
                Status::Fail,
                format!("{mode}: livedict needs WAL (readers block writers, commits are slower); open the store once without observer"),
            )
        });
        checks.push(if config.synchronous_full {
            Check::new("synchronous", Status::Ok, "full (this URL): a commit survives power loss")
        } else {
            Check::new(
                "synchronous",
                Status::Ok,
                "normal (this URL): a commit survives a process crash, not a power loss (synchronous=full for that)",
            )
        });
        checks.push(match version {
            Some(v) if v == schema::SCHEMA_VERSION => {
                Check::new("schema_version", Status::Ok, format!("{v}"))
            }
            Some(v) if v < schema::SCHEMA_VERSION => Check::new(
                "schema_version",
                Status::Warn,
                format!(
                    "{v}, older than this livedict's {}: migrated when a process opens it",
                    schema::SCHEMA_VERSION
                ),
            ),
            Some(v) => Check::new(
                "schema_version",
                Status::Fail,
                format!("{v}, newer than this livedict's {}: upgrade livedict", schema::SCHEMA_VERSION),
            ),
            None => {
                Check::new("schema_version", Status::Fail, "no livedict_meta row: not a livedict database")
            }
        });
        let wal = std::fs::metadata(format!("{}-wal", config.path.display())).map(|m| m.len()).unwrap_or(0);
        checks.push(if wal > WAL_WARN_BYTES {
            Check::new(
                "wal_size",
                Status::Warn,
                format!(
                    "{} MB: checkpoints are not keeping up (a long-lived reader, or no process running)",
                    wal >> 20
                ),
            )
        } else {
            Check::new("wal_size", Status::Ok, format!("{wal} bytes"))
        });
        checks.push(file_mode(&config.path));
        checks.push(filesystem(&config.path));
        Ok(checks)
    }
}

/// Whether the database file is private to its owner.
fn file_mode(path: &Path) -> Check {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) => {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 == 0 {
                    Check::new("file_mode", Status::Ok, format!("{mode:04o}"))
                } else {
                    Check::new(
                        "file_mode",
                        Status::Warn,
                        format!("{mode:04o}: other users can read the stored values (chmod 600)"),
                    )
                }
            }
            Err(e) => Check::new("file_mode", Status::Fail, format!("cannot read the file's metadata: {e}")),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Check::new("file_mode", Status::Ok, "not checked on this platform")
    }
}

/// Whether the file is on a network filesystem (from `/proc/mounts`: the
/// longest mount point containing it).
fn filesystem(path: &Path) -> Check {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return Check::new("filesystem", Status::Ok, "not checked (no /proc/mounts)");
    };
    let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let found = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next()?, f.next()?, f.next()?);
            full.starts_with(point).then(|| (point.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len);
    match found {
        Some((_, kind)) if NETWORK_FILESYSTEMS.contains(&kind.as_str()) => Check::new(
            "filesystem",
            Status::Fail,
            format!(
                "{kind}: a network filesystem; SQLite's locks and WAL are unreliable there (use a local disk)"
            ),
        ),
        Some((_, kind)) => Check::new("filesystem", Status::Ok, format!("{kind} (local)")),
        None => Check::new("filesystem", Status::Ok, "not found in /proc/mounts"),
    }
}
