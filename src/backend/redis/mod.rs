//! The Redis backend: a namespace on a Redis server (or cluster) shared by
//! any number of processes, with millisecond TTLs, exactly-once expiry events
//! carrying values, and enforced distributed locks.
//!
//! # Key layout
//!
//! Everything lives under `ld:{namespace}:` (the braces are a hash tag, so a
//! namespace stays in one cluster slot):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `ld:{ns}:v:<key>` | string | the value (codec-encoded, JSON by default), `PX` = the TTL |
//! | `ld:{ns}:x:<key>` | string | shadow copy of a TTL'd value for its `Expire` event, `PX` = TTL + grace |
//! | `ld:{ns}:deadlines` | sorted set | key → deadline (ms since the epoch, server clock) |
//! | `ld:{ns}:lock:<key>` | string | lock owner token, `PX` = the lease |
//! | `ld:{ns}:fence` | integer | fencing counter, incremented per lock acquisition |
//! | `ld:{ns}:events` | pub/sub channel | events of the processes with `share_events=true` ([`RedisBackend::share_events`]) |
//!
//! # Guarantees
//!
//! - Reads are one `GET`/`EXISTS`/`PTTL`: Redis itself hides a value at its
//!   deadline (millisecond precision), so an expired value is never returned.
//! - Writes are one Lua script each (one round trip): lock check, value,
//!   shadow and deadline index change atomically. Concurrent sets share one
//!   script call (see `batch.rs`), each still checked and applied on its own.
//! - Expiry events: each TTL'd write also records its deadline in the sorted set and a shadow
//!   copy of the value that outlives the deadline by the grace period; a sweeper in every instance
//!   claims due keys with one atomic script, so exactly one instance reports each expiry, with its
//!   value. With no instance running, expiries are reported by the next instance that starts within
//!   the grace period (after it, without the value). Listing uses `SCAN` (never `KEYS`),
//!   clearing deletes by `SCAN` (never `FLUSHDB`).

mod batch;
mod config;
mod feed;
mod near;
mod scripts;
mod sweeper;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use fred::bytes::Bytes;
use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::Value as RedisValue;
use fred::types::config::{Config as FredConfig, ReconnectPolicy, TcpConfig};
use futures::future::BoxFuture;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use config::RedisConfig;

use crate::Value;
use crate::error::{Error, Result};
use crate::event::EventSink;
use crate::request::{LockGrant, Request, Response};
use scripts::Scripts;

/// Keys fetched per `SCAN` page and values per `MGET`.
const PAGE: u32 = 1000;

/// The namespace's key names.
struct Keys {
    prefix: String,
    value_prefix: String,
    shadow_prefix: String,
    index: String,
    fence: String,
}

impl Keys {
    fn new(namespace: &str) -> Self {
        let prefix = format!("ld:{{{namespace}}}:");
        Keys {
            value_prefix: format!("{prefix}v:"),
            shadow_prefix: format!("{prefix}x:"),
            index: format!("{prefix}deadlines"),
            fence: format!("{prefix}fence"),
            prefix,
        }
    }

    fn value(&self, key: &str) -> String {
        format!("{}{key}", self.value_prefix)
    }

    fn shadow(&self, key: &str) -> String {
        format!("{}{key}", self.shadow_prefix)
    }

    fn lock(&self, key: &str) -> String {
        format!("{}lock:{key}", self.prefix)
    }

    /// value, shadow, index, lock: the `KEYS` of every write script.
    fn write_keys(&self, key: &str) -> Vec<String> {
        vec![self.value(key), self.shadow(key), self.index.clone(), self.lock(key)]
    }
}

/// Escapes glob characters so a key prefix can be used in `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

struct Shared<V> {
    config: RedisConfig,
    pool: Pool,
    scripts: Scripts,
    keys: Keys,
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
}

impl<V> Drop for Shared<V> {
    fn drop(&mut self) {
        // Close the connections in the background when the last handle goes.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            rt.spawn(async move {
                let _ = pool.quit().await;
            });
        }
    }
}

/// The Redis backend: a `tower::Service<Request<V>>` over one namespace.
/// See the [module docs](self) for its key layout and guarantees.
pub struct RedisBackend<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Clone for RedisBackend<V> {
    fn clone(&self) -> Self {
        RedisBackend { shared: Arc::clone(&self.shared) }
    }
}

impl<V> std::fmt::Debug for RedisBackend<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").field("url", &self.shared.label).finish()
    }
}

/// What a write script answered.
pub(super) enum Status {
    Ok,
    Missing,
    Locked,
    Lost,
}

impl<V: Value> RedisBackend<V> {
    /// Connects (within the connect timeout) and starts the sweeper.
    ///
    /// An unreachable server is an [`Error::Backend`] after at most the
    /// connect timeout, naming the URL without its password.
    pub async fn open(config: RedisConfig, sink: EventSink<V>) -> Result<Self> {
        config.validate()?;
        let label = crate::url::redact(&config.server_url);
        let fred_config = FredConfig::from_url(&config.server_url)
            .map_err(|e| Error::invalid_url(&config.server_url, e.details().to_string()))?;
        let connect_timeout = config.connect_timeout;
        let command_timeout = config.command_timeout;
        let pool = fred::types::Builder::from_config(fred_config)
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = connect_timeout;
                c.tcp = TcpConfig { nodelay: Some(true), ..Default::default() };
            })
            .with_performance_config(|p| p.default_command_timeout = command_timeout)
            // Reconnect forever with backoff; commands wait (up to the command timeout) meanwhile.
            .set_policy(ReconnectPolicy::new_exponential(0, 20, 2_000, 2))
            .build_pool(config.pool_size)
            .map_err(|e| Error::backend("redis", format!("cannot create a client for {label}"), e))?;
        let connected = tokio::time::timeout(connect_timeout, async {
            pool.init().await?;
            pool.ping::<()>(None).await
        })
        .await;
        match connected {
            Ok(Ok(())) => {}
            failed => {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let _ = pool.quit().await;
                });
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no connection within {connect_timeout:?}"),
                };
                return Err(Error::backend_msg("redis", format!("cannot connect to {label}: {why}")));
            }
        }
        let cancel = CancellationToken::new();
        let keys = Keys::new(&config.namespace);
        let near = config.near_cache.map(near::NearCache::new);
        let shared = Arc::new_cyclic(|this| Shared {
            config,
            pool,
            scripts: Scripts::new(),
            keys,
            sink,
            closed: AtomicBool::new(false),
            label,
            sweeper: cancel.clone().drop_guard(),
            near,
            set_batch: batch::SetBatch::default(),
            this: this.clone(),
        });
        tokio::spawn(sweeper::sweeper(Arc::downgrade(&shared), cancel));
        Ok(RedisBackend { shared })
    }
}

fn ms(d: Duration) -> i64 {
    d.as_nanos().div_ceil(1_000_000).min(i64::MAX as u128) as i64
}

impl<V: Value> Shared<V> {
    fn backend_error(&self, what: &str, e: fred::error::Error) -> Error {
        Error::backend("redis", format!("{what} on {}", self.label), e)
    }

    fn report_expired(&self, key: &str, bytes: Option<&[u8]>) {
        self.sink.expired(key, || {
            let bytes = bytes.filter(|b| !b.is_empty())?;
            match self.config.codec.decode(key, bytes) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(key, error = %e, "expired value does not decode; reported without it");
                    None
                }
            }
        });
    }

    /// Runs a write script, waiting with backoff while another owner holds the
    /// key's lock. Reports an expired value the script claimed on the way.
    async fn write(
        &self,
        op: &'static str,
        script: &fred::types::scripts::Script,
        key: &str,
        args: Vec<RedisValue>,
    ) -> Result<(Status, Option<Bytes>)> {
        let mut backoff = Duration::from_millis(1);
        loop {
            let reply: RedisValue = script
                .evalsha_with_reload(self.pool.next(), self.keys.write_keys(key), args.clone())
                .await
                .map_err(|e| self.backend_error(op, e))?;
            let RedisValue::Array(mut parts) = reply else {
                return Err(Error::backend_msg("redis", format!("unexpected reply to {op}")));
            };
            parts.resize(3, RedisValue::Null);
            if let RedisValue::String(_) | RedisValue::Bytes(_) = &parts[1] {
                self.report_expired(key, parts[1].as_bytes());
            }
            let status = match parts[0].as_str().as_deref() {
                Some("OK") => Status::Ok,
                Some("MISSING") => Status::Missing,
                Some("LOCKED") => Status::Locked,
                Some("LOST") => Status::Lost,
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
                    let payload = match std::mem::replace(&mut parts[2], RedisValue::Null) {
                        RedisValue::Bytes(b) => Some(b),
                        RedisValue::String(s) => Some(s.into_inner()),
                        _ => None,
                    };
                    return Ok((status, payload));
                }
            }
        }
    }

    /// Every live key of the namespace, by `SCAN` pages.
    async fn scan_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let pattern = format!("{}*", glob_escape(prefix));
        let mut cursor = "0".to_string();
        let mut all = Vec::new();
        loop {
            let (next, page): (String, Vec<String>) = self
                .pool
                .next()
                .scan_page(cursor, pattern.clone(), Some(PAGE), None)
                .await
                .map_err(|e| self.backend_error("scan", e))?;
            all.extend(page);
            if next == "0" {
                return Ok(all);
            }
            cursor = next;
        }
    }

    async fn handle(&self, req: Request<V>) -> Result<Response<V>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let codec = self.config.codec;
        let owner = |lock: Option<crate::LockToken>| -> RedisValue {
            lock.map_or_else(|| "".into(), |t| t.as_str().to_owned().into())
        };
        match req {
            Request::Get { key } => {
                let bytes: Option<Bytes> =
                    self.pool.get(self.keys.value(&key)).await.map_err(|e| self.backend_error("get", e))?;
                Ok(Response::Value(bytes.map(|b| codec.decode(&key, &b)).transpose()?))
            }
            Request::Exists { key } => {
                let n: i64 = self
                    .pool
                    .exists(self.keys.value(&key))
                    .await
                    .map_err(|e| self.backend_error("exists", e))?;
                Ok(Response::Bool(n > 0))
            }
            Request::Ttl { key } => {
                let left: i64 =
                    self.pool.pttl(self.keys.value(&key)).await.map_err(|e| self.backend_error("pttl", e))?;
                Ok(Response::Ttl((left >= 0).then(|| Duration::from_millis(left as u64))))
            }
            Request::Set { key, value, ttl, lock } => {
                let value = Bytes::from(codec.encode(&key, &value)?);
                let ttl: RedisValue = ttl.map_or_else(|| "".into(), |t| ms(t).into());
                let mut op = batch::SetOp { key, value, ttl, owner: owner(lock) };
                let mut backoff = Duration::from_millis(1);
                loop {
                    let (back, reply) = self.set_batched(op).await;
                    let (status, expired) = reply?;
                    if let Some(bytes) = &expired {
                        self.report_expired(&back.key, Some(bytes));
                    }
                    match status {
                        Status::Locked => {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_millis(50));
                            op = back;
                        }
                        Status::Lost => return Err(Error::LockLost { key: back.key }),
                        Status::Ok | Status::Missing => return Ok(Response::Done),
                    }
                }
            }
            Request::Delete { key, lock } => {
                let args = vec![owner(lock), key.clone().into()];
                let (status, removed) = self.write("delete", &self.scripts.delete, &key, args).await?;
                let value = removed.as_ref().and_then(|b| codec.decode(&key, b).ok());
                Ok(Response::Deleted { removed: matches!(status, Status::Ok), value })
            }
            Request::Expire { key, ttl, lock } => {
                let args =
                    vec![owner(lock), key.clone().into(), ms(ttl).into(), ms(self.config.grace).into()];
                let (status, _) = self.write("expire", &self.scripts.expire, &key, args).await?;
                Ok(Response::Bool(matches!(status, Status::Ok)))
            }
            Request::Persist { key, lock } => {
                let args = vec![owner(lock), key.clone().into()];
                let (status, _) = self.write("persist", &self.scripts.persist, &key, args).await?;
                Ok(Response::Bool(matches!(status, Status::Ok)))
            }
            Request::Keys => {
                let n = self.keys.value_prefix.len();
                Ok(Response::Keys(
                    self.scan_keys(&self.keys.value_prefix)
                        .await?
                        .into_iter()
                        .map(|k| k[n..].to_owned())
                        .collect(),
                ))
            }
            Request::Items => {
                let n = self.keys.value_prefix.len();
                let keys = self.scan_keys(&self.keys.value_prefix).await?;
                let mut items = Vec::with_capacity(keys.len());
                for chunk in keys.chunks(PAGE as usize) {
                    let values: Vec<Option<Bytes>> =
                        self.pool.mget(chunk.to_vec()).await.map_err(|e| self.backend_error("mget", e))?;
                    for (full, bytes) in chunk.iter().zip(values) {
                        // A value that expired between SCAN and MGET is simply not listed.
                        if let Some(bytes) = bytes {
                            let key = full[n..].to_owned();
                            let value = codec.decode(&key, &bytes)?;
                            items.push((key, value));
                        }
                    }
                }
                Ok(Response::Items(items))
            }
            Request::Len => Ok(Response::Len(self.scan_keys(&self.keys.value_prefix).await?.len())),
            Request::Clear => {
                // Entries already past their deadline expired before this clear: claim
                // and report them first, so a sweeper that has not run yet cannot lose them.
                for _ in 0..100 {
                    if !sweeper::sweep_once(self).await.is_zero() {
                        break;
                    }
                }
                for prefix in [&self.keys.value_prefix, &self.keys.shadow_prefix] {
                    let keys = self.scan_keys(prefix).await?;
                    for chunk in keys.chunks(PAGE as usize) {
                        let _: i64 = self
                            .pool
                            .unlink(chunk.to_vec())
                            .await
                            .map_err(|e| self.backend_error("clear", e))?;
                    }
                }
                let _: i64 =
                    self.pool.del(&self.keys.index).await.map_err(|e| self.backend_error("clear", e))?;
                Ok(Response::Done)
            }
            Request::Lock { key, timeout, token } => self.lock(key, timeout, token).await,
            Request::Renew { key, token } => {
                let args: Vec<RedisValue> =
                    vec![token.as_str().to_owned().into(), ms(self.config.lock_lease).into()];
                let renewed: i64 = self
                    .scripts
                    .renew
                    .evalsha_with_reload(self.pool.next(), vec![self.keys.lock(&key)], args)
                    .await
                    .map_err(|e| self.backend_error("renew", e))?;
                if renewed == 1 { Ok(Response::Done) } else { Err(Error::LockLost { key }) }
            }
            Request::Unlock { key, token } => {
                let args: Vec<RedisValue> = vec![token.as_str().to_owned().into()];
                let _: i64 = self
                    .scripts
                    .unlock
                    .evalsha_with_reload(self.pool.next(), vec![self.keys.lock(&key)], args)
                    .await
                    .map_err(|e| self.backend_error("unlock", e))?;
                Ok(Response::Done)
            }
            Request::Shutdown => {
                self.closed.store(true, Ordering::Release);
                self.sweeper.token().cancel();
                let _ = self.pool.quit().await;
                Ok(Response::Done)
            }
        }
    }

    async fn lock(&self, key: String, timeout: Duration, token: crate::LockToken) -> Result<Response<V>> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(1);
        let keys = vec![self.keys.lock(&key), self.keys.fence.clone()];
        loop {
            let args: Vec<RedisValue> =
                vec![token.as_str().to_owned().into(), ms(self.config.lock_lease).into()];
            let fence: i64 = self
                .scripts
                .lock
                .evalsha_with_reload(self.pool.next(), keys.clone(), args)
                .await
                .map_err(|e| self.backend_error("lock", e))?;
            if fence > 0 {
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
