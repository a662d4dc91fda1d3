//! The Lua scripts: each write is one atomic script (one round trip) that
//! checks the key's lock, keeps the deadline index in step, and hands back an
//! expired-but-unclaimed value it replaced, so no expiry is ever lost.
//!
//! Keys (all under the hash tag `{namespace}`, so one cluster slot):
//! `KEYS[1]` value, `KEYS[2]` shadow copy (value kept for the `Expire` event,
//! `PX` = ttl + grace), `KEYS[3]` the deadline index (sorted set, score = ms
//! since the epoch on the server's clock), `KEYS[4]` the key's lock.

use fred::types::scripts::Script;

const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- nil when the write may go ahead; otherwise why not
local function lock_state(lockkey, owner)
  local holder = redis.call('GET', lockkey)
  if owner == '' then
    if holder then return 'LOCKED' end
  elseif holder ~= owner then
    return 'LOST'
  end
  return nil
end
-- claims this key's entry if it is past its deadline and not yet claimed
local function take_expired(shadow, index, member, now)
  local d = redis.call('ZSCORE', index, member)
  if d and tonumber(d) <= now then
    local v = redis.call('GET', shadow)
    redis.call('ZREM', index, member)
    redis.call('DEL', shadow)
    return v or ''
  end
  return false
end
"#;

/// Sets of one or more keys (a batch from concurrent callers, see `batch.rs`).
/// `KEYS[1]` the deadline index, then value, shadow, lock of each set;
/// `ARGV[1]` grace_ms, then owner, member, value, ttl_ms (`''`: none) of each →
/// `{status, expired, status, expired, …}`. Each set is checked and applied on
/// its own, exactly as if it ran alone: one refused by its lock (`LOCKED`,
/// `LOST`) or failing (`ERR`, then the message) does not stop the others.
const SET_MANY: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local index = KEYS[1]
local grace = tonumber(ARGV[1])
local now = false
local function set_one(vkey, skey, lkey, owner, member, value, ttl)
  local holder = redis.call('GET', lkey)
  if owner == '' then
    if holder then return 'LOCKED', false end
  elseif holder ~= owner then
    return 'LOST', false
  end
  -- A key without a deadline has no index entry and no shadow (they are only
  -- ever written together), so a plain set over it is three calls, not six
  -- (measured: the no-TTL set path was ~3x a raw SET in server CPU).
  local d = redis.call('ZSCORE', index, member)
  local expired = false
  if d then
    now = now or now_ms()
    if tonumber(d) <= now then expired = redis.call('GET', skey) or '' end
  end
  if ttl == '' then
    redis.call('SET', vkey, value)
    if d then
      redis.call('DEL', skey)
      redis.call('ZREM', index, member)
    end
  else
    now = now or now_ms()
    ttl = tonumber(ttl)
    -- Both overwrite whatever deadline and shadow the key had.
    redis.call('SET', vkey, value, 'PX', ttl)
    redis.call('SET', skey, value, 'PX', ttl + grace)
    redis.call('ZADD', index, now + ttl, member)
  end
  return 'OK', expired
end
local out = {}
for i = 0, (#ARGV - 1) / 4 - 1 do
  local k, a = 1 + 3 * i, 1 + 4 * i
  local ok, st, expired = pcall(set_one, KEYS[k + 1], KEYS[k + 2], KEYS[k + 3],
    ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
  if not ok then
    expired = type(st) == 'table' and (st.err or st.msg) or tostring(st)
    st = 'ERR'
  end
  out[#out + 1] = st
  out[#out + 1] = expired
end
return out
"#;

/// `ARGV`: owner, member → `{status, expired, removed value}`.
const DELETE: &str = r#"
local now = now_ms()
local st = lock_state(KEYS[4], ARGV[1])
if st then return {st, false, false} end
local expired = take_expired(KEYS[2], KEYS[3], ARGV[2], now)
local v = redis.call('GET', KEYS[1])
if v then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  return {'OK', expired, v}
end
return {'MISSING', expired, false}
"#;

/// `ARGV`: owner, member, ttl_ms, grace_ms → `{status, expired}`.
const EXPIRE: &str = r#"
local now = now_ms()
local st = lock_state(KEYS[4], ARGV[1])
if st then return {st, false} end
local expired = take_expired(KEYS[2], KEYS[3], ARGV[2], now)
local v = redis.call('GET', KEYS[1])
if not v then return {'MISSING', expired} end
local ttl = tonumber(ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], v, 'PX', ttl + tonumber(ARGV[4]))
redis.call('ZADD', KEYS[3], now + ttl, ARGV[2])
return {'OK', expired}
"#;

/// `ARGV`: owner, member → `{status, expired}`.
const PERSIST: &str = r#"
local now = now_ms()
local st = lock_state(KEYS[4], ARGV[1])
if st then return {st, false} end
local expired = take_expired(KEYS[2], KEYS[3], ARGV[2], now)
if redis.call('PERSIST', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  return {'OK', expired}
end
return {'MISSING', expired}
"#;

/// The sweeper's claim. `KEYS[1]` index; `ARGV`: shadow key prefix, limit →
/// `{now, next deadline or false, {member, value-or-false, …}}`.
const CLAIM: &str = r#"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, m in ipairs(due) do
  local shadow = ARGV[1] .. m
  local v = redis.call('GET', shadow)
  redis.call('DEL', shadow)
  redis.call('ZREM', KEYS[1], m)
  out[#out + 1] = m
  out[#out + 1] = v
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {now, nxt[2] or false, out}
"#;

/// `KEYS`: lock, fence counter; `ARGV`: owner, lease_ms → fence, or 0 if held.
const LOCK: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"#;

/// `KEYS`: lock; `ARGV`: owner, lease_ms → 1 if renewed.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// `KEYS`: lock; `ARGV`: owner → 1 if it was released by this call.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Every script, loaded lazily by `EVALSHA` (reloaded after a server restart).
pub(super) struct Scripts {
    pub(super) set_many: Script,
    pub(super) delete: Script,
    pub(super) expire: Script,
    pub(super) persist: Script,
    pub(super) claim: Script,
    pub(super) lock: Script,
    pub(super) renew: Script,
    pub(super) unlock: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_prelude = |body: &str| Script::from_lua(format!("{PRELUDE}{body}"));
        Scripts {
            // Without the prelude: its functions are not used, and each costs a closure per call.
            set_many: Script::from_lua(SET_MANY),
            delete: with_prelude(DELETE),
            expire: with_prelude(EXPIRE),
            persist: with_prelude(PERSIST),
            claim: with_prelude(CLAIM),
            lock: Script::from_lua(LOCK),
            renew: Script::from_lua(RENEW),
            unlock: Script::from_lua(UNLOCK),
        }
    }
}
