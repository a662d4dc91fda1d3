//! The key layout (version 2): a namespace split into shards, each its own
//! hash tag, and the format of a stored value.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `ld:{ns}:layout` | string | `v2 shards=<S>`: the layout version and shard count, written once |
//! | `ld:{<tag>}:v:<key>` | string | header + codec-encoded value (`PX` = TTL + grace only with `grace_ms`) |
//! | `ld:{<tag>}:d` | sorted set | key → deadline (ms since the epoch, server clock), TTL'd entries only |
//! | `ld:{<tag>}:n` | integer | entries stored in the shard (live or expired-unclaimed) |
//! | `ld:{<tag>}:l:<key>` | string | lock owner token, `PX` = the lease |
//! | `ld:{<tag>}:lf:<key>` | string | the held lock's fence, `PX` = the lease (for `livedict locks`) |
//! | `ld:{<tag>}:o:<key>` | string | with `time_to_idle`: the deadline of the entry's own TTL, `PX` = that TTL (absent: none) |
//! | `ld:{<tag>}:f` | integer | the shard's fencing counter |
//! | `ld:{<tag>}:p` | sorted set | `expire_delivery=at_least_once`: pending expiration id → when it may be delivered (again): its lease's end |
//! | `ld:{<tag>}:pv` | hash | pending expiration id → `<member length>:<member><codec bytes>` |
//! | `ld:{<tag>}:pa` | hash | pending expiration id → deliveries so far |
//! | `ld:{<tag>}:ps` | integer | the shard's pending id counter |
//! | `ld:{ns}:sweepers` | hash | instance id → heartbeat deadline (which instance sweeps which shard) |
//! | `ld:{ns}:wake` | pub/sub channel | shard numbers whose earliest deadline moved earlier |
//! | `ld:{ns}:events` | pub/sub channel | shared events (`share_events=true`) |
//!
//! A key's shard is `fnv1a64(key) % S`. Shard `s`'s tag is `<ns>:<s>:<n>`,
//! where `n` is the smallest number that puts the tag's cluster slot in the
//! `s`-th of `S` equal ranges of the 16384 slots: the shards tile the slot
//! space evenly, so every master of a cluster (which owns contiguous slot
//! ranges) holds its share of every namespace.
//!
//! # Stored values
//!
//! A value is one string: a header, then the codec's bytes. The header is
//! `~` for an entry without a deadline, or the deadline (ms since the epoch,
//! server clock) as 8 characters of [`ALPHABET`] (base 64, most significant
//! first). Keeping the deadline beside the value lets a plain `GET` decide
//! liveness (against [`ServerClock`](super::clock::ServerClock)) while the value
//! itself outlives its deadline until a sweeper claims it, for the `Expire` event.

use std::fmt::Write as _;

/// The layout version this code reads and writes.
pub(super) const VERSION: u32 = 2;

/// Cluster hash slots.
const SLOTS: u32 = 16384;

/// Base-64 digits of a deadline, in ASCII order (so headers sort like deadlines).
#[cfg(test)]
pub(super) const ALPHABET: &[u8; 64] = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

/// The header byte of an entry without a deadline.
pub(super) const NO_DEADLINE: u8 = b'~';

/// Digits of a deadline header.
pub(super) const DEADLINE_DIGITS: usize = 8;

/// Most shards a namespace may have.
pub const MAX_SHARDS: u16 = 1024;

/// The key names of one shard.
#[derive(Debug)]
pub(super) struct Shard {
    /// `ld:{tag}:`
    prefix: String,
    /// `ld:{tag}:v:`
    pub(super) value_prefix: String,
    pub(super) index: String,
    pub(super) count: String,
    pub(super) fence: String,
    /// Pending expirations (`at_least_once`): ids by lease end, their records, their attempts.
    pub(super) pending: [String; 3],
    /// The cluster hash slot of the shard's tag.
    pub(super) slot: u16,
}

impl Shard {
    fn new(tag: &str) -> Shard {
        let prefix = format!("ld:{{{tag}}}:");
        Shard {
            slot: fred::util::redis_keyslot(tag.as_bytes()),
            value_prefix: format!("{prefix}v:"),
            index: format!("{prefix}d"),
            count: format!("{prefix}n"),
            fence: format!("{prefix}f"),
            pending: [format!("{prefix}p"), format!("{prefix}pv"), format!("{prefix}pa")],
            prefix,
        }
    }

    pub(super) fn value(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.value_prefix.len() + key.len());
        s.push_str(&self.value_prefix);
        s.push_str(key);
        s
    }

    /// With `time_to_idle`: the key holding the deadline of `key`'s own TTL.
    pub(super) fn own_deadline(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 2 + key.len());
        s.push_str(&self.prefix);
        s.push_str("o:");
        s.push_str(key);
        s
    }

    /// `ld:{tag}:lf:<key>`: the fence of the lock held on `key`, kept as long as the lock.
    pub(super) fn lock_fence(&self, key: &str) -> String {
        format!("{}lf:{key}", self.prefix)
    }

    pub(super) fn lock(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 2 + key.len());
        s.push_str(&self.prefix);
        s.push_str("l:");
        s.push_str(key);
        s
    }
}

/// Every key name of one namespace.
#[derive(Debug)]
pub(super) struct Layout {
    pub(super) shards: Vec<Shard>,
    /// `ld:{ns}:`
    pub(super) prefix: String,
    pub(super) layout_key: String,
    pub(super) sweepers: String,
    pub(super) wake: String,
    pub(super) events: String,
    /// `SCAN MATCH` pattern of every value key of the namespace (`ld:{<ns>:*`;
    /// it also matches namespaces that extend this one's name with `:`, which
    /// [`parse_value_key`](Self::parse_value_key) drops).
    pub(super) scan_pattern: String,
    /// Shard number by hash tag.
    by_tag: std::collections::HashMap<String, usize>,
}

impl Layout {
    /// The layout of `namespace` with `shards` shards (1..=[`MAX_SHARDS`]).
    pub(super) fn new(namespace: &str, shards: u16) -> Layout {
        let prefix = format!("ld:{{{namespace}}}:");
        let tags: Vec<String> = (0..u32::from(shards)).map(|s| shard_tag(namespace, s, shards)).collect();
        Layout {
            shards: tags.iter().map(|t| Shard::new(t)).collect(),
            by_tag: tags.into_iter().enumerate().map(|(i, t)| (t, i)).collect(),
            // Namespaces hold no glob characters (checked by the config).
            scan_pattern: format!("ld:{{{namespace}:*"),
            layout_key: format!("{prefix}layout"),
            sweepers: format!("{prefix}sweepers"),
            wake: format!("{prefix}wake"),
            events: format!("{prefix}events"),
            prefix,
        }
    }

    /// The shard number of `key`.
    pub(super) fn shard_of(&self, key: &str) -> usize {
        (fnv1a(key.as_bytes()) % self.shards.len() as u64) as usize
    }

    /// For the full name of a value key of this namespace: its shard and the user's key.
    pub(super) fn parse_value_key<'k>(&self, full: &'k str) -> Option<(usize, &'k str)> {
        let (shard, rest) = self.parse_shard_key(full)?;
        Some((shard, rest.strip_prefix("v:")?))
    }

    /// For the full name of any key of one of this namespace's shards: the
    /// shard and the rest of the name after `ld:{<tag>}:` (`v:<key>`, `d`,
    /// `n`, `l:<key>`, `f`).
    pub(super) fn parse_shard_key<'k>(&self, full: &'k str) -> Option<(usize, &'k str)> {
        let rest = full.strip_prefix("ld:{")?;
        let (tag, rest) = rest.split_once('}')?;
        Some((*self.by_tag.get(tag)?, rest.strip_prefix(':')?))
    }

    /// The shard of `key`.
    pub(super) fn shard(&self, key: &str) -> &Shard {
        &self.shards[self.shard_of(key)]
    }

    /// What the layout key holds for this layout.
    pub(super) fn descriptor(&self) -> String {
        format!("v{VERSION} shards={}", self.shards.len())
    }
}

/// The hash tag of shard `s` of `shards`: `<ns>:<s>:<n>` with the smallest
/// `n` whose slot lies in the shard's part of the slot space.
fn shard_tag(namespace: &str, s: u32, shards: u16) -> String {
    let shards = u32::from(shards);
    let (lo, hi) = (s * SLOTS / shards, (s + 1) * SLOTS / shards);
    let mut tag = String::with_capacity(namespace.len() + 12);
    // Each try lands in the range with probability (hi - lo) / 16384 >= 1 / MAX_SHARDS;
    // the bound is far beyond what any (namespace, shard) needs.
    for n in 0..1_000_000u32 {
        tag.clear();
        let _ = write!(tag, "{namespace}:{s}:{n}");
        let slot = u32::from(fred::util::redis_keyslot(tag.as_bytes()));
        if (lo..hi).contains(&slot) {
            return tag;
        }
    }
    tag
}

/// FNV-1a, 64 bits: a stable hash (the same in every process, version and language).
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Writes the header of a value with deadline `deadline_ms` (or none) into `out`
/// (the scripts write headers; this twin checks them in tests).
#[cfg(test)]
pub(super) fn push_header(out: &mut Vec<u8>, deadline_ms: Option<u64>) {
    match deadline_ms {
        None => out.push(NO_DEADLINE),
        Some(d) => {
            for i in (0..DEADLINE_DIGITS).rev() {
                out.push(ALPHABET[((d >> (6 * i)) & 63) as usize]);
            }
        }
    }
}

/// A stored value split into its deadline (`None`: no deadline) and its codec bytes.
/// `None` when the bytes do not start with a valid header.
pub(super) fn split_value(stored: &[u8]) -> Option<(Option<u64>, &[u8])> {
    match stored.first()? {
        &NO_DEADLINE => Some((None, &stored[1..])),
        _ => {
            let digits = stored.get(..DEADLINE_DIGITS)?;
            let mut d: u64 = 0;
            for &c in digits {
                d = (d << 6) | digit(c)?;
            }
            Some((Some(d), &stored[DEADLINE_DIGITS..]))
        }
    }
}

fn digit(c: u8) -> Option<u64> {
    Some(match c {
        b'-' => 0,
        b'0'..=b'9' => u64::from(c - b'0') + 1,
        b'A'..=b'Z' => u64::from(c - b'A') + 11,
        b'_' => 37,
        b'a'..=b'z' => u64::from(c - b'a') + 38,
        _ => return None,
    })
}

/// The Lua twin of [`split_value`] and the header writer, shared by the scripts.
pub(super) const LUA_HEADER: &str = r#"
local ALPHA = '-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz'
-- deadline of a stored value (false: none), or nil if it has no valid header
local function deadline_of(v)
  local c = string.byte(v, 1)
  if c == 126 then return false end
  local d = 0
  for i = 1, 8 do
    if not c then return nil end
    local x
    if c >= 48 and c <= 57 then x = c - 47
    elseif c >= 97 and c <= 122 then x = c - 59
    elseif c >= 65 and c <= 90 then x = c - 54
    elseif c == 45 then x = 0
    elseif c == 95 then x = 37
    else return nil end
    d = d * 64 + x
    c = string.byte(v, i + 1)
  end
  return d
end
local function header(d)
  local b = {}
  for i = 8, 1, -1 do
    local x = d % 64
    b[i] = string.byte(ALPHA, x + 1)
    d = (d - x) / 64
  end
  return string.char(unpack(b))
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The grace period (ms; nil: none), whether the eviction handler reports
-- evictions, and whether expirations are leased (at_least_once), from a
-- mode argument: ['d']['n']['<grace>'].
local function grace_mode(a)
  local durable, notified = false, false
  if string.byte(a, 1) == 100 then durable, a = true, string.sub(a, 2) end
  if string.byte(a, 1) == 110 then notified, a = true, string.sub(a, 2) end
  return tonumber(a), notified, durable
end
-- at_least_once: an expiration goes to its shard's pending set, due at
-- once, for the sweeper to lease and deliver (with `body`, the codec bytes,
-- '' when the value is gone). `prefix` is the shard's `ld:{tag}:`.
local function hold(prefix, member, body)
  local id = redis.call('INCR', prefix .. 'ps')
  redis.call('HSET', prefix .. 'pv', id, #member .. ':' .. member .. body)
  redis.call('ZADD', prefix .. 'p', now_ms(), id)
end
-- What a write reports of an expired value it found: the value, or (durable)
-- nothing, the expiration being held for the sweeper. `idx` is the shard's index key.
local function handover(idx, member, body, durable)
  if durable and type(body) == 'string' then
    hold(string.sub(idx, 1, -2), member, body)
    return false
  end
  return body
end
-- A TTL'd entry whose value is gone (Redis dropped it past deadline + grace,
-- or evicted it): its index entry is claimed here (durable: an expired one
-- is held for the sweeper, and false returned). Returns what to report:
-- 0 (expired, without its value: its Redis TTL ran out), 1 (evicted,
-- without its value) or false (nothing: no such entry, or the eviction
-- handler reports it and counts it out).
local function claim_dropped(idx, cnt, member, grace, notified, durable)
  local s = redis.call('ZSCORE', idx, member)
  if not s then return false end
  redis.call('ZREM', idx, member)
  -- dropped by its Redis TTL (deadline + grace), else evicted at some point
  local expired = grace and now_ms() >= tonumber(s) + grace
  if notified and not expired then return false end
  redis.call('DECR', cnt)
  if expired then
    if durable then
      hold(string.sub(idx, 1, -2), member, '')
      return false
    end
    return 0
  end
  return 1
end
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_sort_like_deadlines() {
        for d in [0u64, 1, 63, 64, 1_764_430_000_123, (1 << 48) - 1] {
            let mut v = Vec::new();
            push_header(&mut v, Some(d));
            assert_eq!(v.len(), DEADLINE_DIGITS);
            v.extend_from_slice(b"{\"a\":1}");
            assert_eq!(split_value(&v), Some((Some(d), &b"{\"a\":1}"[..])));
        }
        let mut a = Vec::new();
        let mut b = Vec::new();
        push_header(&mut a, Some(1_000));
        push_header(&mut b, Some(1_001));
        assert!(a < b);
        let mut n = Vec::new();
        push_header(&mut n, None);
        n.extend_from_slice(b"42");
        assert_eq!(split_value(&n), Some((None, &b"42"[..])));
        assert_eq!(split_value(b""), None);
        assert_eq!(split_value(b"not json"), None);
        assert_eq!(split_value(b"short"), None);
    }

    #[test]
    fn shards_tile_the_slot_space() {
        for shards in [1u16, 3, 16, 64] {
            let layout = Layout::new("orders", shards);
            let mut slots: Vec<u32> = layout
                .shards
                .iter()
                .map(|s| {
                    let tag = &s.prefix[s.prefix.find('{').unwrap() + 1..s.prefix.find('}').unwrap()];
                    u32::from(fred::util::redis_keyslot(tag.as_bytes()))
                })
                .collect();
            for (i, slot) in slots.iter().enumerate() {
                let i = i as u32;
                let n = u32::from(shards);
                assert!((i * SLOTS / n..(i + 1) * SLOTS / n).contains(slot));
            }
            slots.dedup();
            assert_eq!(slots.len(), usize::from(shards));
        }
    }

    #[test]
    fn keys_spread_over_shards_stably() {
        let layout = Layout::new("ns", 16);
        let mut per = [0usize; 16];
        for i in 0..16_000 {
            per[layout.shard_of(&format!("key:{i}"))] += 1;
        }
        assert!(per.iter().all(|&n| n > 800), "{per:?}");
        assert_eq!(layout.shard_of("user:1"), Layout::new("other", 16).shard_of("user:1"));
    }
}
