//! The Redis backend: a namespace on a Redis server (or cluster) shared by
//! any number of processes, with millisecond TTLs, exactly-once expiry events
//! carrying values, and enforced distributed locks.
//!
//! # Key layout (version 2)
//!
//! A namespace is split into shards (URL option `shards`, default 16), each
//! its own hash tag, so one store spreads over every master of a Redis
//! Cluster. Each value is stored once, with its deadline in a short header.
//! See `layout.rs` for every key; in short, per shard `<tag>`:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `ld:{<tag>}:v:<key>` | string | header + value (codec-encoded, JSON by default) |
//! | `ld:{<tag>}:d` | sorted set | key → deadline (ms, server clock), TTL'd entries only |
//! | `ld:{<tag>}:n` | integer | entries in the shard |
//! | `ld:{<tag>}:l:<key>` | string | lock owner token, `PX` = the lease |
//! | `ld:{<tag>}:f` | integer | the shard's fencing counter |
//!
//! and per namespace `ld:{ns}:layout` (version and shard count; opening a
//! namespace with another one is an error), `ld:{ns}:sweepers` (which
//! instance sweeps which shard) and the channels `ld:{ns}:wake` and `ld:{ns}:events`.
//!
//! # Guarantees
//!
//! - Reads are one `GET` (or one `SCAN` pass): the deadline in the value's
//!   header is checked against an upper bound of the server's clock, so an
//!   expired value is never returned, even before it is swept.
//! - Writes are one Lua script each, on the key's shard: lock check, value,
//!   deadline index and entry count change atomically. Concurrent sets share
//!   one script call (see `batch.rs`), each still checked and applied on its own.
//! - Expiry events: a TTL'd value stays stored past its deadline (hidden
//!   from reads) until the shard's sweeper claims it with one atomic script,
//!   so exactly one instance reports each expiry, with its value. With no
//!   instance running, expiries are reported by the next instance that
//!   starts; with `grace_ms`, Redis drops values unclaimed that long after
//!   their deadline (they are then reported without the value).
//! - Each shard is swept by one live instance at a time (see `sweeper.rs`);
//!   an idle instance sleeps until its shards' next deadline, and a write of
//!   an earlier deadline wakes the sweeper through the `wake` channel.
//! - `len()` reads the shards' counters (O(shards) commands); `keys`,
//!   `items` and `clear` scan the namespace's value keys shard by shard.

mod acker;
mod atomic;
mod batch;
mod clock;
mod config;
mod eviction;
mod feed;
mod inspect;
mod layout;
mod many;
mod near;
mod routers;
mod scan;
mod scripts;
mod sweeper;
mod tracking;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fred::bytes::Bytes;
use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface, SortedSetsInterface};
use fred::types::Value as RedisValue;
use fred::types::config::{
    ClusterDiscoveryPolicy, Config as FredConfig, ReconnectPolicy, ServerConfig, TcpConfig,
};
use futures::future::{BoxFuture, try_join_all};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backend::receipts::Receipts;

pub use config::{Eviction, RedisConfig};
pub use layout::MAX_SHARDS;

use crate::Value;
use crate::error::{Error, Result};
use crate::event::EventSink;
use crate::request::{LockGrant, Request, Response};
use clock::ServerClock;
use layout::{Layout, Shard};
use routers::Routers;
use scripts::Scripts;

/// Keys fetched per `SCAN` page and values per `MGET`.
const PAGE: u32 = 1000;

struct Shared<V> {
    config: RedisConfig,
    pool: Pool,
    /// The pool's routing tasks (taken by the close: `shutdown`, or the last handle's drop).
    routers: std::sync::Mutex<Routers>,
    scripts: Scripts,
    layout: Layout,
    clock: ServerClock,
    /// Whether the URL names a cluster (scripts and multi-key commands stay in one shard).
    clustered: bool,
    sink: EventSink<V>,
    closed: AtomicBool,
    /// The URL without its password, for messages.
    label: String,
    sweeper: DropGuard,
    /// Recent reads kept in process, if the near cache is on.
    near: Option<near::NearCache<V>>,
    /// Sets waiting to share a script call.
    set_batch: batch::SetBatch,
    /// This, for tasks that send queued sets.
    this: std::sync::Weak<Shared<V>>,
    /// This instance's id among the namespace's sweepers.
    instance: String,
    /// The shards this instance sweeps (kept by the sweeper; the eviction
    /// handler reports evictions of these shards only).
    sweeps: Box<[AtomicBool]>,
    /// Whether evictions are reported by the eviction handler (see `eviction.rs`).
    evictions: eviction::Evictions,
    /// Settled leases waiting for the acker (`at_least_once`, see `acker.rs`).
    receipts: Arc<Receipts<acker::Receipt>>,
    /// Stops the acker when the last handle goes (not at `Shutdown`).
    _acker: DropGuard,
}

impl<V> Drop for Shared<V> {
    fn drop(&mut self) {
        // Close the connections in the background when the last handle goes
        // (without a runtime, dropping the routing tasks aborts them; under
        // at_least_once the acker holds them and closes them after its last receipts).
        let routers = std::mem::take(self.routers.get_mut().unwrap_or_else(|p| p.into_inner()));
        if routers.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            rt.spawn(async move { routers.close(&pool).await });
        }
    }
}

/// The Redis backend: a `tower::Service<Request<V>>` over one namespace.
/// See the [module docs](self) for its key layout and guarantees.
pub struct RedisBackend<V> {
    shared: Arc<Shared<V>>,
}

crate::backend::common::shared_handle!(RedisBackend, "url");

/// A stored value, for reads.
enum Found {
    /// Nothing, or a value past its deadline.
    Missing,
    /// A live value: its deadline and codec bytes.
    Live(Option<u64>, Bytes),
    /// A string without livedict's header (written by something else): it
    /// exists, has no deadline we know of, and does not decode.
    Foreign,
}

/// What a write script answered.
pub(super) enum Status {
    Ok,
    Missing,
    Locked,
    Lost,
    /// `WRITE_IF`: the comparison failed.
    No,
    /// `WRITE_IF`: the sum leaves the value type's range.
    Range,
    /// `WRITE_IF`: no single step for this value; lock the key instead.
    Slow,
}

/// Builds fred's client pool for `config` (not connected yet).
fn build_pool(config: &RedisConfig, label: &str) -> Result<Pool> {
    let mut fred_config = FredConfig::from_url(&config.server_url)
        .map_err(|e| Error::invalid_url(&config.server_url, e.details().to_string()))?;
    if let ServerConfig::Clustered { policy, .. } = &mut fred_config.server {
        // Rediscover the cluster from any node it knows (not only the URL's
        // seeds), so a store follows a failover even when its seed node died.
        *policy = ClusterDiscoveryPolicy::UseCache;
    }
    let connect_timeout = config.connect_timeout;
    let command_timeout = config.command_timeout;
    fred::types::Builder::from_config(fred_config)
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
            c.tcp = TcpConfig { nodelay: Some(true), ..Default::default() };
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        // Reconnect forever with backoff; commands wait (up to the command timeout) meanwhile.
        .set_policy(ReconnectPolicy::new_exponential(0, 20, 2_000, 2))
        .build_pool(config.pool_size)
        .map_err(|e| Error::backend("redis", format!("cannot create a client for {label}"), e))
}

impl<V: Value> RedisBackend<V> {
    /// Connects (within the connect timeout), checks the namespace's layout
    /// and starts the sweeper.
    ///
    /// An unreachable server is an [`Error::Backend`] after at most the
    /// connect timeout, naming the URL without its password. A namespace
    /// written with another layout version or shard count is an
    /// [`Error::InvalidConfig`] naming both.
    ///
    /// In [observer mode](RedisConfig::observer) it starts nothing and writes
    /// no layout: it takes the namespace's shard count from its layout key,
    /// and a namespace without one is an [`Error::InvalidConfig`].
    pub async fn open(config: RedisConfig, sink: EventSink<V>) -> Result<Self> {
        config.validate()?;
        let label = crate::error::redact(&config.server_url);
        let clustered = FredConfig::from_url(&config.server_url).is_ok_and(|c| c.server.is_clustered());
        let pool = build_pool(&config, &label)?;
        let connect_timeout = config.connect_timeout;
        let connected = tokio::time::timeout(connect_timeout, async {
            let routers = Routers::init_pool(&pool).await?;
            pool.ping::<()>(None).await?;
            Ok::<_, fred::error::Error>(routers)
        })
        .await;
        let routers = match connected {
            Ok(Ok(routers)) => routers,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no connection within {connect_timeout:?}"),
                };
                let pool = pool.clone();
                tokio::spawn(async move { routers::quit_failed(&pool).await });
                return Err(Error::backend_msg("redis", format!("cannot connect to {label}: {why}")));
            }
        };
        let mut config = config;
        let observer = config.observer.0;
        if observer {
            config.delivery = Default::default();
        }
        // An observer reads the namespace's own shard count; one that creates
        // nothing fails on a namespace without a layout.
        let mut write_layout = !observer;
        if observer {
            match observed_shards(&pool, &config.namespace, &label, config.observer_creates()).await {
                Ok(Some(shards)) => config.shards = shards,
                Ok(None) => write_layout = true,
                Err(e) => {
                    let pool = pool.clone();
                    tokio::spawn(async move { routers::quit_failed(&pool).await });
                    return Err(e);
                }
            }
        }
        let cancel = CancellationToken::new();
        let layout = Layout::new(&config.namespace, config.shards);
        // With a time-to-idle every read is an access the server must see.
        let near = config
            .near_cache
            .filter(|_| config.time_to_idle.is_none() && !observer)
            .map(near::NearCache::new);
        let sweeps = (0..layout.shards.len()).map(|_| AtomicBool::new(false)).collect();
        let acker_stop = CancellationToken::new();
        let shared = Arc::new_cyclic(|this| Shared {
            config,
            pool,
            routers: std::sync::Mutex::new(routers),
            scripts: Scripts::new(),
            layout,
            clock: ServerClock::new(),
            clustered,
            sink,
            closed: AtomicBool::new(false),
            label,
            sweeper: cancel.clone().drop_guard(),
            near,
            set_batch: batch::SetBatch::default(),
            this: this.clone(),
            instance: format!("{:016x}", rand::random::<u64>()),
            sweeps,
            evictions: eviction::Evictions::default(),
            receipts: Receipts::new(),
            _acker: acker_stop.clone().drop_guard(),
        });
        let opened = async {
            if write_layout {
                shared.check_layout().await?;
            }
            shared.sync_clock().await?;
            eviction::check(&shared).await?;
            match shared.near.clone() {
                Some(near) => tracking::start(&shared, near, cancel.clone()).await,
                None => Ok(()),
            }
        };
        if let Err(e) = opened.await {
            shared.close().await;
            return Err(e);
        }
        if shared.config.delivery.at_least_once() {
            shared.receipts.flush_at_shutdown(&shared.sink);
            let routers = std::mem::take(&mut *shared.routers.lock().unwrap_or_else(|p| p.into_inner()));
            let acker = acker::Acker {
                pool: shared.pool.clone(),
                routers,
                script: shared.scripts.settle.clone(),
                pending: shared.layout.shards.iter().map(|s| s.pending.clone()).collect(),
                wake: shared.layout.wake.clone(),
            };
            tokio::spawn(acker::run(acker, Arc::clone(&shared.receipts), acker_stop));
        }
        if !observer {
            sweeper::start(&shared, cancel.clone()).await;
            eviction::start(&shared, cancel).await;
        }
        Ok(RedisBackend { shared })
    }
}

/// Observer mode: the shard count of namespace `ns`, read from its layout
/// key without writing one. A namespace of another layout version is an
/// error; one without a layout (nothing ever stored there) is `None` if
/// `creates`, else an error.
async fn observed_shards(pool: &Pool, ns: &str, label: &str, creates: bool) -> Result<Option<u16>> {
    let key = Layout::new(ns, 1).layout_key;
    let found: Option<String> = pool
        .next()
        .get(&key)
        .await
        .map_err(|e| Error::backend("redis", format!("reading the key layout on {label}: {e}"), e))?;
    let Some(found) = found else {
        if creates {
            return Ok(None);
        }
        return Err(Error::InvalidConfig(format!(
            "redis namespace `{ns}` on {label} has no livedict layout (`{key}` is missing: nothing was stored \
             there, or another namespace was meant); an observer never writes one"
        )));
    };
    let shards = found
        .strip_prefix(&format!("v{} shards=", layout::VERSION))
        .and_then(|n| n.parse::<u16>().ok())
        .filter(|n| (1..=MAX_SHARDS).contains(n));
    shards.map(Some).ok_or_else(|| {
        Error::InvalidConfig(format!(
            "redis namespace `{ns}` on {label} has layout `{found}`; this livedict reads layout v{}",
            layout::VERSION
        ))
    })
}

/// The keys of the lock on `key`: the lock itself and its fence.
fn lock_keys(shard: &Shard, key: &str) -> Vec<String> {
    vec![shard.lock(key), shard.lock_fence(key)]
}

fn ms(d: Duration) -> i64 {
    d.as_nanos().div_ceil(1_000_000).min(i64::MAX as u128) as i64
}

/// The bytes of a bulk-string reply, if it is one.
fn into_bytes(v: RedisValue) -> Option<Bytes> {
    match v {
        RedisValue::Bytes(b) => Some(b),
        RedisValue::String(s) => Some(s.into_inner()),
        _ => None,
    }
}

impl<V: Value> Shared<V> {
    fn backend_error(&self, what: &str, e: fred::error::Error) -> Error {
        Error::backend("redis", format!("{what} on {}: {e}", self.label), e)
    }

    /// With `replica_acks`: waits until that many replicas have this
    /// client's writes to the node of `slot` (`WAIT` on the same connection).
    async fn await_replicas(&self, client: &fred::clients::Client, slot: u16, op: &str) -> Result<()> {
        let Some(want) = self.config.replica_acks else { return Ok(()) };
        let timeout = ms(self.config.replica_ack_timeout);
        let cmd = fred::types::CustomCommand::new("WAIT", fred::types::ClusterHash::Custom(slot), false);
        let got: i64 = client
            .custom(cmd, vec![RedisValue::from(i64::from(want)), timeout.into()])
            .await
            .map_err(|e| self.backend_error(&format!("{op}: waiting for replicas"), e))?;
        if got < i64::from(want) {
            return Err(Error::backend_msg(
                "redis",
                format!(
                    "{op} on {}: applied on the master but acknowledged by {got} of {want} replicas within {:?} \
                     (it may be lost if the master fails now)",
                    self.label, self.config.replica_ack_timeout
                ),
            ));
        }
        Ok(())
    }

    /// The scripts' grace mode argument: the grace period in ms (`''`: none),
    /// after an `n` while the eviction handler reports evictions (then the
    /// scripts leave an evicted entry to it).
    fn mode_arg(&self) -> RedisValue {
        let durable = if self.config.delivery.at_least_once() { "d" } else { "" };
        let notified = if self.evictions.notified() { "n" } else { "" };
        match self.config.grace {
            Some(g) => format!("{durable}{notified}{}", ms(g)).into(),
            None => format!("{durable}{notified}").into(),
        }
    }

    /// Reports a leased expiration (`at_least_once`) of `shard`; the acker writes its receipt.
    fn report_leased(&self, shard: usize, id: i64, attempt: u32, key: &str, bytes: &[u8]) {
        let settle = self.receipts.settle(move |ok| (shard, id, attempt, ok));
        let most = self.config.delivery.max_attempts;
        self.sink.expired_leased(key, || self.decode_expired(key, Some(bytes)), attempt, most, settle);
    }

    /// Closes the pool's connections and ends their routing tasks (within
    /// [`routers::CLOSE_WAIT`], even with the server down); once.
    async fn close(&self) {
        let routers = std::mem::take(&mut *self.routers.lock().unwrap_or_else(|p| p.into_inner()));
        if !routers.is_empty() {
            routers.close(&self.pool).await;
        }
    }

    /// Writes the layout descriptor of a new namespace, or checks that of an existing one.
    async fn check_layout(&self) -> Result<()> {
        let layout = &self.layout;
        let v1 = |suffix: &str| format!("{}{suffix}", layout.prefix);
        let keys = vec![layout.layout_key.clone(), v1("deadlines"), v1("fence")];
        let reply: Vec<String> = self
            .scripts
            .layout
            .evalsha_with_reload(self.pool.next(), keys, vec![layout.descriptor()])
            .await
            .map_err(|e| self.backend_error("checking the key layout", e))?;
        let ns = &self.config.namespace;
        match reply.first().map(String::as_str) {
            Some("OK") => Ok(()),
            Some("OTHER") => Err(Error::InvalidConfig(format!(
                "redis namespace `{ns}` on {} has layout `{}`; this store asks for `{}` \
                 (open it with the same `shards`, or use another namespace)",
                self.label,
                reply.get(1).map_or("?", String::as_str),
                layout.descriptor()
            ))),
            Some("V1") => Err(Error::InvalidConfig(format!(
                "redis namespace `{ns}` on {} holds data of key layout v1 (one slot per namespace); \
                 this version reads layout v{}: copy the data over or use another namespace",
                self.label,
                layout::VERSION
            ))),
            _ => Err(Error::backend_msg("redis", "unexpected reply to the layout check")),
        }
    }

    /// Samples the server's clock (`TIME`).
    async fn sync_clock(&self) -> Result<()> {
        let sent = Instant::now();
        let (secs, micros): (u64, u64) = self
            .pool
            .next()
            .custom(fred::cmd!("TIME"), Vec::<RedisValue>::new())
            .await
            .map_err(|e| self.backend_error("reading the server time", e))?;
        self.clock.sample(sent, secs * 1_000_000 + micros);
        Ok(())
    }

    /// Reports what a script claimed on the way for `key`: an expired value
    /// (its codec bytes; empty: without a value), an integer from
    /// `claim_dropped` (0: expired without its value, 1: evicted), or nothing.
    fn report_claimed(&self, key: &str, claimed: &RedisValue) {
        match claimed {
            RedisValue::String(_) | RedisValue::Bytes(_) => self.report_expired(key, claimed.as_bytes()),
            RedisValue::Integer(0) => self.sink.expired(key, || None),
            RedisValue::Integer(_) => self.sink.evicted(key, || None),
            _ => {}
        }
    }

    fn report_expired(&self, key: &str, bytes: Option<&[u8]>) {
        self.sink.expired(key, || self.decode_expired(key, bytes));
    }

    /// An expired value's codec bytes decoded (`None`: gone, or undecodable and logged).
    fn decode_expired(&self, key: &str, bytes: Option<&[u8]>) -> Option<V> {
        self.config.codec.decode_expired(key, bytes.filter(|b| !b.is_empty())?)
    }

    /// What is stored under `key`, as far as reads are concerned.
    fn found(&self, stored: Option<Bytes>) -> Found {
        let Some(stored) = stored else { return Found::Missing };
        let Some((deadline, body)) = layout::split_value(&stored) else { return Found::Foreign };
        if deadline.is_some_and(|d| self.clock.is_expired(d)) {
            return Found::Missing;
        }
        let start = stored.len() - body.len();
        Found::Live(deadline, stored.slice(start..))
    }

    /// A stored value, if live: its deadline (`None`: none) and codec bytes.
    /// A value without a valid header is [`Error::Decode`] (and stays in place).
    fn live(&self, key: &str, stored: Option<Bytes>) -> Result<Option<(Option<u64>, Bytes)>> {
        match self.found(stored) {
            Found::Missing => Ok(None),
            Found::Live(deadline, body) => Ok(Some((deadline, body))),
            Found::Foreign => Err(Error::Decode {
                key: key.to_owned(),
                source: "stored value has no livedict header".into(),
            }),
        }
    }

    /// One `GET`.
    async fn get_stored(&self, key: &str) -> Result<Option<Bytes>> {
        self.pool.get(self.layout.shard(key).value(key)).await.map_err(|e| self.backend_error("get", e))
    }

    /// One `GET`: the live value's deadline and codec bytes.
    async fn read(&self, key: &str) -> Result<Option<(Option<u64>, Bytes)>> {
        let stored = self.get_stored(key).await?;
        self.live(key, stored)
    }

    /// An **access** to `key` (`get`, `exists`, a guard's `get`, and any
    /// other read that counts as a use): with a time-to-idle, one `TOUCH`
    /// script call that reads the value and moves its deadline on the
    /// server (see `scripts.rs`); without, one `GET` ([`read`](Self::read)).
    pub(super) async fn read_accessed(&self, key: &str) -> Result<Option<(Option<u64>, Bytes)>> {
        let Some(idle) = self.config.time_to_idle else { return self.read(key).await };
        // An observer's reads are not uses: they never keep an idle entry alive.
        if self.config.observer.0 {
            return self.read(key).await;
        }
        let idle_ms = ms(idle);
        let shard = self.layout.shard(key);
        let keys = vec![shard.value(key), shard.index.clone(), shard.own_deadline(key)];
        let args: Vec<RedisValue> = vec![
            idle_ms.into(),
            // 1% of the time-to-idle, at least 1 ms: a hot key is not rewritten on every read.
            (idle_ms / 100).max(1).into(),
            self.config.grace.map_or_else(|| "".into(), |g| ms(g).into()),
            key.to_owned().into(),
        ];
        let client = self.pool.next();
        let reply: RedisValue = self
            .scripts
            .touch
            .evalsha_with_reload(client, keys, args)
            .await
            .map_err(|e| self.backend_error("get", e))?;
        self.live(key, into_bytes(reply))
    }

    /// Runs a per-key write script, waiting with backoff while another owner
    /// holds the key's lock. Reports an expired value the script claimed on the way.
    async fn write(
        &self,
        op: &'static str,
        script: &fred::types::scripts::Script,
        key: &str,
        args: Vec<RedisValue>,
    ) -> Result<(Status, Option<Bytes>)> {
        let shard = self.layout.shard(key);
        let keys = vec![shard.value(key), shard.index.clone(), shard.count.clone(), shard.lock(key)];
        let mut backoff = Duration::from_millis(1);
        loop {
            let client = self.pool.next();
            let reply: RedisValue = script
                .evalsha_with_reload(client, keys.clone(), args.clone())
                .await
                .map_err(|e| self.backend_error(op, e))?;
            self.await_replicas(client, shard.slot, op).await?;
            let RedisValue::Array(mut parts) = reply else {
                return Err(Error::backend_msg("redis", format!("unexpected reply to {op}")));
            };
            parts.resize(3, RedisValue::Null);
            self.report_claimed(key, &parts[1]);
            let status = match parts[0].as_str().as_deref() {
                Some("OK") => Status::Ok,
                Some("MISSING") => Status::Missing,
                Some("LOCKED") => Status::Locked,
                Some("LOST") => Status::Lost,
                Some("NO") => Status::No,
                Some("RANGE") => Status::Range,
                Some("SLOW") => Status::Slow,
                other => {
                    return Err(Error::backend_msg("redis", format!("unexpected status {other:?} for {op}")));
                }
            };
            match status {
                Status::Locked => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
                Status::Lost => return Err(Error::LockLost { key: key.to_owned() }),
                status => {
                    return Ok((status, into_bytes(std::mem::replace(&mut parts[2], RedisValue::Null))));
                }
            }
        }
    }

    /// Every stored key of the namespace (live or not yet swept), by shard:
    /// one `SCAN` pass over the server, or over every master of a cluster.
    async fn scan_namespace(&self) -> Result<Vec<Vec<String>>> {
        let pattern = self.layout.scan_pattern.clone();
        let client = self.pool.next();
        let mut out = vec![Vec::new(); self.layout.shards.len()];
        if self.clustered {
            self.drain_scan(client.scan_cluster(pattern, Some(PAGE), None), &mut out).await?;
        } else {
            self.drain_scan(client.scan(pattern, Some(PAGE), None), &mut out).await?;
        }
        Ok(out)
    }

    /// Sorts the keys of a `SCAN` stream into `out` by shard.
    async fn drain_scan(
        &self,
        pages: impl futures::Stream<Item = std::result::Result<fred::types::scan::ScanResult, fred::error::Error>>,
        out: &mut [Vec<String>],
    ) -> Result<()> {
        use fred::types::scan::Scanner;
        use futures::TryStreamExt;
        let mut pages = std::pin::pin!(pages);
        while let Some(mut page) = pages.try_next().await.map_err(|e| self.backend_error("scan", e))? {
            for key in page.take_results().unwrap_or_default() {
                let Some(full) = key.as_str() else { continue };
                if let Some((shard, user_key)) = self.layout.parse_value_key(full) {
                    out[shard].push(user_key.to_owned());
                }
            }
            page.next();
        }
        Ok(())
    }

    /// Keys of `shard` past their deadline that no sweeper has claimed yet
    /// (they are not live, whatever `SCAN` shows).
    async fn due_in(&self, shard: &Shard) -> Result<std::collections::HashSet<String>> {
        let upper_ms = self.clock.upper_now_us() / 1000;
        let due: Vec<String> = self
            .pool
            .next()
            .zrangebyscore(&shard.index, "-inf", upper_ms as f64, false, None)
            .await
            .map_err(|e| self.backend_error("zrangebyscore", e))?;
        Ok(due.into_iter().collect())
    }

    /// The live entries among `keys` of one shard.
    async fn shard_items(&self, shard: &Shard, keys: Vec<String>) -> Result<Vec<(String, V)>> {
        let mut items = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE as usize) {
            let full: Vec<String> = chunk.iter().map(|k| shard.value(k)).collect();
            let values: Vec<Option<Bytes>> =
                self.pool.next().mget(full).await.map_err(|e| self.backend_error("mget", e))?;
            for (key, stored) in chunk.iter().zip(values) {
                // A value that expired or went between SCAN and MGET is simply not listed.
                if let Some((_, body)) = self.live(key, stored)? {
                    items.push((key.clone(), self.config.codec.decode(key, &body)?));
                }
            }
        }
        Ok(items)
    }

    /// Live entries of one shard: its counter minus its due, unclaimed entries.
    async fn shard_len(&self, shard: &Shard) -> Result<usize> {
        let upper_ms = self.clock.upper_now_us() / 1000;
        let client = self.pool.next();
        let (count, due): (Option<i64>, i64) = futures::try_join!(
            client.get::<Option<i64>, _>(&shard.count),
            client.zcount::<i64, _>(&shard.index, f64::NEG_INFINITY, upper_ms as f64)
        )
        .map_err(|e| self.backend_error("len", e))?;
        Ok(count.unwrap_or(0).saturating_sub(due).max(0) as usize)
    }

    /// Removes `keys` of one shard and its index and counter (after its due entries were claimed).
    async fn clear_shard(&self, shard: &Shard, keys: Vec<String>) -> Result<()> {
        for chunk in keys.chunks(PAGE as usize) {
            let full: Vec<String> = chunk.iter().map(|k| shard.value(k)).collect();
            let _: i64 = self.pool.next().unlink(full).await.map_err(|e| self.backend_error("clear", e))?;
        }
        let _: i64 = self
            .pool
            .next()
            .del(vec![shard.index.clone(), shard.count.clone()])
            .await
            .map_err(|e| self.backend_error("clear", e))?;
        Ok(())
    }

    async fn handle(&self, req: Request<V>) -> Result<Response<V>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let codec = self.config.codec;
        let owner = |lock: Option<crate::LockToken>| -> RedisValue {
            lock.map_or_else(|| "".into(), |t| t.as_str().to_owned().into())
        };
        let shards = &self.layout.shards;
        match req {
            Request::Get { key } => {
                let live = self.read_accessed(&key).await?;
                Ok(Response::Value(live.map(|(_, body)| codec.decode(&key, &body)).transpose()?))
            }
            Request::Exists { key } if self.config.time_to_idle.is_some() => {
                Ok(Response::Bool(self.read_accessed(&key).await?.is_some()))
            }
            Request::Exists { key } => {
                let found = self.found(self.get_stored(&key).await?);
                Ok(Response::Bool(!matches!(found, Found::Missing)))
            }
            Request::Ttl { key } => match self.found(self.get_stored(&key).await?) {
                Found::Live(Some(d), _) => Ok(Response::Ttl(Some(self.clock.remaining(d)))),
                _ => Ok(Response::Ttl(None)),
            },
            Request::Set { key, value, ttl, lock } => {
                // Without a TTL the stored bytes are final here; with one, the script adds the deadline.
                let idle = self.config.time_to_idle.map(ms);
                let header: &[u8] =
                    if ttl.is_none() && idle.is_none() { &[layout::NO_DEADLINE] } else { &[] };
                let value = Bytes::from(self.config.encoder().encode_after(&key, &value, header)?);
                let owner = lock.as_ref().map(|t| t.as_str());
                let spec = match idle {
                    None => batch::SetOp::spec(ttl.map(ms), owner),
                    Some(idle) => batch::SetOp::idle_spec(ttl.map(ms), idle, owner),
                };
                let mut op = batch::SetOp { key, value, spec };
                let mut backoff = Duration::from_millis(1);
                loop {
                    let (back, reply) = self.set_batched(op).await;
                    let (status, claimed) = reply?;
                    self.report_claimed(&back.key, &claimed);
                    match status {
                        Status::Locked => {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_millis(50));
                            op = back;
                        }
                        Status::Lost => return Err(Error::LockLost { key: back.key }),
                        _ => return Ok(Response::Done),
                    }
                }
            }
            Request::Delete { key, lock } => {
                let args = vec![owner(lock), key.clone().into(), self.mode_arg()];
                let (status, removed) = self.write("delete", &self.scripts.delete, &key, args).await?;
                let value = removed.as_ref().and_then(|b| codec.decode(&key, b).ok());
                Ok(Response::Deleted { removed: matches!(status, Status::Ok), value })
            }
            Request::Expire { key, ttl, lock } => {
                let shard = self.layout.shard_of(&key);
                let idle = self.config.time_to_idle.map(ms);
                let mut args = vec![
                    owner(lock),
                    key.clone().into(),
                    idle.map_or(ms(ttl), |idle| ms(ttl).min(idle)).into(),
                    self.mode_arg(),
                    self.layout.wake.clone().into(),
                    (shard as i64).into(),
                ];
                if idle.is_some() {
                    // The TTL of its own, kept beside it (see `scripts.rs`, `EXPIRE`).
                    args.push(ms(ttl).into());
                }
                let (status, _) = self.write("expire", &self.scripts.expire, &key, args).await?;
                Ok(Response::Bool(matches!(status, Status::Ok)))
            }
            Request::Persist { key, lock } => {
                let mut args = vec![owner(lock), key.clone().into(), self.mode_arg()];
                if let Some(idle) = self.config.time_to_idle {
                    args.push(ms(idle).into());
                }
                let (status, _) = self.write("persist", &self.scripts.persist, &key, args).await?;
                Ok(Response::Bool(matches!(status, Status::Ok)))
            }
            // With a time-to-idle, through the key's lock (see `atomic.rs`): `WRITE_IF`
            // keeps no own-TTL deadline.
            Request::CompareAndSet { .. } | Request::Incr { .. } if self.config.time_to_idle.is_some() => {
                Ok(Response::Unsupported)
            }
            Request::CompareAndSet { key, expected, new, ttl, eq } => {
                self.compare_and_set(key, expected, new, ttl, eq).await
            }
            Request::Incr { key, delta, ttl, range, value_of } => {
                self.incr(key, delta, ttl, range, value_of).await
            }
            // An idle deadline before the refill would forget spent cells (as on every backend).
            Request::Throttle { .. } if self.config.time_to_idle.is_some() => {
                Err(crate::gcra::idle_refused())
            }
            Request::Throttle { key, gcra, cost, value_of, tat_of: _ } => {
                self.throttle(key, gcra, cost, value_of).await
            }
            Request::GetMany { keys } => Ok(Response::Values(self.get_many(&keys).await?)),
            Request::SetMany { entries, ttl } => self.set_many(entries, ttl).await.map(|()| Response::Done),
            Request::DeleteMany { keys } => Ok(Response::DeletedMany(self.delete_many(&keys).await?)),
            Request::ScanPage { prefix, cursor, limit, values } => {
                self.scan_page(prefix, cursor, limit, values).await
            }
            Request::Keys => {
                let found = self.scan_namespace().await?;
                let due = try_join_all(shards.iter().map(|s| self.due_in(s))).await?;
                let keys = found
                    .into_iter()
                    .zip(due)
                    .flat_map(|(keys, due)| keys.into_iter().filter(move |k| !due.contains(k)));
                Ok(Response::Keys(keys.collect()))
            }
            Request::Items => {
                let found = self.scan_namespace().await?;
                let per_shard =
                    try_join_all(shards.iter().zip(found).map(|(s, keys)| self.shard_items(s, keys))).await?;
                Ok(Response::Items(per_shard.into_iter().flatten().collect()))
            }
            Request::Len => {
                let per_shard = try_join_all(shards.iter().map(|s| self.shard_len(s))).await?;
                Ok(Response::Len(per_shard.into_iter().sum()))
            }
            Request::Clear => {
                // Entries already past their deadline expired before this clear: each
                // shard's are claimed and reported first, so none is lost.
                try_join_all((0..shards.len()).map(|s| sweeper::claim_all(self, s))).await?;
                let found = self.scan_namespace().await?;
                try_join_all(shards.iter().zip(found).map(|(s, keys)| self.clear_shard(s, keys))).await?;
                Ok(Response::Done)
            }
            Request::Lock { key, timeout, token } => self.lock(key, timeout, token).await,
            Request::Renew { key, token } => {
                let args: Vec<RedisValue> =
                    vec![token.as_str().to_owned().into(), ms(self.config.lock_lease).into()];
                let renewed: i64 = self
                    .scripts
                    .renew
                    .evalsha_with_reload(self.pool.next(), lock_keys(self.layout.shard(&key), &key), args)
                    .await
                    .map_err(|e| self.backend_error("renew", e))?;
                if renewed == 1 { Ok(Response::Done) } else { Err(Error::LockLost { key }) }
            }
            Request::Unlock { key, token } => {
                let args: Vec<RedisValue> = vec![token.as_str().to_owned().into()];
                let _: i64 = self
                    .scripts
                    .unlock
                    .evalsha_with_reload(self.pool.next(), lock_keys(self.layout.shard(&key), &key), args)
                    .await
                    .map_err(|e| self.backend_error("unlock", e))?;
                Ok(Response::Done)
            }
            Request::Shutdown => {
                self.closed.store(true, Ordering::Release);
                sweeper::leave(self).await;
                self.sweeper.token().cancel();
                // Under at_least_once the acker holds the pool's routing tasks:
                // callbacks drained after this still acknowledge, and it closes
                // the pool when the last handle goes.
                self.close().await;
                Ok(Response::Done)
            }
        }
    }

    async fn lock(&self, key: String, timeout: Duration, token: crate::LockToken) -> Result<Response<V>> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(1);
        let shard = self.layout.shard(&key);
        let keys = vec![shard.lock(&key), shard.fence.clone(), shard.lock_fence(&key)];
        loop {
            let args: Vec<RedisValue> =
                vec![token.as_str().to_owned().into(), ms(self.config.lock_lease).into()];
            let client = self.pool.next();
            let fence: i64 = self
                .scripts
                .lock
                .evalsha_with_reload(client, keys.clone(), args)
                .await
                .map_err(|e| self.backend_error("lock", e))?;
            if fence > 0 {
                self.await_replicas(client, shard.slot, "lock").await?;
                return Ok(Response::Locked(LockGrant::distributed(fence as u64, self.config.lock_lease)));
            }
            if started.elapsed() + backoff > timeout {
                return Err(Error::LockTimeout { key });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }
}

impl<V: Value> tower::Service<Request<V>> for RedisBackend<V> {
    type Response = Response<V>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Response<V>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<V>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.serve(req).await })
    }
}
