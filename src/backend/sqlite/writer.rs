//! The [`Writer`]: one connection, one task, group commit.
//!
//! Every write from every task of this process goes through one queue. The
//! writer task takes whatever has queued up (up to [`MAX_BATCH`]), applies it
//! in one transaction and acknowledges each caller only after `COMMIT`, so
//! many concurrent writers share one fsync (WAL, `synchronous=NORMAL`: a
//! committed batch survives a crash of the process).

use std::sync::Arc;

use rusqlite::{OptionalExtension, Transaction, params};
use tokio::sync::{mpsc, oneshot};

use super::schema::Sql;
use crate::error::{Error, Result};

/// Most writes committed in one transaction.
pub(super) const MAX_BATCH: usize = 512;

/// One write, encoded and ready for SQL. Times are ms since the Unix epoch.
#[derive(Debug, Clone)]
pub(super) enum WriteOp {
    Set {
        key: String,
        value: Vec<u8>,
        expires_at: Option<i64>,
        owner: Option<String>,
    },
    Delete {
        key: String,
        owner: Option<String>,
    },
    Expire {
        key: String,
        expires_at: i64,
        owner: Option<String>,
    },
    Persist {
        key: String,
        owner: Option<String>,
    },
    Clear,
    TryLock {
        key: String,
        owner: String,
        lease_until: i64,
    },
    Renew {
        key: String,
        owner: String,
        lease_until: i64,
    },
    Unlock {
        key: String,
        owner: String,
    },
    /// The expiry driver's claim: delete up to `limit` rows due at `now`.
    ClaimDue {
        limit: usize,
    },
}

/// What a write did.
#[derive(Debug)]
pub(super) enum WriteOutcome {
    Done,
    Bool(bool),
    /// `Delete`: the removed value if a live row was removed.
    Deleted(Option<Vec<u8>>),
    /// `TryLock`: the fencing token if acquired.
    Locked(Option<u64>),
    /// A plain write found the key locked by another owner; nothing was done.
    KeyLocked,
    /// A guarded write whose lock is no longer held (lease ran out); nothing was done.
    LockLost,
    /// Rows claimed by the expiry driver.
    Claimed(Vec<(String, Vec<u8>)>),
}

/// A write plus the expirations it found on the way (an expired row a write
/// replaced or removed is reported as expired, so no expiry is ever lost).
#[derive(Debug)]
pub(super) struct Applied {
    pub(super) outcome: WriteOutcome,
    pub(super) expired: Vec<(String, Vec<u8>)>,
}

pub(super) struct Job {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<Applied>>,
}

/// The queue into the writer task.
#[derive(Clone)]
pub(super) struct Writer {
    queue: mpsc::UnboundedSender<Job>,
}

impl Writer {
    /// Starts the writer task on `conn`; it stops when every `Writer` is dropped.
    pub(super) fn spawn(conn: tokio_rusqlite::Connection, sql: Arc<Sql>, label: Arc<str>) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, jobs, sql, label));
        Writer { queue }
    }

    /// Queues `op` and waits until its batch committed.
    pub(super) async fn write(&self, op: WriteOp) -> Result<Applied> {
        let (reply, done) = oneshot::channel();
        self.queue.send(Job { op, reply }).map_err(|_| Error::Closed)?;
        done.await.map_err(|_| Error::Closed)?
    }
}

async fn run(
    conn: tokio_rusqlite::Connection,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    sql: Arc<Sql>,
    label: Arc<str>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (ops, replies): (Vec<WriteOp>, Vec<_>) = batch.drain(..).map(|j| (j.op, j.reply)).unzip();
        let sql = Arc::clone(&sql);
        let committed = conn
            .call(move |c| -> rusqlite::Result<Vec<rusqlite::Result<Applied>>> {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let now = super::now_ms();
                let mut seen = Seen::new(&tx, &sql, now)?;
                let results = ops.into_iter().map(|op| apply(&tx, &sql, now, &mut seen, op)).collect();
                tx.commit()?;
                Ok(results)
            })
            .await;
        match committed {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply
                        .send(result.map_err(|e| Error::backend("sqlite", format!("write to {label}"), e)));
                }
            }
            Err(e) => {
                let msg = format!("commit to {label} failed: {e}");
                for reply in replies {
                    let _ = reply.send(Err(Error::backend_msg("sqlite", msg.clone())));
                }
            }
        }
    }
}

/// What a batch's transaction may contain, checked once at its start: the
/// transaction holds the write lock, so no other process changes either, and
/// with `now` fixed for the batch no row can come due during it.
///
/// Measured (set, 32 tasks): the per-set lock check and expired-row capture
/// were two of the three statements of every set, while there was almost
/// never a lock or a due row to find.
struct Seen {
    /// A lock row (live or stale) may exist.
    locks: bool,
    /// A row past its deadline may exist.
    due: bool,
}

impl Seen {
    fn new(tx: &Transaction<'_>, sql: &Sql, now: i64) -> rusqlite::Result<Self> {
        Ok(Seen {
            locks: tx.prepare_cached(&sql.any_lock)?.query_row([], |r| r.get(0))?,
            due: tx.prepare_cached(&sql.any_due)?.query_row([now], |r| r.get(0))?,
        })
    }
}

/// Whether a write to `key` (guarded by `owner`, if any) may proceed.
fn check_lock(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: i64,
    seen: &Seen,
    key: &str,
    owner: Option<&str>,
) -> rusqlite::Result<LockState> {
    if !seen.locks {
        // No lock row at all: free for a plain write, lost for a guarded one (as below).
        return Ok(if owner.is_some() { LockState::Lost } else { LockState::Free });
    }
    let holder: Option<String> =
        tx.prepare_cached(&sql.lock_owner)?.query_row(params![key, now], |r| r.get(0)).optional()?;
    Ok(match (holder.as_deref(), owner) {
        (None, None) => LockState::Free,
        (Some(h), Some(o)) if h == o => LockState::Free,
        (Some(_), None) => LockState::HeldByOther,
        (_, Some(_)) => LockState::Lost,
    })
}

enum LockState {
    Free,
    HeldByOther,
    Lost,
}

fn apply(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: i64,
    seen: &mut Seen,
    op: WriteOp,
) -> rusqlite::Result<Applied> {
    let mut expired = Vec::new();
    let guarded = match &op {
        WriteOp::Set { key, owner, .. }
        | WriteOp::Delete { key, owner }
        | WriteOp::Expire { key, owner, .. }
        | WriteOp::Persist { key, owner } => Some((key.as_str(), owner.as_deref())),
        _ => None,
    };
    if let Some((key, owner)) = guarded {
        match check_lock(tx, sql, now, seen, key, owner)? {
            LockState::Free => {}
            LockState::HeldByOther => return Ok(Applied { outcome: WriteOutcome::KeyLocked, expired }),
            LockState::Lost => return Ok(Applied { outcome: WriteOutcome::LockLost, expired }),
        }
    }
    let outcome = match op {
        WriteOp::Set { key, value, expires_at, .. } => {
            if seen.due {
                take_expired(tx, sql, now, &key, &mut expired)?;
            }
            tx.prepare_cached(&sql.upsert)?.execute(params![key, value, expires_at])?;
            WriteOutcome::Done
        }
        WriteOp::Delete { key, .. } => {
            let row: Option<(Vec<u8>, Option<i64>)> = tx
                .prepare_cached(&sql.delete)?
                .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match row {
                Some((value, Some(at))) if at <= now => {
                    expired.push((key, value));
                    WriteOutcome::Deleted(None)
                }
                Some((value, _)) => WriteOutcome::Deleted(Some(value)),
                None => WriteOutcome::Deleted(None),
            }
        }
        WriteOp::Expire { key, expires_at, .. } => {
            WriteOutcome::Bool(tx.prepare_cached(&sql.expire)?.execute(params![key, now, expires_at])? > 0)
        }
        WriteOp::Persist { key, .. } => {
            WriteOutcome::Bool(tx.prepare_cached(&sql.persist)?.execute(params![key, now])? > 0)
        }
        WriteOp::Clear => {
            // Entries already past their deadline expired before this clear: claim
            // them first so their Expire events are not lost to a late driver.
            let mut claim = tx.prepare_cached(&sql.claim_due)?;
            let due = claim.query_map(params![now, i64::MAX], |r| Ok((r.get(0)?, r.get(1)?)))?;
            for row in due {
                expired.push(row?);
            }
            tx.prepare_cached(&sql.clear)?.execute([])?;
            WriteOutcome::Done
        }
        WriteOp::TryLock { key, owner, lease_until } => {
            tx.prepare_cached(&sql.lock_drop_stale)?.execute(params![key, now])?;
            if tx.prepare_cached(&sql.lock_insert)?.execute(params![key, owner, lease_until])? == 1 {
                seen.locks = true;
                let fence: i64 =
                    tx.prepare_cached(&sql.fence_next)?.query_row(params![sql.fence_name], |r| r.get(0))?;
                WriteOutcome::Locked(Some(fence as u64))
            } else {
                WriteOutcome::Locked(None)
            }
        }
        WriteOp::Renew { key, owner, lease_until } => WriteOutcome::Bool(
            tx.prepare_cached(&sql.lock_renew)?.execute(params![key, owner, lease_until, now])? > 0,
        ),
        WriteOp::Unlock { key, owner } => {
            tx.prepare_cached(&sql.lock_release)?.execute(params![key, owner])?;
            WriteOutcome::Done
        }
        WriteOp::ClaimDue { limit } => {
            let mut stmt = tx.prepare_cached(&sql.claim_due)?;
            let rows = stmt.query_map(params![now, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            WriteOutcome::Claimed(rows.collect::<rusqlite::Result<_>>()?)
        }
    };
    Ok(Applied { outcome, expired })
}

/// Removes `key` if it is past its deadline, recording it as expired.
fn take_expired(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: i64,
    key: &str,
    expired: &mut Vec<(String, Vec<u8>)>,
) -> rusqlite::Result<()> {
    let value: Option<Vec<u8>> =
        tx.prepare_cached(&sql.take_expired)?.query_row(params![key, now], |r| r.get(0)).optional()?;
    if let Some(value) = value {
        expired.push((key.to_owned(), value));
    }
    Ok(())
}
