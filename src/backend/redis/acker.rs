//! The acker (`expire_delivery=at_least_once`): writes the receipts of
//! leased expirations, one `SETTLE` script per shard and batch.
//!
//! It owns what it needs (a pool handle, the script, the shards' pending
//! keys), not the store: after the last handle is gone it still writes the
//! receipts of callbacks that finished during the shutdown drain, then
//! closes the connections (the store leaves that to it in this mode).

use std::sync::Arc;

use fred::clients::Pool;
use fred::types::Value as RedisValue;
use fred::types::scripts::Script;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::backend::receipts::Receipts;

/// One settled lease: shard, pending id, attempt, acknowledged.
pub(super) type Receipt = (usize, i64, u32, bool);

/// What the acker writes with.
pub(super) struct Acker {
    pub(super) pool: Pool,
    /// The pool's routing tasks: the acker closes the pool (see `routers.rs`).
    pub(super) routers: super::routers::Routers,
    pub(super) script: Script,
    /// Each shard's pending set, records and attempts.
    pub(super) pending: Vec<[String; 3]>,
    pub(super) wake: String,
}

/// Runs until `stop` (the last handle is gone), then writes what is left and closes the pool.
pub(super) async fn run(acker: Acker, receipts: Arc<Receipts<Receipt>>, stop: CancellationToken) {
    loop {
        let (batch, mark, stopping) = receipts.next(&stop).await;
        if !batch.is_empty() {
            settle(&acker, batch).await;
        }
        receipts.written(mark);
        if stopping {
            break;
        }
    }
    acker.routers.close(&acker.pool).await;
}

/// One script call per shard in `batch`, concurrently.
async fn settle(acker: &Acker, mut batch: Vec<Receipt>) {
    batch.sort_unstable_by_key(|r| r.0);
    let calls = batch.chunk_by(|a, b| a.0 == b.0).map(|group| {
        let shard = group[0].0;
        let mut args: Vec<RedisValue> = Vec::with_capacity(2 + 3 * group.len());
        args.push(acker.wake.as_str().into());
        args.push(shard.to_string().into());
        for &(_, id, attempt, ok) in group {
            args.push(id.into());
            args.push(i64::from(attempt).into());
            args.push(if ok { "1" } else { "0" }.into());
        }
        let keys = acker.pending[shard].to_vec();
        async move {
            let result: Result<RedisValue, _> =
                acker.script.evalsha_with_reload(acker.pool.next(), keys, args).await;
            if let Err(e) = result {
                tracing::warn!(error = %e, shard, "redis: acknowledgements not written; those expirations are delivered again after their lease");
            }
        }
    });
    join_all(calls).await;
}
