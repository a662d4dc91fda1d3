//! The SQLite schema: creation, version check, and every statement livedict runs.

use rusqlite::Connection;

use super::config::SqliteConfig;
use crate::delivery::ExpireDelivery;

/// The schema version this release writes and understands.
///
/// 1: the first. 2: the size bound (`max_capacity`, `max_bytes`): each
/// store's table has a `seq` column (see [`migrate_v2`]).
pub(super) const SCHEMA_VERSION: i64 = 2;

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
    /// Records a granted lock's fence in its row (`?1` key, `?2` fence), for
    /// operators (`livedict locks`); `None` where the column is missing (an
    /// observer on a file no process of this version opened).
    pub(super) lock_fence: Option<String>,
    /// Leased expirations (`expire_delivery=at_least_once`), see [`Pending`].
    pub(super) pending: Option<Pending>,
    /// The size bound's statements, see [`SizeSql`].
    pub(super) sized: SizeSql,
    /// This process's bound, if it has one (`max_capacity`, `max_bytes`).
    pub(super) bound: Option<Bound>,
    /// With `time_to_idle`, see [`IdleSql`].
    pub(super) idle: Option<IdleSql>,
    /// Whether the writer's batches also claim due rows (not in observer mode, see
    /// [`SqliteConfig::observer`]).
    pub(super) claim_in_batch: bool,
    /// Prefix scans, see [`Scan`].
    pub(super) scan: Scan,
}

/// The size bound of this process (see [`SqliteConfig::max_capacity`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Bound {
    /// Most entries (`max_capacity`), `u64::MAX` if unbounded.
    pub(super) entries: u64,
    /// Most bytes of keys and values (`max_bytes`), `u64::MAX` if unbounded.
    pub(super) bytes: u64,
    /// `least_recently_used`: a read moves an entry to the back of the line.
    pub(super) lru: bool,
}

/// The statements of the size bound. Once any process opened the store with a
/// bound, the store is *sized*: `<table>_size` holds its one row (entries, bytes
/// of keys and values), which triggers keep exact on every insert, update and
/// delete by any process, and every write stamps the row's `seq` (its place in
/// the eviction order, from the index `<table>_seq`). A store never opened with
/// a bound has neither (no cost on its writes).
#[derive(Debug)]
pub(super) struct SizeSql {
    /// → entries, bytes; no row while the store is not sized.
    pub(super) size: String,
    /// → the greatest `seq` (0 if none).
    pub(super) max_seq: String,
    /// `upsert` that also stamps `?4` as the row's `seq`.
    pub(super) upsert_seq: String,
    /// `?1` key, `?2` seq: a read under `least_recently_used`.
    pub(super) touch: String,
    /// The rows oldest first: seq, rowid, bytes of key and value.
    pub(super) oldest: String,
    /// `?1` seq, `?2` rowid: deletes every row up to that one in the order,
    /// → key, value, expires_at.
    pub(super) evict: String,
}

/// The statements of a store with `time_to_idle` (see [`Sql::with_idle`]):
/// `expires_at` is the effective deadline (the earlier of the entry's own
/// TTL and its last access + time-to-idle), so every other statement
/// (expiry claims, reads, the earliest deadline) is unchanged; `ttl_at` is
/// the deadline of the entry's own TTL (`NULL`: none), the latest an
/// access may move `expires_at` to.
#[derive(Debug)]
pub(super) struct IdleSql {
    /// The time-to-idle, in ms.
    pub(super) idle_ms: i64,
    /// `?1` key, `?2` now → value, expires_at, ttl_at of the live entry.
    pub(super) get: String,
    /// `?1` key, `?2` now → expires_at, ttl_at of the live entry.
    pub(super) deadline: String,
    /// `?1` key, `?2` now, `?3` now + time-to-idle: moves the live entry's
    /// deadline later (capped by `ttl_at`); one row changed iff it is live.
    pub(super) touch: String,
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
            idle: None,
            claim_in_batch: true,
            earliest,
            sized: SizeSql {
                size: format!("SELECT entries, bytes FROM \"{t}_size\" WHERE id = 0"),
                max_seq: format!("SELECT coalesce(max(seq), 0) FROM \"{t}\""),
                upsert_seq: format!(
                    "INSERT INTO \"{t}\" (key, value, expires_at, seq) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at, \
                     seq = excluded.seq"
                ),
                touch: format!("UPDATE \"{t}\" SET seq = ?2 WHERE key = ?1"),
                oldest: format!(
                    "SELECT seq, rowid, length(CAST(key AS BLOB)) + length(value) FROM \"{t}\" ORDER BY seq, rowid"
                ),
                evict: format!(
                    "DELETE FROM \"{t}\" WHERE seq <= ?1 AND (seq < ?1 OR rowid <= ?2) RETURNING key, value, expires_at"
                ),
            },
            bound: None,
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
            lock_fence: Some(format!("UPDATE \"{t}_locks\" SET fence = ?2 WHERE key = ?1")),
        }
    }
}

/// SQLite's clock in ms since the Unix epoch (the wall clock `now_ms` reads
/// too), for statements that take no `now` argument.
const SQL_NOW_MS: &str = "CAST(round(unixepoch('subsec') * 1000) AS INTEGER)";

impl Sql {
    /// With `time_to_idle` (`idle_ms`): the statements of [`IdleSql`], and the
    /// writes that start an entry's idle period. `upsert` keeps its three
    /// arguments (`?3` is the deadline of the entry's own TTL, or `NULL`) and
    /// reads the time from SQLite's clock, so every caller of it starts the
    /// idle period; `expire` and `persist` set `ttl_at` and restart it.
    pub(super) fn with_idle(mut self, t: &str, idle_ms: Option<i64>) -> Self {
        let Some(idle_ms) = idle_ms else { return self };
        let live = "(expires_at IS NULL OR expires_at > ?2)";
        self.upsert = format!(
            "INSERT INTO \"{t}\" (key, value, expires_at, ttl_at) \
             VALUES (?1, ?2, min(coalesce(?3, 9223372036854775807), {SQL_NOW_MS} + {idle_ms}), ?3) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at, \
             ttl_at = excluded.ttl_at"
        );
        // The size bound's upsert (it stamps the row's `seq` too) likewise.
        self.sized.upsert_seq = format!(
            "INSERT INTO \"{t}\" (key, value, expires_at, ttl_at, seq) \
             VALUES (?1, ?2, min(coalesce(?3, 9223372036854775807), {SQL_NOW_MS} + {idle_ms}), ?3, ?4) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at, \
             ttl_at = excluded.ttl_at, seq = excluded.seq"
        );
        self.expire = format!(
            "UPDATE \"{t}\" SET ttl_at = ?3, expires_at = min(?3, ?2 + {idle_ms}) WHERE key = ?1 AND {live}"
        );
        self.persist = format!(
            "UPDATE \"{t}\" SET ttl_at = NULL, expires_at = ?2 + {idle_ms} \
             WHERE key = ?1 AND ttl_at IS NOT NULL AND expires_at > ?2"
        );
        self.idle = Some(IdleSql {
            idle_ms,
            get: format!("SELECT value, expires_at, ttl_at FROM \"{t}\" WHERE key = ?1 AND {live}"),
            deadline: format!("SELECT expires_at, ttl_at FROM \"{t}\" WHERE key = ?1 AND {live}"),
            touch: format!(
                "UPDATE \"{t}\" SET expires_at = max(expires_at, min(coalesce(ttl_at, ?3), ?3)) \
                 WHERE key = ?1 AND {live}"
            ),
        });
        self
    }
}

/// Migration step (time-to-idle): adds the column `ttl_at INTEGER` (the
/// deadline of an entry's own TTL, see [`IdleSql`]) to the store's table if
/// it lacks it. Run by [`create`] only when the store is opened with a
/// `time_to_idle`, in its transaction; the schema version is unchanged (a
/// store without time-to-idle never reads or writes the column, so older
/// releases and stores without it work on the same file).
fn add_ttl_at_column(tx: &rusqlite::Transaction<'_>, t: &str) -> rusqlite::Result<()> {
    let has: bool = tx.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM pragma_table_info('{t}') WHERE name = 'ttl_at')"),
        [],
        |r| r.get(0),
    )?;
    if !has {
        tx.execute_batch(&format!("ALTER TABLE \"{t}\" ADD COLUMN ttl_at INTEGER"))?;
    }
    Ok(())
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

/// Observer mode (see [`SqliteConfig::observer`]): checks, without writing
/// anything, that the file holds this store in a schema this build reads: the
/// table, its `seq` column (version 2), and its `ttl_at` column if the store
/// is opened with a time-to-idle.
pub(super) fn check(conn: &Connection, config: &SqliteConfig) -> Result<(), CreateError> {
    let t = &config.table;
    let has = |table: &str, column: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, column],
            |r| r.get(0),
        )
    };
    if !has("livedict_meta", "value").map_err(CreateError::Sqlite)?
        || !has(t, "key").map_err(CreateError::Sqlite)?
    {
        return Err(CreateError::Version(format!(
            "no livedict table `{t}` in this file (an observer never creates one)"
        )));
    }
    let version: i64 = conn
        .query_row("SELECT value FROM livedict_meta WHERE name = 'schema_version'", [], |r| r.get(0))
        .map_err(CreateError::Sqlite)?;
    if version > SCHEMA_VERSION {
        return Err(CreateError::Version(format!(
            "schema version {version} is newer than this livedict understands ({SCHEMA_VERSION}); upgrade livedict"
        )));
    }
    if !has(t, "seq").map_err(CreateError::Sqlite)? {
        return Err(CreateError::Version(format!(
            "table `{t}` has schema version 1; open it once without `observer` to migrate it"
        )));
    }
    if config.time_to_idle.is_some() && !has(t, "ttl_at").map_err(CreateError::Sqlite)? {
        return Err(CreateError::Version(format!(
            "table `{t}` has no `ttl_at` column; open it once with `time_to_idle_ms` without `observer`"
        )));
    }
    Ok(())
}

/// Whether `table` has `column`.
pub(super) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
        [table, column],
        |r| r.get(0),
    )
}

/// Why [`create`] failed.
#[derive(Debug)]
pub(super) enum CreateError {
    /// SQLite refused a statement (maybe transiently: busy, locked).
    Sqlite(rusqlite::Error),
    /// The file was written by a newer livedict.
    Version(String),
}

/// Migration step to schema version 2 (the size bound), for one store's
/// table: adds the column `seq INTEGER NOT NULL DEFAULT 0` (each row's place
/// in the eviction order; 0 for rows written before the store was sized,
/// which so come first) and the table `<table>_size` (empty until a process
/// opens the store with a bound, see [`make_sized`]). Runs for every table that lacks the
/// column, whatever the file's recorded version (the version is per file,
/// the tables per store): a file of version 1 is migrated in place when it is
/// opened, in the opening transaction. `ALTER TABLE … ADD COLUMN` with a
/// constant default rewrites no row.
fn migrate_v2(tx: &rusqlite::Transaction<'_>, t: &str) -> rusqlite::Result<()> {
    let has_seq: bool = tx.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM pragma_table_info('{t}') WHERE name = 'seq')"),
        [],
        |r| r.get(0),
    )?;
    if !has_seq {
        tx.execute_batch(&format!("ALTER TABLE \"{t}\" ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;"))?;
    }
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS \"{t}_size\" (id INTEGER PRIMARY KEY CHECK (id = 0), \
           entries INTEGER NOT NULL, bytes INTEGER NOT NULL);"
    ))
}

/// Makes the store *sized* (see [`SizeSql`]) if it is not yet: the index on
/// `seq`, the triggers that keep `<table>_size` exact, and its row, counted
/// from the table in the same transaction. Once sized, a store stays so (the
/// triggers then cost every writer, bound or not, one small update per row
/// written).
fn make_sized(tx: &rusqlite::Transaction<'_>, t: &str) -> rusqlite::Result<()> {
    let sized: bool =
        tx.query_row(&format!("SELECT EXISTS (SELECT 1 FROM \"{t}_size\")"), [], |r| r.get(0))?;
    if sized {
        return Ok(());
    }
    let bytes = "length(CAST(key AS BLOB)) + length(value)";
    tx.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS \"{t}_seq\" ON \"{t}\" (seq);
         CREATE TRIGGER IF NOT EXISTS \"{t}_size_insert\" AFTER INSERT ON \"{t}\" BEGIN
           UPDATE \"{t}_size\" SET entries = entries + 1,
             bytes = bytes + length(CAST(NEW.key AS BLOB)) + length(NEW.value) WHERE id = 0;
         END;
         CREATE TRIGGER IF NOT EXISTS \"{t}_size_update\" AFTER UPDATE OF value ON \"{t}\" BEGIN
           UPDATE \"{t}_size\" SET bytes = bytes + length(NEW.value) - length(OLD.value) WHERE id = 0;
         END;
         CREATE TRIGGER IF NOT EXISTS \"{t}_size_delete\" AFTER DELETE ON \"{t}\" BEGIN
           UPDATE \"{t}_size\" SET entries = entries - 1,
             bytes = bytes - length(CAST(OLD.key AS BLOB)) - length(OLD.value) WHERE id = 0;
         END;
         INSERT INTO \"{t}_size\" (id, entries, bytes) SELECT 0, count(*), coalesce(sum({bytes}), 0) FROM \"{t}\";"
    ))
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
    // Version 1 → 2: the size bound.
    migrate_v2(&tx, t).map_err(CreateError::Sqlite)?;
    if config.bounded() {
        make_sized(&tx, t).map_err(CreateError::Sqlite)?;
    }
    if version < SCHEMA_VERSION {
        tx.execute("UPDATE livedict_meta SET value = ?1 WHERE name = 'schema_version'", [SCHEMA_VERSION])
            .map_err(CreateError::Sqlite)?;
    }
    // Lock fences (no version change): the `fence` column of the locks table.
    if !has_column(&tx, &format!("{t}_locks"), "fence").map_err(CreateError::Sqlite)? {
        tx.execute_batch(&format!("ALTER TABLE \"{t}_locks\" ADD COLUMN fence INTEGER"))
            .map_err(CreateError::Sqlite)?;
    }
    // Time-to-idle (no version change): the optional `ttl_at` column.
    if config.time_to_idle.is_some() {
        add_ttl_at_column(&tx, t).map_err(CreateError::Sqlite)?;
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

    /// The time-to-idle migration step adds `ttl_at` once (opening again
    /// is a no-op), and the idle statements prepare against it.
    #[test]
    fn the_idle_migration_adds_ttl_at_once() {
        let config = SqliteConfig::new(":memory:").time_to_idle(std::time::Duration::from_secs(1));
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        create(&mut conn, &config).unwrap();
        create(&mut conn, &config).unwrap();
        let sql = Sql::new(&config.table, &ExpireDelivery::default()).with_idle(&config.table, Some(1000));
        let idle = sql.idle.as_ref().unwrap();
        for q in [&sql.upsert, &sql.expire, &sql.persist, &idle.get, &idle.deadline, &idle.touch] {
            conn.prepare(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        }
        conn.execute(&sql.upsert, rusqlite::params!["k", b"1".to_vec(), None::<i64>]).unwrap();
        let (at, ttl_at): (Option<i64>, Option<i64>) = conn
            .query_row("SELECT expires_at, ttl_at FROM livedict", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert!(at.is_some(), "the upsert starts the idle period");
        assert_eq!(ttl_at, None);
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

    /// The size bound's walk and eviction read the `seq` index, and the
    /// triggers keep the size row exact through inserts, upserts and deletes.
    #[test]
    fn a_sized_store_evicts_by_the_seq_index_and_counts_exactly() {
        let config = SqliteConfig::new(":memory:").max_capacity(10);
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        create(&mut conn, &config).unwrap();
        let sql = Sql::new(&config.table, &ExpireDelivery::default());
        for (query, args) in [(&sql.sized.oldest, 0), (&sql.sized.evict, 2), (&sql.sized.max_seq, 0)] {
            let plan = plan(&conn, query, args);
            assert!(plan.contains("_seq"), "{query}: {plan}");
        }
        let upsert = |k: &str, v: &[u8], seq: i64| {
            conn.execute(&sql.sized.upsert_seq, rusqlite::params![k, v, Option::<i64>::None, seq]).unwrap();
        };
        upsert("a", b"12345", 1);
        upsert("bb", b"1", 2);
        upsert("a", b"123", 3);
        let size = |c: &rusqlite::Connection| -> (i64, i64) {
            c.query_row(&sql.sized.size, [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
        };
        assert_eq!(size(&conn), (2, 1 + 3 + 2 + 1));
        conn.query_row(&sql.delete, ["bb"], |_| Ok(())).unwrap();
        assert_eq!(size(&conn), (1, 4));
        conn.execute(&sql.clear, []).unwrap();
        assert_eq!(size(&conn), (0, 0));
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
