//! Redis under memory pressure (URL option `eviction`): which servers may
//! evict the store's keys, and the report of every key they evict.
//!
//! A server whose `maxmemory-policy` is not `noeviction` may drop keys when
//! it runs out of memory: any key under `allkeys-*`, keys with a Redis TTL
//! (lock keys; values with `grace_ms`) under `volatile-*`. livedict learns
//! which policy each node runs at `open` (`CONFIG GET maxmemory-policy`,
//! else `INFO memory` where `CONFIG` is disabled) and again every 30 s.
//!
//! - `eviction=refuse`: `open` fails on a policy that may evict.
//! - `eviction=report` (default): livedict subscribes, on every node, to the
//!   `__keyevent@<db>__:evicted` notifications (turning them on first with
//!   `notify_evictions`), and for each evicted key of a shard this instance
//!   sweeps runs one script that counts the entry out of the shard and
//!   removes its deadline, then reports it: `Evict` (without its value), or
//!   `Expire` for an entry already past its deadline. While the handler is
//!   live, the other scripts leave an entry whose value they find gone to it
//!   (see `claim_dropped` in `layout.rs`), so each eviction is reported once.
//!   An evicted deadline index is rebuilt from the values' headers, an
//!   evicted entry counter recounted, an evicted layout key rewritten.
//! - Without the notifications (not allowed, or `CONFIG` disabled and not
//!   turned on by the operator), a TTL'd entry whose value was evicted is
//!   still found at its deadline and reported as `Evict` as long as its
//!   deadline index survives — always under `volatile-*` (the index has no
//!   Redis TTL), not under `allkeys-*`; an entry without TTL leaves
//!   silently. A warning says so at `open`.
//!
//! Locks need nothing here: a guarded write checks that the lock key still
//! holds its owner's token, so a holder whose lock key was evicted gets
//! `LockLost` (even if another process took the lock since), and fencing
//! tokens never repeat (the fence is at least the server's time in µs).
//!
//! Limits: notifications are pub/sub. While the notification connection is
//! down the scripts report what they find again; an entry without TTL
//! evicted in that gap is not reported, and around the gap an eviction may
//! be reported twice. During a change of sweepers (an instance joining or
//! leaving) the same holds for the shards that move.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::Config as FredConfig;
use fred::types::config::Server;
use fred::types::{ClusterHash, CustomCommand, KeyspaceEvent, Value as RedisValue};
use futures::future::join_all;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::layout::Shard;
use super::routers::{Routers, quit_failed};
use super::{PAGE, Shared};
use crate::Value;
use crate::error::{Error, Result};

/// How often the nodes' policies are read again.
const RECHECK: Duration = Duration::from_secs(30);
/// Notifications handled together (their scripts run concurrently).
const BATCH: usize = 256;
/// Notifications fred buffers for the handler before it lags.
const BUFFER: usize = 1 << 16;

/// Whether the eviction handler reports evictions (shared with the scripts' arguments).
#[derive(Debug, Default)]
pub(super) struct Evictions {
    notified: AtomicBool,
}

impl Evictions {
    /// Whether every node sends `evicted` notifications to the handler right now.
    pub(super) fn notified(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    fn set(&self, on: bool) {
        self.notified.store(on, Ordering::Release);
    }
}

/// Every node of `client` (`None`: the one server).
pub(super) fn nodes(client: &Client) -> Vec<Option<Server>> {
    let nodes = client.active_connections();
    if !client.is_clustered() || nodes.is_empty() {
        return vec![None];
    }
    nodes.into_iter().map(Some).collect()
}

/// `name args…` on one node.
pub(super) async fn on_node(
    client: &Client,
    node: &Option<Server>,
    name: &'static str,
    args: &[&str],
) -> std::result::Result<RedisValue, fred::error::Error> {
    let cmd = CustomCommand::new_static(name, ClusterHash::Random, false);
    let args: Vec<RedisValue> = args.iter().map(|a| RedisValue::from(*a)).collect();
    match node {
        Some(node) => client.with_cluster_node(node.clone()).custom(cmd, args).await,
        None => client.custom(cmd, args).await,
    }
}

/// A configuration parameter of one node (`None` where `CONFIG` is unavailable).
pub(super) async fn config_get(client: &Client, node: &Option<Server>, param: &str) -> Option<String> {
    match on_node(client, node, "CONFIG", &["GET", param]).await.ok()? {
        RedisValue::Array(v) => v.get(1).and_then(RedisValue::as_string),
        RedisValue::Map(m) => m.inner().into_values().next().and_then(|v| v.as_string()),
        _ => None,
    }
}

/// The `maxmemory-policy` of one node (`None`: it cannot be read).
pub(super) async fn node_policy(client: &Client, node: &Option<Server>) -> Option<String> {
    if let Some(policy) = config_get(client, node, "maxmemory-policy").await {
        return Some(policy);
    }
    // Managed Redis often disables CONFIG; INFO tells the policy too.
    let info = on_node(client, node, "INFO", &["memory"]).await.ok()?.as_string()?;
    info.lines().find_map(|l| l.strip_prefix("maxmemory_policy:")).map(|p| p.trim().to_owned())
}

/// The nodes whose policy may evict, each as (node, policy); `unknown` where it cannot be read.
async fn evicting(client: &Client) -> Vec<(String, String)> {
    let nodes = nodes(client);
    let policies = join_all(nodes.iter().map(|n| node_policy(client, n))).await;
    nodes
        .iter()
        .zip(policies)
        .map(|(n, p)| (n.as_ref().map_or_else(|| "the server".to_owned(), |n| n.to_string()), p))
        .filter(|(_, p)| p.as_deref() != Some("noeviction"))
        .map(|(n, p)| (n, p.unwrap_or_else(|| "unknown".into())))
        .collect()
}

/// Whether `notify-keyspace-events` flags publish `evicted` on the keyevent channel.
pub(super) fn sends_evicted(flags: &str) -> bool {
    flags.contains('E') && (flags.contains('e') || flags.contains('A'))
}

/// At `open`, with `eviction=refuse`: fails if any node may evict.
pub(super) async fn check<V: Value>(shared: &Shared<V>) -> Result<()> {
    if shared.config.eviction != super::Eviction::Refuse {
        return Ok(());
    }
    match evicting(shared.pool.next()).await.first() {
        None => Ok(()),
        Some((node, policy)) => Err(Error::backend_msg(
            "redis",
            format!(
                "{}: maxmemory-policy is `{policy}` on {node}, which may evict this store's keys, and the store \
                 was opened with eviction=refuse (set the server's maxmemory-policy to noeviction, or open \
                 with eviction=report)",
                shared.label
            ),
        )),
    }
}

/// Sets up the eviction reports (before `open` returns, so no eviction
/// after it goes unseen) and starts the task that keeps them up until `cancel`.
pub(super) async fn start<V: Value>(shared: &Arc<Shared<V>>, cancel: CancellationToken) {
    let mut watch = Watch { shared: Arc::downgrade(shared), sub: None, warned: false, refused: false };
    watch.reconcile(shared).await;
    tokio::spawn(watch.run(cancel));
}

/// The subscription to `evicted` notifications and what it listens to.
struct Subscription {
    client: Client,
    /// The client's routing task (aborted if the subscription is dropped unclosed).
    routers: Routers,
    channel: String,
    events: broadcast::Receiver<KeyspaceEvent>,
    reconnects: broadcast::Receiver<Server>,
    changes: broadcast::Receiver<Vec<fred::types::ClusterStateChange>>,
}

struct Watch<V> {
    shared: Weak<Shared<V>>,
    sub: Option<Subscription>,
    /// Whether the "evictions without TTL go unreported" warning was logged.
    warned: bool,
    /// Whether the "policy changed under eviction=refuse" error was logged.
    refused: bool,
}

impl<V: Value> Watch<V> {
    /// Reads the policies; where they may evict, makes sure every node sends
    /// `evicted` notifications and this store is subscribed to them.
    async fn reconcile(&mut self, shared: &Shared<V>) {
        let client = shared.pool.next();
        let bad = evicting(client).await;
        let Some((node, policy)) = bad.first() else {
            shared.evictions.set(false);
            return;
        };
        if shared.config.eviction == super::Eviction::Refuse && !self.refused {
            self.refused = true;
            tracing::error!(
                %node, %policy,
                "redis maxmemory-policy now may evict this store's keys (opened with eviction=refuse); reporting evictions"
            );
        }
        let mut missing = Vec::new();
        for node in nodes(client) {
            let flags = config_get(client, &node, "notify-keyspace-events").await;
            let on = match flags {
                Some(flags) if sends_evicted(&flags) => true,
                Some(flags) if shared.config.notify_evictions => {
                    let mut wanted = flags.clone();
                    wanted.push_str(if flags.contains('E') { "" } else { "E" });
                    wanted.push_str(if flags.contains('e') || flags.contains('A') { "" } else { "e" });
                    on_node(client, &node, "CONFIG", &["SET", "notify-keyspace-events", &wanted])
                        .await
                        .is_ok()
                }
                _ => false,
            };
            if !on {
                missing.push(node.map_or_else(|| "the server".to_owned(), |n| n.to_string()));
            }
        }
        if !missing.is_empty() {
            shared.evictions.set(false);
            if !self.warned {
                self.warned = true;
                tracing::warn!(
                    nodes = ?missing, %policy,
                    "redis may evict this store's keys but does not send `evicted` keyspace notifications \
                     (notify_evictions=false, or CONFIG disabled): evicted TTL'd entries are reported at their \
                     deadline while their index survives (always under volatile-*), evicted entries without TTL \
                     are not reported (set notify-keyspace-events Ee)"
                );
            }
            return;
        }
        match self.subscribe(shared).await {
            Ok(()) => shared.evictions.set(true),
            Err(e) => {
                shared.evictions.set(false);
                tracing::warn!(error = %e, "redis eviction notifications: cannot subscribe; retrying in {RECHECK:?}");
            }
        }
    }

    /// Subscribes (again) on every node; connects first if needed.
    async fn subscribe(&mut self, shared: &Shared<V>) -> Result<()> {
        if self.sub.is_none() {
            self.sub = Some(connect(shared).await?);
        }
        let Some(sub) = &self.sub else { return Ok(()) };
        for node in nodes(&sub.client) {
            let subscribed = match &node {
                Some(node) => {
                    sub.client.with_cluster_node(node.clone()).subscribe(sub.channel.as_str()).await
                }
                None => sub.client.subscribe(sub.channel.as_str()).await,
            };
            subscribed.map_err(|e| shared.backend_error("subscribing to eviction notifications", e))?;
        }
        Ok(())
    }

    async fn run(mut self, cancel: CancellationToken) {
        // A deadline, not a sleep per loop: a steady stream of evictions must not postpone the re-check.
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = recheck.tick() => Next::Recheck,
                n = next_event(&mut self.sub) => n,
            };
            let Some(shared) = self.shared.upgrade() else { break };
            match next {
                Next::Recheck => self.reconcile(&shared).await,
                Next::Evicted(first) => {
                    let mut keys = vec![first];
                    if let Some(sub) = &mut self.sub {
                        while keys.len() < BATCH {
                            match sub.events.try_recv() {
                                Ok(ev) if ev.operation == "evicted" => {
                                    keys.push(ev.key.as_str_lossy().into_owned())
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                    }
                    handle(&shared, keys).await;
                }
                Next::Lost => {
                    // Notifications may have been lost: the scripts report what they find until we are back.
                    shared.evictions.set(false);
                    self.reconcile(&shared).await;
                }
                Next::Gone => {
                    shared.evictions.set(false);
                    self.sub = None;
                }
            }
        }
        if let Some(shared) = self.shared.upgrade() {
            shared.evictions.set(false);
        }
        if let Some(sub) = self.sub.take() {
            // The server may be gone: bounded.
            sub.routers.close(&sub.client).await;
        }
    }
}

/// What the watch does next.
enum Next {
    Recheck,
    Evicted(String),
    /// Notifications may have been lost (lag, reconnect, new nodes).
    Lost,
    /// The subscriber is gone.
    Gone,
}

async fn next_event(sub: &mut Option<Subscription>) -> Next {
    let Some(sub) = sub else { return std::future::pending().await };
    loop {
        return tokio::select! {
            ev = sub.events.recv() => match ev {
                Ok(ev) if ev.operation == "evicted" => Next::Evicted(ev.key.as_str_lossy().into_owned()),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => Next::Lost,
                Err(broadcast::error::RecvError::Closed) => Next::Gone,
            },
            _ = sub.reconnects.recv() => Next::Lost,
            _ = sub.changes.recv() => Next::Lost,
        };
    }
}

/// A client of its own for the notifications (a subscribed connection runs nothing else).
async fn connect<V: Value>(shared: &Shared<V>) -> Result<Subscription> {
    let config = FredConfig::from_url(&shared.config.server_url)
        .map_err(|e| Error::invalid_url(&shared.config.server_url, e.details().to_string()))?;
    let db = if config.server.is_clustered() { 0 } else { config.database.unwrap_or(0) };
    let timeout = shared.config.connect_timeout;
    let client = fred::types::Builder::from_config(config)
        .with_connection_config(|c| c.connection_timeout = timeout)
        .with_performance_config(|p| p.broadcast_channel_capacity = BUFFER)
        .set_policy(fred::types::config::ReconnectPolicy::new_exponential(0, 20, 2_000, 2))
        .build()
        .map_err(|e| shared.backend_error("creating the eviction subscriber", e))?;
    // Receivers first: nothing published after the subscription is missed.
    let events = client.keyspace_event_rx();
    let reconnects = client.reconnect_rx();
    let changes = client.cluster_change_rx();
    let routers = match tokio::time::timeout(timeout, Routers::init(&client)).await {
        Ok(Ok(routers)) => routers,
        failed => {
            quit_failed(&client).await;
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no connection within {timeout:?}"),
            };
            return Err(Error::backend_msg("redis", format!("cannot subscribe on {}: {why}", shared.label)));
        }
    };
    let channel = format!("__keyevent@{db}__:evicted");
    Ok(Subscription { client, routers, channel, events, reconnects, changes })
}

/// Handles the `evicted` notifications of `keys` that belong to the shards this instance sweeps.
async fn handle<V: Value>(shared: &Shared<V>, keys: Vec<String>) {
    let mut rebuild = Vec::new();
    let mut values = Vec::new();
    for full in &keys {
        if *full == shared.layout.layout_key {
            // The next store to open would write it again anyway; do it now.
            if let Err(e) = shared.check_layout().await {
                tracing::warn!(error = %e, "redis: cannot rewrite the evicted layout key");
            }
            continue;
        }
        let Some((s, rest)) = shared.layout.parse_shard_key(full) else { continue };
        if !shared.sweeps[s].load(Ordering::Acquire) {
            continue;
        }
        match rest {
            "d" | "n" => rebuild.push(s),
            _ => {
                if let Some(key) = rest.strip_prefix("v:") {
                    values.push((s, key));
                }
            }
        }
    }
    let reported =
        join_all(values.iter().map(|&(s, key)| evicted(shared, &shared.layout.shards[s], key))).await;
    for ((_, key), result) in values.iter().zip(reported) {
        match result {
            Ok(claimed) => shared.report_claimed(key, &claimed),
            Err(e) => {
                // The entry left all the same: report it.
                tracing::warn!(key, error = %e, "redis: an evicted entry could not be counted out; reported anyway");
                shared.report_claimed(key, &RedisValue::Integer(1));
            }
        }
    }
    rebuild.sort_unstable();
    rebuild.dedup();
    for s in rebuild {
        if let Err(e) = repair(shared, &shared.layout.shards[s]).await {
            tracing::warn!(shard = s, error = %e, "redis: cannot rebuild an evicted shard index or counter");
        }
    }
}

/// Counts one evicted entry out of its shard: 0 (expired) or 1 (evicted), to report.
async fn evicted<V: Value>(shared: &Shared<V>, shard: &Shard, key: &str) -> Result<RedisValue> {
    let keys = vec![shard.value(key), shard.index.clone(), shard.count.clone()];
    let claimed: RedisValue = shared
        .scripts
        .evicted
        .evalsha_with_reload(shared.pool.next(), keys, vec![key.to_owned()])
        .await
        .map_err(|e| shared.backend_error("counting out an evicted entry", e))?;
    Ok(claimed)
}

/// Rebuilds a shard's deadline index (from the values' headers) and its
/// entry counter after Redis evicted one of them. The counter is exact only
/// if no write to the shard runs meanwhile.
async fn repair<V: Value>(shared: &Shared<V>, shard: &Shard) -> Result<()> {
    use fred::interfaces::KeysInterface;
    use fred::types::scan::Scanner;
    use futures::TryStreamExt;
    let client = shared.pool.next();
    let mut pages = std::pin::pin!(client.scan(format!("{}*", shard.value_prefix), Some(PAGE), None));
    let mut count: i64 = 0;
    while let Some(mut page) = pages.try_next().await.map_err(|e| shared.backend_error("scan", e))? {
        let found: Vec<String> = page
            .take_results()
            .unwrap_or_default()
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        count += found.len() as i64;
        let members: Vec<String> = found
            .iter()
            .filter_map(|k| k.strip_prefix(shard.value_prefix.as_str()).map(str::to_owned))
            .collect();
        if !members.is_empty() {
            let mut keys = vec![shard.index.clone()];
            keys.extend(found);
            let _: i64 = shared
                .scripts
                .reindex
                .evalsha_with_reload(client, keys, members)
                .await
                .map_err(|e| shared.backend_error("rebuilding an evicted deadline index", e))?;
        }
        page.next();
    }
    let _: () = client
        .set(&shard.count, count, None, None, false)
        .await
        .map_err(|e| shared.backend_error("recounting an evicted entry counter", e))?;
    tracing::info!(shard = %shard.index, entries = count, "redis: rebuilt a shard's index and counter after an eviction");
    Ok(())
}
