//! Near-cache invalidation by Redis itself: server-assisted client-side
//! caching (`CLIENT TRACKING … BCAST`).
//!
//! A store with a near cache opens one extra connection per node, in RESP3,
//! and turns on tracking in broadcast mode for the prefixes of the
//! namespace's value keys (`ld:{<tag>}:v:`, one per shard). From then on the
//! node pushes the names of those keys whenever anything changes them — this
//! store, another process, a script, `redis-cli`, an expiry or an eviction —
//! and the key is dropped from the near cache about one round trip after the
//! write. Broadcast mode tracks by prefix, not by what this connection read,
//! so the reads may go over the pool's connections.
//!
//! When the tracking connection errs, reconnects, or the cluster's topology
//! changes, pushes may have been lost: the whole cache is dropped and the
//! near cache serves nothing until tracking is on again on every node (reads
//! go to Redis meanwhile). `near_cache_ms` stays an upper bound on how long
//! any entry is served.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};

use fred::clients::Client;
use fred::interfaces::{ClientInterface, ClientLike, EventInterface, TrackingInterface};
use fred::types::config::{Config as FredConfig, ReconnectPolicy};
use fred::types::{RespVersion, Value as RedisValue};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::layout::Layout;
use super::near::NearCache;
use super::routers::{Routers, quit_failed};
use crate::Value;
use crate::error::{Error, Result};

/// Longest wait for one attempt to turn tracking on again.
const RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the near cache may serve: tracking is on everywhere and no push was lost since.
#[derive(Debug, Default)]
pub(super) struct TrackingState {
    live: AtomicBool,
}

impl TrackingState {
    pub(super) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    fn set(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }
}

/// The value-key prefixes of every shard.
fn prefixes(layout: &Layout) -> Vec<String> {
    layout.shards.iter().map(|s| s.value_prefix.clone()).collect()
}

/// Turns on broadcast tracking of `prefixes` on every node `client` is
/// connected to.
async fn enable(client: &Client, prefixes: &[String]) -> std::result::Result<(), fred::error::Error> {
    let nodes = client.active_connections();
    if !client.is_clustered() || nodes.is_empty() {
        return track(client, prefixes).await;
    }
    for node in nodes {
        track(&client.with_cluster_node(node), prefixes).await?;
    }
    Ok(())
}

/// Tracking off, then on in broadcast mode for `prefixes`, on one connection
/// (off first: a connection that still tracks refuses the same prefixes again).
async fn track<C: ClientInterface + Sync>(
    c: &C,
    prefixes: &[String],
) -> std::result::Result<(), fred::error::Error> {
    let _: RedisValue =
        c.client_tracking("off", None, Vec::<String>::new(), false, false, false, false).await?;
    let _: RedisValue = c.client_tracking("on", None, prefixes.to_vec(), true, false, false, false).await?;
    Ok(())
}

/// Connects the tracking client and starts the task that applies its pushes
/// to `near` until `cancel`.
pub(super) async fn start<V: Value>(
    shared: &Shared<V>,
    near: NearCache<V>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut config = FredConfig::from_url(&shared.config.server_url)
        .map_err(|e| Error::invalid_url(&shared.config.server_url, e.details().to_string()))?;
    config.version = RespVersion::RESP3;
    let timeout = shared.config.connect_timeout;
    let client = fred::types::Builder::from_config(config)
        .with_connection_config(|c| c.connection_timeout = timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 20, 2_000, 2))
        .build()
        .map_err(|e| shared.backend_error("creating the near cache's tracking client", e))?;
    let prefixes = prefixes(&shared.layout);
    let connected = tokio::time::timeout(timeout, async {
        let routers = Routers::init(&client).await?;
        enable(&client, &prefixes).await?;
        Ok::<_, fred::error::Error>(routers)
    })
    .await;
    let routers = match connected {
        Ok(Ok(routers)) => routers,
        failed => {
            quit_failed(&client).await;
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no connection within {timeout:?}"),
            };
            return Err(Error::backend_msg(
                "redis",
                format!("cannot turn on client tracking for the near cache on {}: {why}", shared.label),
            ));
        }
    };
    near.tracking().set(true);
    tokio::spawn(run(client, routers, shared.this.clone(), prefixes, near, cancel));
    Ok(())
}

/// Applies invalidation pushes; drops everything and re-enables tracking
/// whenever a connection errs, reconnects or the cluster changes.
async fn run<V: Value>(
    client: Client,
    routers: Routers,
    shared: Weak<Shared<V>>,
    prefixes: Vec<String>,
    near: NearCache<V>,
    cancel: CancellationToken,
) {
    let state = near.tracking();
    // Per attempt to turn tracking on again (a node being reconnected may not answer).
    let timeout = shared.upgrade().map_or(RETRY_TIMEOUT, |s| s.config.connect_timeout).min(RETRY_TIMEOUT);
    let mut pushes = client.invalidation_rx();
    let mut errors = client.error_rx();
    let mut reconnects = client.reconnect_rx();
    let mut changes = client.cluster_change_rx();
    loop {
        let lost = tokio::select! {
            _ = cancel.cancelled() => break,
            push = pushes.recv() => match push {
                Ok(push) if push.keys.is_empty() => {
                    near.invalidate_all(); // FLUSHALL / FLUSHDB, or the server's own flush
                    false
                }
                Ok(push) => {
                    let Some(shared) = shared.upgrade() else { break };
                    for key in &push.keys {
                        let Some(full) = key.as_str() else { continue };
                        if let Some((_, key)) = shared.layout.parse_value_key(full) {
                            near.invalidate(key);
                        }
                    }
                    false
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                // The client is gone (it quit): nothing more will come.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = errors.recv() => true,
            _ = reconnects.recv() => true,
            _ = changes.recv() => true,
        };
        if !lost {
            continue;
        }
        // Pushes may be lost: serve nothing until tracking is back everywhere.
        state.set(false);
        near.invalidate_all();
        let mut backoff = std::time::Duration::from_millis(20);
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let attempt = tokio::time::timeout(timeout, enable(&client, &prefixes)).await;
            if let Ok(Ok(())) = attempt {
                // Anything cached between the loss and now was dropped above and is refilled from here on.
                near.invalidate_all();
                state.set(true);
                tracing::debug!("near cache: client tracking on again");
                break;
            }
            // A node's connection may wait for a command to be re-established: make it so.
            let _ = tokio::time::timeout(timeout, client.force_reconnection()).await;
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
        }
    }
    state.set(false);
    // The server may be gone: bounded.
    routers.close(&client).await;
}
