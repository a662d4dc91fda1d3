//! [`RedisConfig`]: which server, which namespace, and how the client behaves.

use std::time::Duration;

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::url::{Invalid, StoreUrl, UrlOption, millis, parse, set};

/// Settings of the Redis backend.
///
/// URL form: `redis://[user:password@]host[:port][/db]?namespace=orders&pool_size=4`
/// (`rediss://` for TLS with the `redis-tls` cargo feature — an error without it —, `redis-cluster://` for a
/// cluster — more seed nodes with `&node=host:port` —, `redis-sentinel://sentinel-host:26379/0?service_name=mymaster`
/// for a master found through Sentinel, more sentinels with `&node=host:port`). Options:
///
/// | option | default | meaning |
/// | --- | --- | --- |
/// | `namespace` | `livedict` | every key lives under `ld:{namespace:…}:` |
/// | `shards` | 16 | shards of the namespace, 1–1024 (see [`RedisConfig::shards`]); fixed once the namespace is written |
/// | `pool_size` | half the CPUs (1–8) | connections in the pool |
/// | `connect_timeout_ms` | 5000 | how long opening may take before it fails |
/// | `lock_lease_ms` | 30000 | lease of per-key locks |
/// | `grace_ms` | none | let Redis drop a TTL'd value this long after its deadline if no instance claimed it (see [`RedisConfig::grace`]) |
/// | `sweep_ms` | 5000 | safety net: each shard an instance sweeps is re-checked at least this often (at most 2 checks/s in all) even without a wake-up |
/// | `command_timeout_ms` | 4000 | how long a command may wait (e.g. during a reconnect) before failing |
/// | `codec` | `json` | value encoding |
/// | `verify_codec` | `false` | decode every encoded value once before writing it; one that does not decode back is refused (see [`RedisConfig::verify_codec`]) |
/// | `replica_acks` | none | after each write, wait until this many replicas have it (`WAIT`), see [`RedisConfig::replica_acks`] |
/// | `replica_ack_timeout_ms` | 1000 | how long a write waits for those replicas before failing |
/// | `near_cache_ms` | off | keep reads in process for at most this long (see [`RedisConfig::near_cache`]) |
/// | `near_cache_entries` | 10000 | entries the near cache holds |
/// | `time_to_idle_ms` | none | an entry also expires this long after its last access by any process (see [`RedisConfig::time_to_idle`]) |
/// | `share_events` | `false` | publish events to, and stream events from, the other processes on this namespace (see [`RedisBackend::share_events`](super::RedisBackend::share_events)) |
/// | `observer` | `false` | `true`: open without taking part (`create`: and create the store if missing): no sweeper, no claims, no leases, no `CONFIG SET`, no layout written (see [`RedisConfig::observer`]) |
/// | `eviction` | `report` | on a server whose `maxmemory-policy` may evict: `report` every eviction as an event, or `refuse` to open (see [`Eviction`]) |
/// | `notify_evictions` | `true` | with `eviction=report`, let livedict add `Ee` to the server's `notify-keyspace-events` when the policy may evict (see [`RedisConfig::notify_evictions`]) |
/// | `expire_delivery` | `at_most_once` | `at_least_once`: a claimed expiration stays leased until its `Expire` callbacks returned, and is delivered again if they fail or this process dies (see [`Delivery`](crate::Delivery)) |
/// | `expire_lease_ms` | 30000 | with `at_least_once`: how long an unacknowledged expiration stays with the process that claimed it |
/// | `expire_max_attempts` | 10 | with `at_least_once`: deliveries of one expiration before it is dropped (counted in `stats().expirations_abandoned`) |
///
/// ```
/// use std::time::Duration;
/// let config = livedict::backend::RedisConfig::new("redis://127.0.0.1:6379/0")
///     .namespace("orders")
///     .pool_size(8)
///     .connect_timeout(Duration::from_secs(2));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The URL handed to fred (without livedict's options).
    pub(super) server_url: String,
    pub(super) namespace: String,
    pub(super) shards: u16,
    pub(super) pool_size: usize,
    pub(super) connect_timeout: Duration,
    pub(super) lock_lease: Duration,
    pub(super) grace: Option<Duration>,
    pub(super) sweep_interval: Duration,
    pub(super) command_timeout: Duration,
    pub(super) codec: Codec,
    pub(super) verify_codec: bool,
    pub(super) replica_acks: Option<u32>,
    pub(super) replica_ack_timeout: Duration,
    pub(super) share_events: bool,
    /// Observer mode, and whether it creates a missing store.
    pub(super) observer: (bool, bool),
    pub(super) near_cache: Option<super::near::NearCacheConfig>,
    pub(super) eviction: Eviction,
    pub(super) notify_evictions: bool,
    pub(super) delivery: crate::delivery::ExpireDelivery,
    pub(super) time_to_idle: Option<Duration>,
}

/// What a store does on a Redis server that may evict its keys: one whose
/// `maxmemory-policy` is not `noeviction` (`allkeys-*` may evict any key,
/// `volatile-*` the keys with a Redis TTL: lock keys, and values with
/// `grace_ms`). URL option `eviction`.
///
/// Redis evicts behind the client's back; without care an entry would leave
/// the store without an event and a lock could vanish under its holder. See
/// the README's "Redis memory policy" section.
///
/// ```
/// use livedict::backend::{Eviction, RedisConfig};
/// let config = RedisConfig::new("redis://127.0.0.1/").eviction(Eviction::Refuse);
/// # let _ = config;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Eviction {
    /// The default: the store works on any policy and reports every entry
    /// Redis evicts as one `Evict` event (without its value, which Redis
    /// already dropped) — or `Expire` if it was past its deadline — counted
    /// in `stats().evictions`. It learns of evictions from the server's
    /// `evicted` keyspace notifications, which it turns on itself unless
    /// [`notify_evictions`](RedisConfig::notify_evictions) is off. Without
    /// them it still reports evicted TTL'd entries at their deadline under
    /// `volatile-*` policies, but under `allkeys-*` Redis may also evict the
    /// deadline index, and an evicted entry without a TTL leaves silently
    /// (a warning says so). The policy is re-read every 30 s: operators
    /// change it at run time.
    #[default]
    Report,
    /// `open` fails with [`Error::Backend`] naming the policy when the
    /// server (any master of a cluster) may evict; a policy changed to an
    /// evicting one later is logged as an error and then reported as with `Report`.
    Refuse,
}

impl Eviction {
    fn from_name(name: &str) -> Option<Eviction> {
        match name {
            "report" => Some(Eviction::Report),
            "refuse" => Some(Eviction::Refuse),
            _ => None,
        }
    }
}

/// Half the available CPUs, at least 1, at most 8.
fn default_pool_size() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get() / 2).clamp(1, 8)
}

impl RedisConfig {
    /// A store on the server at `url` (`redis://`, `rediss://`, `redis-cluster://`).
    pub fn new(url: &str) -> Self {
        RedisConfig {
            server_url: url.to_owned(),
            namespace: "livedict".into(),
            shards: 16,
            pool_size: default_pool_size(),
            connect_timeout: Duration::from_secs(5),
            lock_lease: Duration::from_secs(30),
            grace: None,
            sweep_interval: Duration::from_secs(5),
            command_timeout: Duration::from_secs(4),
            codec: Codec::Json,
            verify_codec: false,
            replica_acks: None,
            replica_ack_timeout: Duration::from_secs(1),
            share_events: false,
            observer: (false, false),
            near_cache: None,
            eviction: Eviction::Report,
            notify_evictions: true,
            delivery: Default::default(),
            time_to_idle: None,
        }
    }

    /// What to do on a server that may evict this store's keys (default
    /// [`Eviction::Report`]). URL option: `eviction=report|refuse`.
    pub fn eviction(mut self, eviction: Eviction) -> Self {
        self.eviction = eviction;
        self
    }

    /// Whether livedict may turn on the server's `evicted` keyspace
    /// notifications (default true). With [`Eviction::Report`], on a server
    /// whose policy may evict and whose `notify-keyspace-events` lacks them,
    /// livedict adds the flags `E` and `e` (it never removes any): Redis
    /// then publishes one message per evicted key on
    /// `__keyevent@<db>__:evicted`, and nothing else changes. With `false`
    /// livedict leaves the server's configuration alone and uses the
    /// notifications only if they are already on. Where `CONFIG` is disabled
    /// (managed Redis), turn them on in the server's parameters
    /// (`notify-keyspace-events Ee`). URL option: `notify_evictions`.
    pub fn notify_evictions(mut self, allow: bool) -> Self {
        self.notify_evictions = allow;
        self
    }

    /// The namespace: letters, digits, `_`, `-`, `.` and `:` (default `livedict`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// Shards of the namespace (default 16, at most [`MAX_SHARDS`](super::MAX_SHARDS)).
    ///
    /// Each shard is its own hash tag, so on a Redis Cluster a namespace
    /// spreads over as many slots — and so masters — as it has shards (their
    /// tags are chosen to tile the slot space evenly). Choose at least 4× the
    /// number of masters you may grow to, so every master holds a fair share;
    /// 16 covers clusters of up to ~4-5 masters, 64 up to ~16. More shards
    /// cost a little on `len`/`keys`/`clear` (one command per shard) and
    /// nothing on single-key operations. On a single server the count does
    /// not matter. The count is written into the namespace's layout key by
    /// the first store that opens it; opening it with another count is an
    /// error (a different count would put keys in different shards).
    ///
    /// ```
    /// let config = livedict::backend::RedisConfig::new("redis-cluster://127.0.0.1:7000").shards(64);
    /// # let _ = config;
    /// ```
    pub fn shards(mut self, shards: u16) -> Self {
        self.shards = shards;
        self
    }

    /// Connections in the pool (default: half the available CPUs, at least 1, at most 8).
    ///
    /// Each connection pipelines every command sent on it, so one connection
    /// already carries many concurrent tasks; more help only when the client
    /// has cores to spare for them (measured on 2 cores, 50 tasks: `get` at
    /// 0.73x raw fred with 1 connection, 0.51x with 4).
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// How long `open` may take to connect before failing (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A safety net for abandoned namespaces (default: none). Normally the
    /// sweeper of a running instance claims a TTL'd value at its deadline and
    /// reports it with its value; when no instance runs, the value stays in
    /// Redis until one starts and claims it — so no expiration is lost, but a
    /// namespace whose application is gone for good keeps its expired values.
    /// With a grace period, each TTL'd value also gets a Redis expiry of TTL +
    /// grace: an instance starting later than that reports the expiration
    /// without its value. Costs one entry in Redis's expiry table per TTL'd
    /// value (~40 bytes; measured: 326 → ~370 B per entry with 100-byte values).
    /// URL option: `grace_ms`.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// Safety net of the sweeper (default 5 s): a shard this instance sweeps is
    /// re-checked at least this often even if no wake-up arrived (wake-ups
    /// are pub/sub, lost while a connection is down). The checks are spread
    /// out to at most 2 per second, whatever the shard count.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long one command may wait (e.g. while the client reconnects) before
    /// failing with [`Error::Backend`] (default 4 s, under the default 5 s request timeout).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Turns on the near cache: reads are kept in process (moka, up to
    /// 10,000 entries, see [`near_cache_capacity`](Self::near_cache_capacity))
    /// so repeated reads of a key cost no round trip. Redis keeps it coherent
    /// (client tracking in broadcast mode, on a RESP3 connection of its own
    /// per node): a change made anywhere drops the key about one round trip
    /// later; `max_staleness` bounds any entry's age on top of that. Values
    /// are never returned past their own deadline; writes through this store
    /// are seen at once (read-your-writes); reads under a lock always go to
    /// Redis; while tracking is being restored the cache serves nothing.
    /// URL option: `near_cache_ms`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = livedict::backend::RedisConfig::new("redis://127.0.0.1/")
    ///     .near_cache(Duration::from_millis(500))
    ///     .near_cache_capacity(50_000);
    /// # let _ = config;
    /// ```
    pub fn near_cache(mut self, max_staleness: Duration) -> Self {
        let capacity = self.near_cache.map_or(10_000, |n| n.capacity);
        self.near_cache = Some(super::near::NearCacheConfig { bound: max_staleness, capacity });
        self
    }

    /// How many entries the near cache holds (default 10,000); turns it on
    /// with a 1 s staleness bound if [`near_cache`](Self::near_cache) was not called.
    pub fn near_cache_capacity(mut self, entries: u64) -> Self {
        let bound = self.near_cache.map_or(Duration::from_secs(1), |n| n.bound);
        self.near_cache = Some(super::near::NearCacheConfig { bound, capacity: entries });
        self
    }

    /// Makes every acknowledged write survive the failure of its master:
    /// after each write (set, delete, expire, persist, lock, and the sweeper's
    /// claims) the store sends `WAIT n timeout` on the same connection and
    /// answers only when `n` replicas have the write. If fewer confirm within
    /// the [timeout](Self::replica_ack_timeout), the call fails with
    /// [`Error::Backend`] saying so — the write was applied on the master but
    /// may be lost if it fails now. Without this option Redis replicates
    /// asynchronously, and writes acknowledged just before a master dies can
    /// be lost in a failover (measured in the README). URL option: `replica_acks`.
    ///
    /// ```
    /// let config = livedict::backend::RedisConfig::new("redis-cluster://127.0.0.1:7000").replica_acks(1);
    /// # let _ = config;
    /// ```
    pub fn replica_acks(mut self, replicas: u32) -> Self {
        self.replica_acks = (replicas > 0).then_some(replicas);
        self
    }

    /// How long a write waits for [`replica_acks`](Self::replica_acks) (default 1 s).
    pub fn replica_ack_timeout(mut self, timeout: Duration) -> Self {
        self.replica_ack_timeout = timeout;
        self
    }

    /// The Redis key that holds `key`'s value in this config's namespace (for
    /// inspecting a store with `redis-cli`). The stored string is a header —
    /// `~` for an entry without a deadline, else the deadline in 8 base-64
    /// digits — followed by the codec's bytes.
    ///
    /// ```
    /// let config = livedict::backend::RedisConfig::new("redis://127.0.0.1/").namespace("orders");
    /// let name = config.value_key("order:1");
    /// assert!(name.starts_with("ld:{orders:") && name.ends_with("}:v:order:1"));
    /// ```
    pub fn value_key(&self, key: &str) -> String {
        super::layout::Layout::new(&self.namespace, self.shards.clamp(1, super::MAX_SHARDS))
            .shard(key)
            .value(key)
    }

    /// Idle expiry: an entry also expires `idle` after its last access by
    /// any process on the namespace (a write, `get`, `exists`, a guard's
    /// `get`; not `ttl`, `keys`, `items`), at the earlier of that and its
    /// own TTL's deadline, as an ordinary `Expire` event with its value.
    /// URL option `time_to_idle_ms`.
    ///
    /// A `get` or `exists` is then one script call (`EVALSHA`, which reads
    /// the value and moves its deadline on the server's clock) instead of
    /// one `GET`; the near cache is not used (a hit would skip the
    /// extension). The deadline of an entry's own TTL, when it has one
    /// longer than `idle`, is kept next to its value (`ld:{…}:o:<key>`).
    /// Every process sharing a namespace should use the same time-to-idle.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = livedict::backend::RedisConfig::new("redis://127.0.0.1:6379").time_to_idle(Duration::from_secs(1800));
    /// # let _ = config;
    /// ```
    pub fn time_to_idle(mut self, idle: Duration) -> Self {
        self.time_to_idle = Some(idle);
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
        if let Some(idle) = self.time_to_idle {
            crate::url::check_idle(idle)?;
        }
        // fred without a TLS feature reads `rediss://` as plain TCP; never
        // let a URL that asks for TLS silently connect without it.
        #[cfg(not(feature = "redis-tls"))]
        if self.server_url.trim_start().to_ascii_lowercase().starts_with("rediss") {
            return Err(Error::invalid_url(
                &self.server_url,
                "rediss:// (TLS) needs livedict's `redis-tls` cargo feature; refusing to connect without TLS",
            ));
        }
        if self.shards == 0 || self.shards > super::MAX_SHARDS {
            return Err(Error::InvalidConfig(format!(
                "redis shards must be 1-{}, not {}",
                super::MAX_SHARDS,
                self.shards
            )));
        }
        let ok = !self.namespace.is_empty()
            && self.namespace.len() <= 128
            && self.namespace.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidConfig(format!(
                "redis namespace `{}` must be 1-128 letters, digits, `_`, `-`, `.` or `:`",
                self.namespace
            )))
        }
    }

    /// Reads a `redis://` URL: checks host and port, takes livedict's options.
    pub(crate) fn from_url(url: &mut StoreUrl<'_>) -> Result<Self> {
        let body = url.body();
        let authority = body.split('/').next().unwrap_or("");
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || host_port.starts_with('[') => (h, Some(p)),
            _ => (host_port, None),
        };
        if host.is_empty() {
            return Err(url.error("missing host"));
        }
        if let Some(port) = port
            && port.parse::<u16>().map_or(true, |p| p == 0)
        {
            return Err(url.error(format!("bad port `{port}`")));
        }
        // Seed nodes of a cluster (or sentinels) and the sentinel service name: handed to fred as they came.
        let mut passed: Vec<(&str, String)> = url.take_all("node").into_iter().map(|n| ("node", n)).collect();
        let sentinel = url.scheme().ends_with("-sentinel");
        if sentinel {
            match url.take("sentinelServiceName").or_else(|| url.take("service_name")) {
                Some(name) => passed.push(("sentinelServiceName", name)),
                None => return Err(url.error("a redis-sentinel:// url needs `service_name=<master name>`")),
            }
        }
        let mut server_url = format!("{}://{}", url.scheme(), body);
        for (i, (name, value)) in passed.iter().enumerate() {
            server_url.push(if i == 0 { '?' } else { '&' });
            server_url.push_str(name);
            server_url.push('=');
            server_url.push_str(value);
        }
        let mut config = RedisConfig::new(&server_url);
        url.apply(&mut config, OPTIONS)?;
        url.apply(&mut config, &crate::backend::common::setting_options())?;
        fred::types::config::Config::from_url(&config.server_url)
            .map_err(|e| url.error(format!("not a redis url: {}", e.details())))?;
        Ok(config)
    }
}

crate::backend::common::store_settings!(
    RedisConfig,
    "livedict::backend::RedisConfig::new(\"redis://127.0.0.1/\")",
    "RedisBackend"
);

/// The URL options of `redis://` (and `rediss://`, `redis-cluster://`,
/// `redis-sentinel://`), in the order of the documentation tables. `node`
/// and `service_name` are read before (they go to the client as they came).
/// Its own URL options (the shared ones are [`setting_options`](crate::backend::common::setting_options)).
pub(super) const OPTIONS: &[UrlOption<RedisConfig>] = &[
    UrlOption {
        name: "namespace",
        default: "`livedict`",
        apply: |c, v| {
            c.namespace = v.to_owned();
            c.validate().map_err(|e| Invalid::because(e.to_string()))
        },
    },
    UrlOption {
        name: "shards",
        default: "16",
        apply: |c, v| match parse::<u16>(v)? {
            n @ 1..=super::MAX_SHARDS => set(&mut c.shards, n),
            _ => Err(Invalid::because(format!("shards must be 1-{}", super::MAX_SHARDS))),
        },
    },
    UrlOption {
        name: "pool_size",
        default: "half the CPUs (1–8)",
        apply: |c, v| set(&mut c.pool_size, parse::<usize>(v)?.max(1)),
    },
    UrlOption {
        name: "connect_timeout_ms",
        default: "5000",
        apply: |c, v| set(&mut c.connect_timeout, millis(v)?),
    },
    UrlOption {
        name: "command_timeout_ms",
        default: "4000",
        apply: |c, v| set(&mut c.command_timeout, millis(v)?),
    },
    UrlOption {
        name: "replica_acks",
        default: "none",
        apply: |c, v| set(&mut c.replica_acks, Some(parse::<u32>(v)?).filter(|n| *n > 0)),
    },
    UrlOption {
        name: "replica_ack_timeout_ms",
        default: "1000",
        apply: |c, v| set(&mut c.replica_ack_timeout, millis(v)?),
    },
    UrlOption { name: "grace_ms", default: "none", apply: |c, v| set(&mut c.grace, Some(millis(v)?)) },
    UrlOption {
        name: "sweep_ms",
        default: "5000",
        apply: |c, v| set(&mut c.sweep_interval, millis(v)?.max(Duration::from_millis(1))),
    },
    UrlOption {
        name: "near_cache_ms",
        default: "off",
        apply: |c, v| match millis(v)? {
            d if d.is_zero() => Err(Invalid::because("near_cache_ms must be at least 1")),
            d => {
                let capacity = c.near_cache.map_or(10_000, |n| n.capacity);
                set(&mut c.near_cache, Some(super::near::NearCacheConfig { bound: d, capacity }))
            }
        },
    },
    UrlOption {
        name: "near_cache_entries",
        default: "10000",
        apply: |c, v| {
            let capacity = parse::<u64>(v)?;
            let bound = c.near_cache.map_or(Duration::from_secs(1), |n| n.bound);
            set(&mut c.near_cache, Some(super::near::NearCacheConfig { bound, capacity }))
        },
    },
    UrlOption {
        name: "eviction",
        default: "`report`",
        apply: |c, v| {
            c.eviction = Eviction::from_name(v)
                .ok_or_else(|| Invalid::because(format!("unknown eviction `{v}` (report or refuse)")))?;
            Ok(())
        },
    },
    UrlOption {
        name: "notify_evictions",
        default: "`true`",
        apply: |c, v| set(&mut c.notify_evictions, parse(v)?),
    },
    UrlOption {
        name: "time_to_idle_ms",
        default: "none",
        apply: |c, v| set(&mut c.time_to_idle, Some(crate::url::idle_millis(v)?)),
    },
];

#[cfg(test)]
mod tests {
    use super::OPTIONS;
    use crate::backend::common::setting_options;
    use crate::url::check_documented;

    /// README, rustdoc and the parser list the same options with the same defaults.
    #[test]
    fn documented_options_are_the_parsed_ones() {
        let options: Vec<_> = OPTIONS.iter().copied().chain(setting_options()).collect();
        let extra = ["node"];
        check_documented(include_str!("../../../README.md"), "### Redis", &options, &extra);
        check_documented(include_str!("config.rs"), "Settings of the Redis backend", &options, &extra);
    }
}
