//! What [`Inspector`](crate::inspect::Inspector) reads from a Redis
//! namespace: its locks, pending expirations and health checks. Read-only:
//! `SCAN`, `GET`, `PTTL`, `ZRANGE`, `HMGET`, `CONFIG GET`, `INFO`, `CLUSTER
//! INFO`/`SLOTS`, `TIME`; never `CONFIG SET`.

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::Server;
use fred::types::{ClusterHash, CustomCommand, Value as RedisValue};

use super::eviction::{config_get, node_policy, nodes, on_node, sends_evicted};
use super::scan::{escape_glob, scan_reply};
use super::{RedisBackend, Shared, layout};
use crate::Value;
use crate::error::{Error, Result};
use crate::inspect::{Check, HeldLock, PendingExpiration, Status, left};

/// A clock offset beyond this is a warning.
const CLOCK_WARN_MS: i64 = 1000;

impl<V: Value> Shared<V> {
    /// Every key matching `pattern` (a full `SCAN` pass on the node of `slot`).
    async fn scan_all(&self, pattern: &str, slot: ClusterHash) -> Result<Vec<String>> {
        let client = self.pool.next();
        let mut at = "0".to_owned();
        let mut all = Vec::new();
        loop {
            let args: Vec<RedisValue> =
                vec![at.clone().into(), "MATCH".into(), pattern.into(), "COUNT".into(), 1000.into()];
            let reply: RedisValue = client
                .custom(CustomCommand::new_static("SCAN", slot.clone(), false), args)
                .await
                .map_err(|e| self.backend_error("scan", e))?;
            let (next, found) =
                scan_reply(reply).ok_or_else(|| Error::backend_msg("redis", "unexpected reply to SCAN"))?;
            all.extend(found);
            if next == "0" {
                return Ok(all);
            }
            at = next;
        }
    }

    /// A command on the node of `slot`.
    async fn on_slot(&self, name: &'static str, slot: u16, args: Vec<RedisValue>) -> Result<RedisValue> {
        self.pool
            .next()
            .custom(CustomCommand::new_static(name, ClusterHash::Custom(slot), false), args)
            .await
            .map_err(|e| self.backend_error(name, e))
    }

    /// The server's time, ms since the epoch (`TIME`).
    async fn server_ms(&self) -> Result<i64> {
        let (secs, micros): (i64, i64) = self
            .pool
            .next()
            .custom(fred::cmd!("TIME"), Vec::<RedisValue>::new())
            .await
            .map_err(|e| self.backend_error("reading the server time", e))?;
        Ok(secs * 1000 + micros / 1000)
    }
}

impl<V: Value> RedisBackend<V> {
    /// The locks held now on keys starting with `prefix`, in key order.
    pub(crate) async fn held_locks(&self, prefix: &str) -> Result<Vec<HeldLock>> {
        let s = &self.shared;
        let escaped = escape_glob(prefix);
        let mut names = BTreeSet::new();
        if s.clustered {
            for shard in &s.layout.shards {
                let pattern = format!("{}*", shard.lock(&escaped));
                names.extend(s.scan_all(&pattern, ClusterHash::Custom(shard.slot)).await?);
            }
        } else {
            let pattern = format!("{}*}}:l:{escaped}*", s.layout.scan_pattern.trim_end_matches('*'));
            names.extend(s.scan_all(&pattern, ClusterHash::Random).await?);
        }
        let client = s.pool.next();
        let mut locks = Vec::new();
        for full in names {
            let Some((shard, rest)) = s.layout.parse_shard_key(&full) else { continue };
            let Some(key) = rest.strip_prefix("l:").filter(|k| k.starts_with(prefix)) else { continue };
            let lease: i64 = client.pttl(full.as_str()).await.map_err(|e| s.backend_error("pttl", e))?;
            if lease == -2 {
                continue; // released since the scan
            }
            let fence: Option<String> = client
                .get(s.layout.shards[shard].lock_fence(key))
                .await
                .map_err(|e| s.backend_error("get", e))?;
            locks.push(HeldLock {
                key: key.to_owned(),
                fence: fence.and_then(|f| f.parse().ok()),
                lease_left: left(lease),
            });
        }
        locks.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(locks)
    }

    /// The leased or waiting expirations of every shard, soonest due first.
    pub(crate) async fn pending_expirations(&self) -> Result<Vec<PendingExpiration>> {
        let s = &self.shared;
        let now = s.server_ms().await?;
        let mut all = Vec::new();
        for shard in &s.layout.shards {
            let [due, records, attempts] = &shard.pending;
            let args = vec![due.clone().into(), 0.into(), (-1).into(), "WITHSCORES".into()];
            let reply = s.on_slot("ZRANGE", shard.slot, args).await?;
            let flat: Vec<String> = strings(reply);
            let pairs: Vec<(String, i64)> = flat
                .chunks(2)
                .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.parse::<f64>().ok()? as i64)))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let ids: Vec<RedisValue> = pairs.iter().map(|(id, _)| id.clone().into()).collect();
            let mut args = vec![RedisValue::from(records.clone())];
            args.extend(ids.iter().cloned());
            let stored = s.on_slot("HMGET", shard.slot, args).await?;
            let mut args = vec![RedisValue::from(attempts.clone())];
            args.extend(ids);
            let tries = strings(s.on_slot("HMGET", shard.slot, args).await?);
            let stored: Vec<Option<Vec<u8>>> = match stored {
                RedisValue::Array(v) => v.into_iter().map(|v| v.as_bytes().map(<[u8]>::to_vec)).collect(),
                _ => Vec::new(),
            };
            for (i, (_, lease_until)) in pairs.into_iter().enumerate() {
                let Some(key) = stored.get(i).and_then(|r| r.as_deref()).and_then(pending_key) else {
                    continue;
                };
                let attempt = tries.get(i).and_then(|a| a.parse().ok()).unwrap_or(0);
                all.push(PendingExpiration { key, attempt, lease_left: left(lease_until - now) });
            }
        }
        all.sort_by_key(|p| p.lease_left);
        Ok(all)
    }

    /// Layout, memory policy and notifications, persistence, replicas, cluster slots, clock.
    pub(crate) async fn doctor(&self) -> Result<Vec<Check>> {
        let s = &self.shared;
        let client = s.pool.next().clone();
        let mut checks = Vec::new();
        let found: Option<String> =
            client.get(s.layout.layout_key.as_str()).await.map_err(|e| s.backend_error("get", e))?;
        checks.push(match found {
            Some(found) if found == s.layout.descriptor() => Check::new(
                "layout",
                Status::Ok,
                format!("version {}, {} shards", layout::VERSION, s.layout.shards.len()),
            ),
            Some(found) => Check::new(
                "layout",
                Status::Fail,
                format!("`{found}`: this livedict reads v{}", layout::VERSION),
            ),
            None => Check::new("layout", Status::Fail, "no layout key: nothing was stored in this namespace"),
        });
        let nodes = nodes(&client);
        for node in &nodes {
            checks.push(memory_check(&client, node).await);
            checks.push(persistence_check(&client, node).await);
            checks.push(replica_check(&client, node, s.config.replica_acks).await);
        }
        if s.clustered {
            checks.push(cluster_check(s, &client).await);
        }
        checks.push(clock_check(s).await?);
        Ok(checks)
    }
}

/// The strings of an array reply (nil: empty).
fn strings(reply: RedisValue) -> Vec<String> {
    match reply {
        RedisValue::Array(v) => v.into_iter().map(|v| v.as_string().unwrap_or_default()).collect(),
        _ => Vec::new(),
    }
}

/// The key of a pending record `<member length>:<member><codec bytes>`.
fn pending_key(record: &[u8]) -> Option<String> {
    let colon = record.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&record[..colon]).ok()?.parse().ok()?;
    let member = record.get(colon + 1..colon + 1 + len)?;
    String::from_utf8(member.to_vec()).ok()
}

/// The node's name in a check (`maxmemory-policy@127.0.0.1:7000`).
fn named(what: &str, node: &Option<Server>) -> String {
    match node {
        Some(node) => format!("{what}@{node}"),
        None => what.to_owned(),
    }
}

/// One field of an `INFO` section.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_owned()))
}

async fn info(client: &Client, node: &Option<Server>, section: &str) -> Option<String> {
    on_node(client, node, "INFO", &[section]).await.ok()?.as_string()
}

/// `maxmemory-policy` together with whether evictions are notified.
async fn memory_check(client: &Client, node: &Option<Server>) -> Check {
    let name = named("maxmemory-policy", node);
    let Some(policy) = node_policy(client, node).await else {
        return Check::new(name, Status::Warn, "cannot read the policy (CONFIG and INFO refused)");
    };
    if policy == "noeviction" {
        return Check::new(name, Status::Ok, "noeviction: Redis never drops the store's keys");
    }
    let flags = config_get(client, node, "notify-keyspace-events").await;
    match flags {
        Some(flags) if sends_evicted(&flags) => Check::new(
            name,
            Status::Ok,
            format!("{policy} with eviction notifications ({flags}): evictions are reported as Evict events"),
        ),
        Some(flags) if policy.starts_with("allkeys-") => Check::new(
            name,
            Status::Warn,
            format!(
                "{policy} without eviction notifications (notify-keyspace-events `{flags}`): entries without a TTL \
                 can be dropped silently (set notify-keyspace-events to include `Ee`, or maxmemory-policy noeviction)"
            ),
        ),
        Some(flags) => Check::new(
            name,
            Status::Warn,
            format!(
                "{policy} without eviction notifications (notify-keyspace-events `{flags}`): evictions are found \
                 only at the entries' deadlines"
            ),
        ),
        None => Check::new(name, Status::Warn, format!("{policy}; notify-keyspace-events cannot be read")),
    }
}

/// AOF, RDB snapshots, or nothing.
async fn persistence_check(client: &Client, node: &Option<Server>) -> Check {
    let name = named("persistence", node);
    let Some(info) = info(client, node, "persistence").await else {
        return Check::new(name, Status::Warn, "cannot read INFO persistence");
    };
    if info_field(&info, "aof_enabled").as_deref() == Some("1") {
        return Check::new(name, Status::Ok, "aof");
    }
    match config_get(client, node, "save").await {
        Some(save) if !save.trim().is_empty() => Check::new(
            name,
            Status::Warn,
            format!("rdb snapshots only (save `{save}`): a crash loses the writes since the last snapshot"),
        ),
        Some(_) => Check::new(name, Status::Warn, "none: a restart of the server loses every entry"),
        None => Check::new(name, Status::Warn, "aof off; rdb settings cannot be read"),
    }
}

/// Connected replicas against the URL's `replica_acks`.
async fn replica_check(client: &Client, node: &Option<Server>, acks: Option<u32>) -> Check {
    let name = named("replicas", node);
    let Some(info) = info(client, node, "replication").await else {
        return Check::new(name, Status::Warn, "cannot read INFO replication");
    };
    let replicas: u32 = info_field(&info, "connected_slaves").and_then(|n| n.parse().ok()).unwrap_or(0);
    match acks {
        Some(want) if replicas < want => Check::new(
            name,
            Status::Fail,
            format!("{replicas} connected, replica_acks={want}: every write will fail waiting for replicas"),
        ),
        Some(want) => Check::new(name, Status::Ok, format!("{replicas} connected, replica_acks={want}")),
        None if replicas > 0 => Check::new(
            name,
            Status::Warn,
            format!("{replicas} connected, no replica_acks: a failover can lose acknowledged writes"),
        ),
        None => Check::new(name, Status::Ok, "none (a single server)"),
    }
}

/// Every slot served, and the namespace's shards spread over every master.
async fn cluster_check<V: Value>(s: &Shared<V>, client: &Client) -> Check {
    let Some(info) = info_cluster(client).await else {
        return Check::new("cluster", Status::Warn, "cannot read CLUSTER INFO");
    };
    let state = info_field(&info, "cluster_state").unwrap_or_default();
    let ok: u32 = info_field(&info, "cluster_slots_ok").and_then(|n| n.parse().ok()).unwrap_or(0);
    if state != "ok" || ok != 16384 {
        return Check::new(
            "cluster",
            Status::Fail,
            format!(
                "state {state}, {ok} of 16384 slots served: keys of the other slots cannot be read or written"
            ),
        );
    }
    let ranges = match client
        .custom::<RedisValue, RedisValue>(fred::cmd!("CLUSTER"), vec!["SLOTS".into()])
        .await
    {
        Ok(RedisValue::Array(ranges)) => ranges,
        _ => return Check::new("cluster", Status::Ok, "all 16384 slots served (CLUSTER SLOTS unreadable)"),
    };
    // (first slot, last slot, master) of each range.
    let ranges: Vec<(i64, i64, String)> = ranges
        .into_iter()
        .filter_map(|r| {
            let RedisValue::Array(r) = r else { return None };
            let master = match r.get(2)? {
                RedisValue::Array(m) => format!("{}:{}", m.first()?.as_string()?, m.get(1)?.as_i64()?),
                _ => return None,
            };
            Some((r.first()?.as_i64()?, r.get(1)?.as_i64()?, master))
        })
        .collect();
    let masters: BTreeSet<&str> = ranges.iter().map(|(_, _, m)| m.as_str()).collect();
    let used: BTreeSet<&str> = s
        .layout
        .shards
        .iter()
        .filter_map(|shard| {
            let slot = i64::from(shard.slot);
            ranges.iter().find(|(a, b, _)| (*a..=*b).contains(&slot)).map(|(_, _, m)| m.as_str())
        })
        .collect();
    if used.len() < masters.len() {
        Check::new(
            "cluster",
            Status::Warn,
            format!(
                "all slots served; the namespace's {} shards are on {} of {} masters (open with more shards to spread it)",
                s.layout.shards.len(),
                used.len(),
                masters.len()
            ),
        )
    } else {
        Check::new(
            "cluster",
            Status::Ok,
            format!(
                "all 16384 slots served; {} shards over {} masters",
                s.layout.shards.len(),
                masters.len()
            ),
        )
    }
}

async fn info_cluster(client: &Client) -> Option<String> {
    client
        .custom::<RedisValue, RedisValue>(fred::cmd!("CLUSTER"), vec!["INFO".into()])
        .await
        .ok()?
        .as_string()
}

/// The offset between this machine's clock and the server's (`TIME`, at the round trip's middle).
async fn clock_check<V: Value>(s: &Shared<V>) -> Result<Check> {
    let sent = Instant::now();
    let local_before = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let server = s.server_ms().await?;
    let rtt = sent.elapsed().as_millis() as i64;
    let offset = server - (local_before + rtt / 2);
    Ok(if offset.abs() > CLOCK_WARN_MS {
        Check::new(
            "clock",
            Status::Warn,
            format!(
                "the server's clock is {offset} ms from this machine's: deadlines follow the server's clock, \
                 event times (`at`) this machine's"
            ),
        )
    } else {
        Check::new("clock", Status::Ok, format!("offset {offset} ms (round trip {rtt} ms)"))
    })
}
