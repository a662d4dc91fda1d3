//! The request and response enums every service in the stack speaks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
pub use crate::gcra::{Gcra, Throttled};

/// The longest key accepted, in bytes (1 KiB).
pub const MAX_KEY_LEN: usize = 1024;

/// The longest TTL accepted: 100 years. Longer TTLs are [`Error::InvalidTtl`].
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Checks a key: non-empty and at most [`MAX_KEY_LEN`] bytes.
///
/// ```
/// assert!(livedict::validate_key("user:1").is_ok());
/// assert!(livedict::validate_key("").is_err());
/// ```
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        Err(Error::InvalidKey { reason: "empty" })
    } else if key.len() > MAX_KEY_LEN {
        Err(Error::InvalidKey { reason: "longer than 1024 bytes" })
    } else {
        Ok(())
    }
}

/// Checks a TTL: non-zero and at most [`MAX_TTL`].
///
/// ```
/// use std::time::Duration;
/// assert!(livedict::validate_ttl(Duration::from_millis(1)).is_ok());
/// assert!(livedict::validate_ttl(Duration::ZERO).is_err());
/// assert!(livedict::validate_ttl(Duration::MAX).is_err());
/// ```
pub fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        Err(Error::InvalidTtl { ttl, reason: "zero" })
    } else if ttl > MAX_TTL {
        Err(Error::InvalidTtl { ttl, reason: "longer than 100 years" })
    } else {
        Ok(())
    }
}

/// Identifies one lock holder: a random owner token, unique per `lock` call.
///
/// Guarded writes carry it so the lock layer and distributed backends let
/// them through while other writers wait.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockToken {
    owner: Arc<str>,
}

impl LockToken {
    /// A fresh random token (128 random bits, hex).
    pub fn new() -> Self {
        let bits: u128 = rand::random();
        // By hand: `format!` runs the formatting machinery on every `lock` call.
        let mut hex = [0u8; 32];
        for (i, digit) in hex.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[((bits >> (124 - 4 * i)) & 0xf) as usize];
        }
        // Invariant: only ASCII hex digits were written.
        LockToken { owner: std::str::from_utf8(&hex).expect("ASCII hex digits").into() }
    }

    /// The token as text (stored by distributed backends as the lock owner).
    pub fn as_str(&self) -> &str {
        &self.owner
    }
}

impl Default for LockToken {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockToken({})", &self.owner[..8])
    }
}

/// What a backend reports when it granted a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockGrant {
    /// A fencing counter, strictly increasing per key on distributed backends (0 on memory).
    pub fence: u64,
    /// The lease after which the lock frees itself, if the backend uses leases.
    pub lease: Option<Duration>,
    /// Whether the backend holds state for this lock that must be released by an `Unlock` request.
    pub distributed: bool,
}

impl LockGrant {
    /// A grant that needs no backend-side release (the memory backend's).
    pub fn local() -> Self {
        LockGrant { fence: 0, lease: None, distributed: false }
    }

    /// A grant held by a distributed backend (SQLite, Redis).
    pub fn distributed(fence: u64, lease: Duration) -> Self {
        LockGrant { fence, lease: Some(lease), distributed: true }
    }
}

/// One operation on the store. Every service in the stack takes this.
///
/// Write variants carry `lock: Option<LockToken>`: `Some` for writes made
/// through a [`KeyGuard`](crate::KeyGuard), which pass the lock; `None`
/// writes wait while another holder has the key locked.
#[derive(Debug)]
#[non_exhaustive]
pub enum Request<V> {
    /// Read a live value.
    Get {
        /// The key.
        key: String,
    },
    /// Whether a live value exists.
    Exists {
        /// The key.
        key: String,
    },
    /// The remaining TTL of a live value.
    Ttl {
        /// The key.
        key: String,
    },
    /// Store a value; `ttl: None` stores it without expiry (dropping any old deadline).
    Set {
        /// The key.
        key: String,
        /// The value.
        value: V,
        /// Time to live, or `None` for no expiry.
        ttl: Option<Duration>,
        /// The lock token of a guarded write.
        lock: Option<LockToken>,
    },
    /// Remove a value.
    Delete {
        /// The key.
        key: String,
        /// The lock token of a guarded write.
        lock: Option<LockToken>,
    },
    /// Give a live value a new deadline `ttl` from now.
    Expire {
        /// The key.
        key: String,
        /// The new time to live.
        ttl: Duration,
        /// The lock token of a guarded write.
        lock: Option<LockToken>,
    },
    /// Drop the deadline of a live value.
    Persist {
        /// The key.
        key: String,
        /// The lock token of a guarded write.
        lock: Option<LockToken>,
    },
    /// All live keys.
    Keys,
    /// All live entries.
    Items,
    /// The number of live entries.
    Len,
    /// Remove every entry of this store (fires no per-key events).
    Clear,
    /// Acquire the key's lock for `token`, waiting up to `timeout`.
    Lock {
        /// The key.
        key: String,
        /// How long to wait for the lock.
        timeout: Duration,
        /// The new holder.
        token: LockToken,
    },
    /// Extend the lease of a held lock.
    Renew {
        /// The key.
        key: String,
        /// The holder.
        token: LockToken,
    },
    /// Release the key's lock held by `token`.
    Unlock {
        /// The key.
        key: String,
        /// The holder.
        token: LockToken,
    },
    /// Flush pending writes and stop background drivers.
    Shutdown,
    /// Store `new` only if the live value equals `expected` (`None`: only if
    /// the key is missing), in one atomic step of the backend.
    ///
    /// Answered with [`Response::Written`]; a backend without such a step
    /// answers [`Response::Unsupported`] and the handle locks the key
    /// instead. Used by [`LiveDict::compare_and_set`](crate::LiveDict::compare_and_set)
    /// on Redis (one script call).
    CompareAndSet {
        /// The key.
        key: String,
        /// The value the live one must equal, or `None` for "missing".
        expected: Option<V>,
        /// The value to store.
        new: V,
        /// Time to live of the new value, or `None` for no expiry.
        ttl: Option<Duration>,
        /// Equality of two values (`PartialEq`), for backends that compare
        /// encoded bytes first and must confirm a byte mismatch.
        eq: fn(&V, &V) -> bool,
    },
    /// Add `delta` to the integer stored under `key` (a missing key counts
    /// as 0) in one atomic step of the backend.
    ///
    /// Answered with [`Response::Written`] holding the new value,
    /// [`Error::Overflow`] if it leaves `range`, or [`Response::Unsupported`]
    /// (the handle then locks the key instead). Used by
    /// [`LiveDict::incr`](crate::LiveDict::incr) on Redis (one script call).
    Incr {
        /// The key.
        key: String,
        /// What to add.
        delta: i64,
        /// Time to live of the new value, or `None` for no expiry.
        ttl: Option<Duration>,
        /// The smallest and largest integer the value type holds.
        range: (i64, i64),
        /// The new integer as a value.
        value_of: fn(i64) -> Option<V>,
    },
    /// Read the live values of many keys (a batch; answered with
    /// [`Response::Values`], one per key in order).
    GetMany {
        /// The keys, each checked by [`validate_key`].
        keys: Vec<String>,
    },
    /// Store many values with one TTL (`None`: no expiry, dropping any old
    /// deadline); atomic per key, not across keys. Answered with
    /// [`Response::Done`]. Waits for every key locked by another holder.
    SetMany {
        /// The entries, in order (a key given twice ends with its last value).
        entries: Vec<(String, V)>,
        /// Time to live of every entry, or `None` for no expiry.
        ttl: Option<Duration>,
    },
    /// Remove many keys (answered with [`Response::DeletedMany`], one per key
    /// in order). Waits for every key locked by another holder.
    DeleteMany {
        /// The keys.
        keys: Vec<String>,
    },
    /// One page of a prefix scan: the live entries whose key starts with
    /// `prefix`, from `cursor` on, at most `limit` of them (see
    /// [`LiveDict::scan`](crate::LiveDict::scan)).
    ///
    /// Answered with [`Response::ScanPage`]. The cursor is the backend's own
    /// text: on memory and SQLite the last key of the previous page (the page
    /// holds the next keys in key order), on Redis the shard and the `SCAN`
    /// cursor (a page may then be empty with the scan not over).
    ScanPage {
        /// The keys' prefix (`""`: every key).
        prefix: String,
        /// Where the page starts: `None` for the first page, else the
        /// `next` cursor of the previous page.
        cursor: Option<String>,
        /// The most entries in the page (a hint on Redis, as `SCAN COUNT`).
        limit: usize,
        /// Whether to read the values too (else only the keys).
        values: bool,
    },
    /// One rate-limit check (GCRA, see [`Gcra`]) of cost `cost` on `key`, in
    /// one atomic step of the backend (memory: one shard lock; SQLite: one
    /// write of the group commit; Redis: one script call on the server's clock).
    ///
    /// The key's value is its theoretical arrival time in microseconds of the
    /// backend's clock (`tat_of` reads it from a stored value, `value_of`
    /// makes the value to store); an allowed check of cost ≥ 1 stores the new
    /// one with a TTL until the bucket is full again, a denied one writes
    /// nothing. Answered with [`Response::Throttled`]. Used by
    /// [`ratelimit::RateLimiter`](crate::ratelimit::RateLimiter) (feature `ratelimit`).
    /// Waits, like any write, while another holder has the key locked.
    Throttle {
        /// The key.
        key: String,
        /// The quota.
        gcra: Gcra,
        /// How many cells the check takes (0: only look).
        cost: u32,
        /// The arrival time as a value.
        value_of: fn(u64) -> Option<V>,
        /// The arrival time a stored value holds (`None`: not one).
        tat_of: fn(&V) -> Option<u64>,
    },
}

impl<V> Request<V> {
    /// The operation's name, as used in tracing spans and errors.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Get { .. } => "get",
            Request::Exists { .. } => "exists",
            Request::Ttl { .. } => "ttl",
            Request::Set { .. } => "set",
            Request::Delete { .. } => "delete",
            Request::Expire { .. } => "expire",
            Request::Persist { .. } => "persist",
            Request::Keys => "keys",
            Request::Items => "items",
            Request::Len => "len",
            Request::Clear => "clear",
            Request::Lock { .. } => "lock",
            Request::Renew { .. } => "renew",
            Request::Unlock { .. } => "unlock",
            Request::Shutdown => "shutdown",
            Request::CompareAndSet { .. } => "compare_and_set",
            Request::Incr { .. } => "incr",
            Request::GetMany { .. } => "get_many",
            Request::SetMany { .. } => "set_many",
            Request::DeleteMany { .. } => "delete_many",
            Request::ScanPage { .. } => "scan",
            Request::Throttle { .. } => "throttle",
        }
    }

    /// The key this request is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Request::Get { key }
            | Request::Exists { key }
            | Request::Ttl { key }
            | Request::Set { key, .. }
            | Request::Delete { key, .. }
            | Request::Expire { key, .. }
            | Request::Persist { key, .. }
            | Request::Lock { key, .. }
            | Request::Renew { key, .. }
            | Request::Unlock { key, .. }
            | Request::CompareAndSet { key, .. }
            | Request::Incr { key, .. }
            | Request::Throttle { key, .. } => Some(key),
            Request::Keys
            | Request::Items
            | Request::Len
            | Request::Clear
            | Request::Shutdown
            | Request::GetMany { .. }
            | Request::SetMany { .. }
            | Request::DeleteMany { .. } => None,
            Request::ScanPage { .. } => None,
        }
    }

    /// For writes to one key: the key and the lock token the write carries.
    pub fn write_target(&self) -> Option<(&str, Option<&LockToken>)> {
        match self {
            Request::Set { key, lock, .. }
            | Request::Delete { key, lock }
            | Request::Expire { key, lock, .. }
            | Request::Persist { key, lock } => Some((key, lock.as_ref())),
            Request::CompareAndSet { key, .. }
            | Request::Incr { key, .. }
            | Request::Throttle { key, .. } => Some((key, None)),
            _ => None,
        }
    }

    /// For batch writes (`SetMany`, `DeleteMany`): the keys they write, in
    /// order (they carry no lock token, so they wait for every holder).
    pub fn batch_write_keys(&self) -> Option<Box<dyn Iterator<Item = &str> + '_>> {
        match self {
            Request::SetMany { entries, .. } => Some(Box::new(entries.iter().map(|(k, _)| k.as_str()))),
            Request::DeleteMany { keys } => Some(Box::new(keys.iter().map(String::as_str))),
            _ => None,
        }
    }
}

/// The answer to a [`Request`]; each request has one matching variant.
#[derive(Debug)]
#[non_exhaustive]
pub enum Response<V> {
    /// For `Get`: the live value, if any.
    Value(Option<V>),
    /// For `Exists`, `Expire`, `Persist`: the answer.
    Bool(bool),
    /// For `Ttl`: the remaining time to live (`None`: missing key or no expiry).
    Ttl(Option<Duration>),
    /// For `Delete`: whether something was removed, and its value when the backend had it.
    Deleted {
        /// True if a live entry was removed.
        removed: bool,
        /// The removed value (always on memory; on SQLite/Redis when it decodes).
        value: Option<V>,
    },
    /// For `Keys`.
    Keys(Vec<String>),
    /// For `Items`.
    Items(Vec<(String, V)>),
    /// For `Len`.
    Len(usize),
    /// For `Lock`: the grant.
    Locked(LockGrant),
    /// For `CompareAndSet` and `Incr`: the value stored, or `None` if the
    /// comparison failed and nothing was written.
    Written(Option<V>),
    /// The backend has no single step for this request; the caller falls
    /// back to another way (see [`Request::CompareAndSet`]).
    Unsupported,
    /// For `Set`, `SetMany`, `Clear`, `Renew`, `Unlock`, `Shutdown`.
    Done,
    /// For `GetMany`: one live value (or `None`) per key, in the order asked.
    Values(Vec<Option<V>>),
    /// For `DeleteMany`: one answer per key, in the order asked: whether a
    /// live entry was removed, and its value when the backend had it (as
    /// [`Response::Deleted`]).
    DeletedMany(Vec<(bool, Option<V>)>),
    /// For `ScanPage`: the page, and where the next one starts.
    ScanPage {
        /// The page's live entries: each key with its value when the request
        /// asked for values (`None` otherwise).
        entries: Vec<(String, Option<V>)>,
        /// The cursor of the next page; `None` when the scan is over.
        next: Option<String>,
    },
    /// For `Throttle`: the verdict, and the value stored if the check wrote
    /// (an allowed check of cost ≥ 1).
    Throttled {
        /// What the check decided.
        verdict: Throttled,
        /// The new arrival time as stored, if the check wrote it.
        stored: Option<V>,
    },
}

impl<V> Response<V> {
    /// The error for a response that does not match its request (a bug in a custom service).
    pub(crate) fn mismatch(op: &'static str) -> Error {
        Error::backend_msg("stack", format!("service answered `{op}` with the wrong response variant"))
    }
}
