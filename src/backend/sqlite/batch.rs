//! Batches on SQLite: `GetMany` is one read transaction on a reader
//! connection; `SetMany` and `DeleteMany` are one [`WriteOp::Many`] each,
//! applied in one transaction of the writer (joining its group commit).
//!
//! Each write of a batch is checked and applied on its own, as if it came
//! alone: a key another process holds locked is left out (nothing written
//! for it) and retried, alone with the other locked ones, after a backoff,
//! as a single write waits; the rest of the batch is committed meanwhile.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::writer::{WriteOp, WriteOutcome};
use super::{Shared, now_ms};
use crate::Value;
use crate::error::{Error, Result};

impl<V: Value> Shared<V> {
    /// `Request::GetMany`: one read transaction (one snapshot) for every key.
    pub(super) async fn get_many(&self, keys: Vec<String>) -> Result<(Vec<String>, Vec<Option<Vec<u8>>>)> {
        self.read(move |c, sql| {
            let tx = c.transaction()?;
            let now = now_ms();
            let rows = {
                let mut get = tx.prepare_cached(&sql.get)?;
                keys.iter()
                    .map(|key| get.query_row(params![key, now], |r| r.get::<_, Vec<u8>>(0)).optional())
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.commit()?;
            Ok((keys, rows))
        })
        .await
    }

    /// Applies `ops` (unguarded `Set`s and `Delete`s) as one `Many`, then
    /// retries those refused by another process's lock until each passed.
    /// One outcome per op, in order.
    pub(super) async fn write_many(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>> {
        let mut out: Vec<Option<WriteOutcome>> = ops.iter().map(|_| None).collect();
        let mut pending: Vec<(usize, WriteOp)> = ops.into_iter().enumerate().collect();
        let mut backoff = Duration::from_millis(1);
        loop {
            let batch: Vec<WriteOp> = pending.iter().map(|(_, op)| op.clone()).collect();
            let WriteOutcome::Many(outcomes) = self.write(WriteOp::Many(batch)).await? else {
                return Err(Error::backend_msg("sqlite", "a batch was answered with one outcome"));
            };
            let mut locked = Vec::new();
            for ((i, op), outcome) in pending.into_iter().zip(outcomes) {
                match outcome {
                    WriteOutcome::KeyLocked => locked.push((i, op)),
                    done => out[i] = Some(done),
                }
            }
            if locked.is_empty() {
                return out
                    .into_iter()
                    .map(|o| {
                        o.ok_or_else(|| Error::backend_msg("sqlite", "a write of a batch had no outcome"))
                    })
                    .collect();
            }
            pending = locked;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }
}
