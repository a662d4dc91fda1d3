//! The [`Sweeper`](sweeper): every instance claims due deadlines, so each
//! expiration is reported exactly once in total, with its value.
//!
//! Keyspace notifications cannot do this (fire-and-forget, no value, late),
//! so each TTL'd write also records its deadline in the namespace's sorted
//! set and a shadow copy of the value that outlives the deadline by the grace
//! period. The claim script takes due members and their shadow values
//! atomically: whichever instance runs it first reports the expiry. When no
//! instance runs, expiries are reported by the next instance to start, as
//! long as that is within the grace period (after it, the value is gone and
//! the event carries no value).

use std::sync::Weak;
use std::time::Duration;

use fred::types::Value as RedisValue;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::Value;

/// Members claimed per script call.
const CLAIM_BATCH: i64 = 500;

/// One task, one loop: claim what is due, then sleep until the next known
/// deadline (or the sweep interval, for deadlines other instances write).
pub(super) async fn sweeper<V: Value>(shared: Weak<Shared<V>>, cancel: CancellationToken) {
    loop {
        let wait = match shared.upgrade() {
            Some(shared) => sweep_once(&shared).await,
            None => return,
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Claims one batch; returns how long to sleep before the next (zero: more are due).
pub(super) async fn sweep_once<V: Value>(shared: &Shared<V>) -> Duration {
    let poll = shared.config.sweep_interval;
    let keys = vec![shared.keys.index.clone()];
    let args: Vec<RedisValue> = vec![shared.keys.shadow_prefix.clone().into(), CLAIM_BATCH.into()];
    let reply: RedisValue =
        match shared.scripts.claim.evalsha_with_reload(shared.pool.next(), keys, args).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "redis sweeper could not claim due deadlines");
                return poll.max(Duration::from_millis(100));
            }
        };
    let RedisValue::Array(parts) = reply else { return poll };
    let now = parts.first().and_then(RedisValue::as_i64).unwrap_or(0);
    let next = parts.get(1).and_then(|v| v.as_str().and_then(|s| s.parse::<f64>().ok())).map(|f| f as i64);
    let mut claimed = 0;
    if let Some(RedisValue::Array(pairs)) = parts.get(2) {
        for pair in pairs.chunks(2) {
            let (Some(member), value) = (pair[0].as_str(), pair.get(1)) else { continue };
            claimed += 1;
            shared.report_expired(&member, value.and_then(RedisValue::as_bytes));
        }
    }
    if claimed == CLAIM_BATCH {
        return Duration::ZERO;
    }
    match next {
        Some(at) => Duration::from_millis(at.saturating_sub(now).max(0) as u64).min(poll),
        None => poll,
    }
}
