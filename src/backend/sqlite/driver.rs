//! The SQLite [`ExpiryDriver`]: claims due rows and reports them, exactly once across processes.
//!
//! One task, one loop: sleep until the earliest deadline in the table (or a
//! local write's earlier one, or the poll interval, which bounds how late a
//! deadline written by another process is noticed), then claim due rows with
//! `DELETE … RETURNING` in batches. The delete is atomic, so when several
//! processes share the file each expiration is claimed — and reported — by
//! exactly one of them. Rows that came due while no process ran are claimed
//! at the next open. Under `at_most_once` the writer thread's batches also
//! claim what is due in their own transactions (see the writer's
//! `CLAIM_IN_BATCH`), so under a write load expirations do not wait for the
//! driver's turn.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::writer::{Applied, WriteOp, WriteOutcome, Writer};
use crate::Value;
use crate::backend::receipts::Receipts;

/// Rows claimed per transaction.
const CLAIM_BATCH: usize = 1000;

/// How long a queued claim waits before the driver looks whether the writer
/// connection is checkpointing (and then claims on its own connection).
const ASIDE_AFTER: Duration = Duration::from_millis(1);

/// What writers tell the driver: the earliest deadline they wrote.
#[derive(Default)]
pub(super) struct DriverSignal {
    /// ms since the epoch the driver sleeps towards (`i64::MAX`: none known).
    earliest: AtomicI64,
    wake: Notify,
}

impl DriverSignal {
    pub(super) fn new() -> Self {
        DriverSignal { earliest: AtomicI64::new(i64::MAX), wake: Notify::new() }
    }

    /// A local write set a deadline at `at`: wake the driver if it sleeps past it.
    pub(super) fn deadline_written(&self, at: i64) {
        if at < self.earliest.fetch_min(at, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }
}

/// Runs until the backend is dropped or shut down.
pub(super) async fn expiry_driver<V: Value>(shared: Weak<Shared<V>>, cancel: CancellationToken) {
    let (signal, poll) = match shared.upgrade() {
        Some(s) => (Arc::clone(&s.signal), s.config.poll_interval),
        None => return,
    };
    loop {
        let next_wake = {
            let Some(shared) = shared.upgrade() else { return };
            claim_due(&shared).await;
            match shared.earliest_deadline().await {
                Ok(Some(at)) => at,
                Ok(None) => i64::MAX,
                Err(e) => {
                    tracing::warn!(error = %e, "sqlite expiry driver could not read deadlines");
                    i64::MAX
                }
            }
        };
        signal.earliest.store(next_wake, Ordering::Release);
        let now = super::now_ms();
        let sleep = Duration::from_millis(next_wake.saturating_sub(now).max(0) as u64).min(poll);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = signal.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Claims every due row (in batches) and reports each as expired.
async fn claim_due<V: Value>(shared: &Shared<V>) {
    loop {
        let aside = if shared.writer.checkpointing() { claim_aside(shared).await } else { None };
        let outcome = match aside {
            Some(outcome) => outcome,
            None => match queued_claim(shared).await {
                Ok(applied) => applied.outcome,
                Err(e) => {
                    tracing::warn!(error = %e, "sqlite expiry driver could not claim due rows");
                    return;
                }
            },
        };
        if !report_claimed(shared, outcome) {
            return;
        }
    }
}

/// A claim through the writer's queue. While it waits behind a checkpoint of
/// the writer connection, the driver claims on its own connection meanwhile
/// (every [`ASIDE_AFTER`]); the queued claim still runs and is reported.
async fn queued_claim<V: Value>(shared: &Shared<V>) -> crate::Result<Applied> {
    let queued = shared.writer.write(WriteOp::ClaimDue { limit: CLAIM_BATCH });
    tokio::pin!(queued);
    loop {
        tokio::select! {
            biased;
            applied = &mut queued => return applied,
            _ = tokio::time::sleep(ASIDE_AFTER) => {
                if shared.writer.checkpointing()
                    && let Some(outcome) = claim_aside(shared).await
                {
                    report_claimed(shared, outcome);
                }
            }
        }
    }
}

/// One claim on the driver's own connection while the writer connection
/// checkpoints (see [`Writer::claim_aside`]), on a blocking thread; `None`
/// if nothing was claimed there (no checkpoint, no such connection, another
/// connection holds the write lock) or the claim failed (logged).
async fn claim_aside<V: Value>(shared: &Shared<V>) -> Option<WriteOutcome> {
    let writer = Arc::clone(&shared.writer);
    match tokio::task::spawn_blocking(move || writer.claim_aside(CLAIM_BATCH)).await {
        Ok(Some(Ok(outcome))) => Some(outcome),
        Ok(None) => None,
        Ok(Some(Err(e))) => {
            tracing::warn!(error = %e, "sqlite expiry driver could not claim due rows");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "sqlite expiry driver's claim did not finish");
            None
        }
    }
}

/// Reports what a claim took; whether it was full (more may be due).
fn report_claimed<V: Value>(shared: &Shared<V>, outcome: WriteOutcome) -> bool {
    match outcome {
        WriteOutcome::Claimed(rows) => {
            let full = rows.len() == CLAIM_BATCH;
            for (key, bytes) in rows {
                shared.report_expired(&key, &bytes);
            }
            full
        }
        WriteOutcome::Leased { leased, abandoned, full } => {
            shared.sink.abandoned(abandoned);
            for lease in leased {
                shared.report_leased(lease);
            }
            full
        }
        _ => false,
    }
}

/// Writes the receipts of leased expirations (`at_least_once`) in batches,
/// one transaction each: acknowledged ones are dropped, failed ones made due
/// again (and the driver woken to deliver them). Runs until the last backend
/// clone is gone, then writes what is left and stops.
pub(super) async fn acker(
    writer: Arc<Writer>,
    receipts: Arc<Receipts<(i64, u32, bool)>>,
    signal: Arc<DriverSignal>,
    stop: CancellationToken,
) {
    loop {
        let (batch, mark, stopping) = receipts.next(&stop).await;
        if !batch.is_empty() {
            let retry = batch.iter().any(|&(_, _, ok)| !ok);
            if let Err(e) = writer.write(WriteOp::Settle { receipts: batch }).await {
                tracing::warn!(error = %e, "sqlite: acknowledgements not written; those expirations are delivered again after their lease");
            }
            if retry {
                signal.deadline_written(super::now_ms());
            }
        }
        receipts.written(mark);
        if stopping {
            return;
        }
    }
}
