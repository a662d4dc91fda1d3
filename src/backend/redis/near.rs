//! The near cache: recent reads of this namespace kept in process (moka), so
//! repeated reads of hot keys cost no round trip.
//!
//! # Freshness
//!
//! - A cached value is never returned past its own deadline: it is cached
//!   for the time left until the deadline in its header (against the upper
//!   bound of the server's clock), capped at the staleness bound.
//! - Writes through this store (set, delete, expire, persist, clear) drop the
//!   key from the cache when they complete, and a read that raced with one
//!   does not fill the cache with what it read: read-your-writes holds.
//! - A change made anywhere else (another process, a script, `redis-cli`,
//!   an expiry or eviction in Redis) drops the key about one round trip after
//!   it happened: Redis pushes the key's name to this store's tracking
//!   connection (`CLIENT TRACKING … BCAST`, see `tracking.rs`). While that
//!   connection is down or being restored, the cache is empty and reads go to
//!   Redis; `bound` stays an upper bound on how long any entry is served.
//! - Taking a key's lock drops it from the cache, so reads under a lock
//!   ([`KeyGuard::get`](crate::KeyGuard::get), and with it `update`, `incr`,
//!   `compare_and_set`, `get_or_insert_with`) always see the current value.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;

use super::Shared;
use crate::Value;
use crate::error::Result;
use crate::request::{Request, Response};

/// Writes that completed bump one of these (by key hash); a read fills the
/// cache only if its stripe did not move while it was in flight.
const STRIPES: usize = 64;

/// Settings of the near cache (see [`RedisConfig::near_cache`](super::RedisConfig::near_cache)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NearCacheConfig {
    pub(super) bound: Duration,
    pub(super) capacity: u64,
}

/// The near cache of one Redis backend. Cheap to clone.
#[derive(Clone)]
pub(super) struct NearCache<V> {
    inner: Arc<NearInner<V>>,
}

struct NearInner<V> {
    cache: moka::sync::Cache<String, Entry<V>>,
    /// Whether Redis's invalidation pushes are flowing (see `tracking.rs`).
    tracking: Arc<super::tracking::TrackingState>,
    epochs: [AtomicU64; STRIPES],
    hasher: std::collections::hash_map::RandomState,
    bound: Duration,
}

#[derive(Clone)]
struct Entry<V> {
    value: V,
    /// How long this entry may be served: min(remaining TTL, bound).
    ttl: Duration,
}

/// Each entry expires after its own `ttl`, counted from its (re)insertion.
struct PerEntry;

impl<V> Expiry<String, Entry<V>> for PerEntry {
    fn expire_after_create(&self, _key: &String, entry: &Entry<V>, _at: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &Entry<V>,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

impl<V: Value> NearCache<V> {
    pub(super) fn new(config: NearCacheConfig) -> Self {
        let cache = moka::sync::Cache::builder().max_capacity(config.capacity).expire_after(PerEntry).build();
        NearCache {
            inner: Arc::new(NearInner {
                cache,
                tracking: Default::default(),
                epochs: std::array::from_fn(|_| AtomicU64::new(0)),
                hasher: Default::default(),
                bound: config.bound,
            }),
        }
    }

    /// Whether the cache may serve and fill (tracking is on, no push lost since).
    pub(super) fn tracking(&self) -> Arc<super::tracking::TrackingState> {
        Arc::clone(&self.inner.tracking)
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        &self.inner.epochs[self.inner.hasher.hash_one(key) as usize % STRIPES]
    }

    /// Drops `key` (a write to it completed, or another process changed it).
    pub(super) fn invalidate(&self, key: &str) {
        // Bump first: a read in flight then sees the move and does not refill.
        self.stripe(key).fetch_add(1, Ordering::AcqRel);
        self.inner.cache.invalidate(key);
    }

    /// Drops everything (`clear`, shutdown, or events were lost).
    pub(super) fn invalidate_all(&self) {
        for e in &self.inner.epochs {
            e.fetch_add(1, Ordering::AcqRel);
        }
        self.inner.cache.invalidate_all();
    }

    /// A `Get`: from the cache, else one atomic read that fills it.
    async fn get(&self, shared: &Shared<V>, key: String) -> Result<Response<V>> {
        if !self.inner.tracking.is_live() {
            // Invalidations may be lost: a plain read, filling nothing.
            return shared.handle(Request::Get { key }).await;
        }
        if let Some(entry) = self.inner.cache.get(&key) {
            return Ok(Response::Value(Some(entry.value)));
        }
        let stripe = self.stripe(&key);
        let before = stripe.load(Ordering::Acquire);
        // One GET: the header's deadline bounds how long the value may be served.
        let Some((deadline, body)) = shared.read(&key).await? else { return Ok(Response::Value(None)) };
        let value: V = shared.config.codec.decode(&key, &body)?;
        let ttl = match deadline {
            None => Some(self.inner.bound),
            Some(d) => Some(shared.clock.remaining(d).min(self.inner.bound)).filter(|t| !t.is_zero()),
        };
        if let Some(ttl) = ttl
            && stripe.load(Ordering::Acquire) == before
        {
            self.inner.cache.insert(key.clone(), Entry { value: value.clone(), ttl });
            // A write that completed meanwhile may have invalidated before this insert.
            if stripe.load(Ordering::Acquire) != before {
                self.inner.cache.invalidate(&key);
            }
        }
        Ok(Response::Value(Some(value)))
    }
}

impl<V: Value> Shared<V> {
    /// Serves a request through the near cache, if there is one.
    pub(super) async fn serve(&self, req: Request<V>) -> Result<Response<V>> {
        let Some(near) = &self.near else { return self.handle(req).await };
        enum Touch {
            Key(String),
            Keys(Vec<String>),
            All,
            Nothing,
        }
        let touch = match &req {
            Request::Get { key } => return near.get(self, key.clone()).await,
            Request::Set { key, .. }
            | Request::Delete { key, .. }
            | Request::Expire { key, .. }
            | Request::Persist { key, .. }
            | Request::CompareAndSet { key, .. }
            | Request::Incr { key, .. }
            | Request::Throttle { key, .. }
            | Request::Lock { key, .. } => Touch::Key(key.clone()),
            Request::SetMany { entries, .. } => Touch::Keys(entries.iter().map(|(k, _)| k.clone()).collect()),
            Request::DeleteMany { keys } => Touch::Keys(keys.clone()),
            Request::Clear | Request::Shutdown => Touch::All,
            _ => Touch::Nothing,
        };
        let out = self.handle(req).await;
        match touch {
            Touch::Key(key) => near.invalidate(&key),
            Touch::Keys(keys) => keys.iter().for_each(|key| near.invalidate(key)),
            Touch::All => near.invalidate_all(),
            Touch::Nothing => {}
        }
        out
    }
}
