//! The SQLite schema: creation, version check, and every statement livedict runs.

use rusqlite::Connection;

use super::config::SqliteConfig;
use crate::delivery::ExpireDelivery;

/// The schema version this release writes and understands.
pub(super) const SCHEMA_VERSION: i64 = 1;

/// Every statement of one store, with its table name filled in.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) get: String,
    pub(super) deadline: String,
    pub(super) upsert: String,
    pub(super) take_expired: String,
    pub(super) any_due: String,
    pub(super) delete: String,
    pub(super) expire: String,
    pub(super) persist: String,
    pub(super) clear: String,
    pub(super) page_keys: String,
    pub(super) page_items: String,
    pub(super) count: String,
    pub(super) claim_due: String,
    pub(super) earliest: String,
    pub(super) lock_owner: String,
    pub(super) any_lock: String,
    pub(super) lock_drop_stale: String,
    pub(super) lock_insert: String,
    pub(super) lock_renew: String,
    pub(super) lock_release: String,
    pub(super) fence_next: String,
    pub(super) fence_name: String,
    /// Leased expirations (`expire_delivery=at_least_once`), see [`Pending`].
    pub(super) pending: Option<Pending>,
    /// Prefix scans, see [`Scan`].
    pub(super) scan: Scan,
}

/// The statements of a prefix scan page: a range of the primary key's index
/// (`?1` <= key, and key < `?4` for the `_to` forms), live at `?2`, in key
/// order, at most `?3` rows. No `LIKE`: a prefix's `%` and `_` are plain
/// characters, and the range is a seek on the index, not a scan of the table.
#[derive(Debug)]
pub(super) struct Scan {
    pub(super) keys_to: String,
    pub(super) keys_all: String,
    pub(super) items_to: String,
    pub(super) items_all: String,
}

impl Scan {
    fn new(t: &str, live: &str) -> Self {
        let page = |cols: &str, to: &str| {
            format!("SELECT {cols} FROM \"{t}\" WHERE key >= ?1 {to}AND {live} ORDER BY key LIMIT ?3")
        };
        Scan {
            keys_to: page("key", "AND key < ?4 "),
            keys_all: page("key", ""),
            items_to: page("key, value", "AND key < ?4 "),
            items_all: page("key, value", ""),
        }
    }

    /// The statement for a page of keys (`values`: and values), with an upper bound or not.
    pub(super) fn page(&self, values: bool, bounded: bool) -> &str {
        match (values, bounded) {
            (false, true) => &self.keys_to,
            (false, false) => &self.keys_all,
            (true, true) => &self.items_to,
            (true, false) => &self.items_all,
        }
    }
}

/// The smallest string above every string that starts with `prefix`
/// (`None`: there is none, every key from `prefix` on qualifies): `prefix`
/// with its last character replaced by the next one, dropping trailing
/// `char::MAX`. UTF-8 sorts bytewise like code points, so as SQLite compares
/// text (`BINARY`: `memcmp`), `prefix <= key < end` holds exactly for the
/// keys that start with `prefix`.
pub(super) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next scalar value, skipping the surrogate gap.
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The statements of the pending table `<table>_pending`: expirations claimed
/// under `at_least_once`, each leased to the process that claimed it until
/// acknowledged. `attempt` is the number of deliveries so far (0: found
/// expired by a write, not delivered yet); `lease_until` is when it may be
/// delivered (again).
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) lease_ms: i64,
    pub(super) max_attempts: u32,
    /// `?1` key, `?2` value, `?3` now: due for its first delivery.
    pub(super) hold: String,
    /// `?1` now, `?2` max attempts → the keys dropped after their last attempt.
    pub(super) abandon: String,
    /// `?1` now, `?2` new lease deadline, `?3` limit → id, key, value, attempt.
    pub(super) claim: String,
    /// `?1` id, `?2` attempt.
    pub(super) ack: String,
    /// `?1` id, `?2` attempt, `?3` now: deliver again at once.
    pub(super) nack: String,
}

impl Sql {
    pub(super) fn new(t: &str, delivery: &ExpireDelivery) -> Self {
        // `t` is validated to [A-Za-z0-9_]+, so quoting it is enough.
        let live = "(expires_at IS NULL OR expires_at > ?2)";
        let p = format!("\"{t}_pending\"");
        let pending = delivery.at_least_once().then(|| Pending {
            lease_ms: delivery.lease_ms(),
            max_attempts: delivery.max_attempts,
            hold: format!("INSERT INTO {p} (key, value, attempt, lease_until) VALUES (?1, ?2, 0, ?3)"),
            abandon: format!("DELETE FROM {p} WHERE lease_until <= ?1 AND attempt >= ?2 RETURNING key"),
            claim: format!(
                "UPDATE {p} SET attempt = attempt + 1, lease_until = ?2 WHERE id IN \
                 (SELECT id FROM {p} WHERE lease_until <= ?1 ORDER BY lease_until LIMIT ?3) \
                 RETURNING id, key, value, attempt"
            ),
            ack: format!("DELETE FROM {p} WHERE id = ?1 AND attempt = ?2"),
            nack: format!("UPDATE {p} SET lease_until = ?3 WHERE id = ?1 AND attempt = ?2"),
        });
        let earliest = if pending.is_some() {
            format!(
                "SELECT min(at) FROM (SELECT min(expires_at) AS at FROM \"{t}\" WHERE expires_at IS NOT NULL \
                 UNION ALL SELECT min(lease_until) FROM {p})"
            )
        } else {
            // `IS NOT NULL` lets SQLite use the partial index on `expires_at`; without it
            // `min` scanned the whole table (measured: 2.7 ms at 60,000 rows without a
            // TTL, on every turn of the expiry driver).
            format!("SELECT min(expires_at) FROM \"{t}\" WHERE expires_at IS NOT NULL")
        };
        Sql {
            scan: Scan::new(t, live),
            pending,
            earliest,
            get: format!("SELECT value, expires_at FROM \"{t}\" WHERE key = ?1 AND {live}"),
            deadline: format!("SELECT expires_at FROM \"{t}\" WHERE key = ?1 AND {live}"),
            upsert: format!(
                "INSERT INTO \"{t}\" (key, value, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
            ),
            take_expired: format!("DELETE FROM \"{t}\" WHERE key = ?1 AND expires_at <= ?2 RETURNING value"),
            any_due: format!("SELECT EXISTS (SELECT 1 FROM \"{t}\" WHERE expires_at <= ?1)"),
            delete: format!("DELETE FROM \"{t}\" WHERE key = ?1 RETURNING value, expires_at"),
            expire: format!("UPDATE \"{t}\" SET expires_at = ?3 WHERE key = ?1 AND {live}"),
            persist: format!(
                "UPDATE \"{t}\" SET expires_at = NULL WHERE key = ?1 AND expires_at IS NOT NULL AND expires_at > ?2"
            ),
            clear: format!("DELETE FROM \"{t}\""),
            page_keys: format!("SELECT key FROM \"{t}\" WHERE key > ?1 AND {live} ORDER BY key LIMIT ?3"),
            page_items: format!(
                "SELECT key, value FROM \"{t}\" WHERE key > ?1 AND {live} ORDER BY key LIMIT ?3"
            ),
            count: format!("SELECT count(*) FROM \"{t}\" WHERE expires_at IS NULL OR expires_at > ?1"),
            claim_due: format!(
                "DELETE FROM \"{t}\" WHERE key IN \
                 (SELECT key FROM \"{t}\" WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2) \
                 RETURNING key, value"
            ),
            lock_owner: format!("SELECT owner FROM \"{t}_locks\" WHERE key = ?1 AND lease_until > ?2"),
            any_lock: format!("SELECT EXISTS (SELECT 1 FROM \"{t}_locks\")"),
            lock_drop_stale: format!("DELETE FROM \"{t}_locks\" WHERE key = ?1 AND lease_until <= ?2"),
            lock_insert: format!(
                "INSERT INTO \"{t}_locks\" (key, owner, lease_until) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO NOTHING"
            ),
            lock_renew: format!(
                "UPDATE \"{t}_locks\" SET lease_until = ?3 WHERE key = ?1 AND owner = ?2 AND lease_until > ?4"
            ),
            lock_release: format!("DELETE FROM \"{t}_locks\" WHERE key = ?1 AND owner = ?2"),
            fence_next: "UPDATE livedict_meta SET value = value + 1 WHERE name = ?1 RETURNING value".into(),
            fence_name: format!("fence:{t}"),
        }
    }
}

/// Sets the connection's pragmas (every connection, readers included).
pub(super) fn configure(conn: &Connection, config: &SqliteConfig) -> rusqlite::Result<()> {
    conn.busy_timeout(config.busy_timeout)?;
    if !config.in_memory() {
        // WAL: readers proceed during writes, and one fsync per committed batch.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
    }
    conn.pragma_update(None, "synchronous", if config.synchronous_full { "FULL" } else { "NORMAL" })?;
    Ok(())
}

/// Why [`create`] failed.
#[derive(Debug)]
pub(super) enum CreateError {
    /// SQLite refused a statement (maybe transiently: busy, locked).
    Sqlite(rusqlite::Error),
    /// The file was written by a newer livedict.
    Version(String),
}

/// Creates the tables if missing and checks the schema version.
pub(super) fn create(conn: &mut Connection, config: &SqliteConfig) -> Result<(), CreateError> {
    let t = &config.table;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(CreateError::Sqlite)?;
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS livedict_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
         INSERT OR IGNORE INTO livedict_meta (name, value) VALUES ('schema_version', {SCHEMA_VERSION});
         INSERT OR IGNORE INTO livedict_meta (name, value) VALUES ('fence:{t}', 0);
         CREATE TABLE IF NOT EXISTS \"{t}\" (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, expires_at INTEGER);
         CREATE INDEX IF NOT EXISTS \"{t}_expires_at\" ON \"{t}\" (expires_at) WHERE expires_at IS NOT NULL;
         CREATE TABLE IF NOT EXISTS \"{t}_locks\" (key TEXT PRIMARY KEY NOT NULL, owner TEXT NOT NULL, lease_until INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS \"{t}_pending\" (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, \
           value BLOB NOT NULL, attempt INTEGER NOT NULL, lease_until INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS \"{t}_pending_lease\" ON \"{t}_pending\" (lease_until);"
    ))
    .map_err(CreateError::Sqlite)?;
    let version: i64 = tx
        .query_row("SELECT value FROM livedict_meta WHERE name = 'schema_version'", [], |r| r.get(0))
        .map_err(CreateError::Sqlite)?;
    if version > SCHEMA_VERSION {
        return Err(CreateError::Version(format!(
            "schema version {version} is newer than this livedict understands ({SCHEMA_VERSION}); upgrade livedict"
        )));
    }
    tx.commit().map_err(CreateError::Sqlite)
}

#[cfg(test)]
mod tests {
    use super::{Sql, create, prefix_end};
    use crate::Delivery;
    use crate::backend::SqliteConfig;
    use crate::delivery::ExpireDelivery;

    /// The plan of a query on a fresh schema, one line per step.
    fn plan(conn: &rusqlite::Connection, query: &str, args: usize) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {query}")).unwrap();
        let args: Vec<i64> = vec![0; args];
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    /// The queries the expiry driver runs on every turn read the deadline
    /// index instead of scanning the table (a scan costs milliseconds per
    /// turn at 100,000 rows).
    #[test]
    fn deadline_queries_use_the_deadline_index() {
        for mode in [Delivery::AtMostOnce, Delivery::AtLeastOnce] {
            let delivery = ExpireDelivery { mode, ..ExpireDelivery::default() };
            let config = SqliteConfig::new(":memory:");
            let mut conn = rusqlite::Connection::open_in_memory().unwrap();
            create(&mut conn, &config).unwrap();
            let sql = Sql::new(&config.table, &delivery);
            for (query, args) in [(&sql.earliest, 0), (&sql.any_due, 1), (&sql.claim_due, 2)] {
                let plan = plan(&conn, query, args);
                assert!(plan.contains("_expires_at"), "{query}: {plan}");
                assert!(!plan.contains(&format!("SCAN {}", config.table)), "{query}: {plan}");
            }
        }
    }

    /// A scan page is a seek on the key's index (a range, never a `LIKE` or a
    /// scan of the table), already in key order (no sort step).
    #[test]
    fn scan_pages_seek_the_key_index() {
        let config = SqliteConfig::new(":memory:");
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        create(&mut conn, &config).unwrap();
        let sql = Sql::new(&config.table, &ExpireDelivery::default());
        for (values, bounded) in [(false, true), (false, false), (true, true), (true, false)] {
            let query = sql.scan.page(values, bounded);
            let plan = plan(&conn, query, if bounded { 4 } else { 3 });
            assert!(
                plan.contains("USING INDEX sqlite_autoindex") && plan.contains("(key>?"),
                "{query}: {plan}"
            );
            if bounded {
                assert!(plan.contains("key<?"), "{query}: {plan}");
            }
            assert!(!plan.contains(&format!("SCAN {}", config.table)), "{query}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{query}: {plan}");
            assert!(!query.contains("LIKE") && !query.contains("GLOB"), "{query}");
        }
    }

    /// The end of a prefix's range is above every key with the prefix and
    /// below every other key above the prefix.
    #[test]
    fn a_prefix_range_ends_at_the_next_string() {
        assert_eq!(prefix_end("user:").as_deref(), Some("user;"));
        assert_eq!(prefix_end("a%").as_deref(), Some("a&"));
        assert_eq!(prefix_end("a\u{7f}").as_deref(), Some("a\u{80}"));
        assert_eq!(prefix_end("a\u{d7ff}").as_deref(), Some("a\u{e000}"));
        assert_eq!(prefix_end("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10ffff}\u{10ffff}"), None);
        assert_eq!(prefix_end(""), None);
        for key in ["user:", "user:1", "user:\u{10ffff}", "user:\u{7f}\u{0}"] {
            assert!(key < prefix_end("user:").unwrap().as_str());
        }
    }
}
