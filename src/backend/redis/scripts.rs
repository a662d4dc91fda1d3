//! The Lua scripts (layout version 2, see `layout.rs`): each write is one
//! atomic script on one shard (one hash tag, so legal on a cluster) that
//! checks the key's lock, keeps the shard's deadline index and entry count in
//! step, and hands back an expired-but-unclaimed value it replaced, so no
//! expiry is ever lost or reported twice.
//!
//! Per-key scripts take `KEYS` = value, index, count, lock of one shard.
//! A stored value is a header (`~`, or the deadline in 8 base-64 digits)
//! followed by the codec's bytes; `payload()` strips it.

use fred::types::scripts::Script;

use super::layout::LUA_HEADER;

/// Helpers for the per-key scripts (after [`LUA_HEADER`]).
const PRELUDE: &str = r#"
-- the codec bytes of a stored value whose deadline_of() is d
local function payload(v, d)
  if d then return string.sub(v, 9) end
  if d == false then return string.sub(v, 2) end
  return v
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
-- Tells the shard's sweeper when `member` became the earliest deadline.
local function wake_if_first(idx, member, channel, shard)
  local first = redis.call('ZRANGE', idx, 0, 0)
  if first[1] == member then redis.call('PUBLISH', channel, shard) end
end
"#;

/// Sets of one or more keys (a batch from concurrent callers, see `batch.rs`),
/// grouped by shard.
///
/// For each shard the batch touches, in order: `KEYS` its index, its count,
/// then the value key of each of its sets; `ARGV` (after `ARGV[1]` grace_ms,
/// `''` for none, and `ARGV[2]` the wake channel) its shard number and how
/// many sets follow, then two per set: a spec and the value. The spec is `''`
/// for an unguarded set without TTL, else `<ttl_ms>` and/or `:<owner>`; a
/// store with a time-to-idle adds `/<own_ttl_ms>` after the TTL (`/` alone:
/// no TTL of its own), see [`TOUCH`]: `<ttl_ms>` is then the earlier of the
/// two, and the own TTL's deadline is written to `ld:{tag}:o:<key>` (or that
/// key deleted). The
/// value is the stored bytes (header included) without a TTL, else the codec
/// bytes alone (the script writes the deadline header). A set's member (the
/// user's key) and lock key follow from its value key (`ld:{tag}:v:<key>`,
/// `ld:{tag}:l:<key>`: same hash tag, so the same slot).
///
/// → `{i, status, expired, …}` for every set (numbered from 1 in call order)
/// that did not simply answer `OK` without an expired value.
///
/// Each set is checked and applied on its own, exactly as if it ran alone:
/// one refused by its lock (`LOCKED`, `LOST`) or failing (`ERR`, then the
/// message) does not stop the others. Fixed costs are paid once per batch:
/// one `EXISTS` over the lock keys of every unguarded set, one `TIME`, and one
/// look at each touched shard's earliest deadline to decide whether its
/// sweeper must be woken. Every argument costs the server ~1k instructions
/// (callgrind, Redis 7.0), hence two per set.
const SET_MANY: &str = r#"
local grace, notified, durable = grace_mode(ARGV[1]) -- grace nil: values are kept until claimed
local nargs = #ARGV
-- pass 1: the lock keys of unguarded sets, for one EXISTS
local locks = {}
local k, a = 1, 3
while a <= nargs do
  local n, prefix = tonumber(ARGV[a + 1]), string.sub(KEYS[k], 1, -2)
  local plen = #prefix + 3
  for j = 0, n - 1 do
    if not string.find(ARGV[a + 2 + 2 * j], ':', 1, true) then
      locks[#locks + 1] = prefix .. 'l:' .. string.sub(KEYS[k + 2 + j], plen)
    end
  end
  k, a = k + 2 + n, a + 2 + 2 * n
end
local anylocked = #locks > 0 and redis.call('EXISTS', unpack(locks)) > 0
local now = false
local out, i = {}, 0
k, a = 1, 3
while a <= nargs do
  local idx, cnt, n = KEYS[k], KEYS[k + 1], tonumber(ARGV[a + 1])
  local prefix = string.sub(idx, 1, -2)
  local plen = #prefix + 3
  local first, earliest
  for j = 0, n - 1 do
    i = i + 1
    local vkey, spec, value = KEYS[k + 2 + j], ARGV[a + 2 + 2 * j], ARGV[a + 3 + 2 * j]
    local ttl, owner, st, expired, old, d = false, false, 'OK', false, nil, nil
    local idle, own = false, false
    if spec ~= '' then
      local t = spec
      local c = string.find(spec, ':', 1, true)
      if c then
        owner = string.sub(spec, c + 1)
        t = string.sub(spec, 1, c - 1)
      end
      local s = string.find(t, '/', 1, true)
      if s then
        idle, own = true, tonumber(string.sub(t, s + 1)) or false
        t = string.sub(t, 1, s - 1)
      end
      if t ~= '' then ttl = tonumber(t) end
    end
    if owner then
      if redis.call('GET', prefix .. 'l:' .. string.sub(vkey, plen)) ~= owner then st = 'LOST' end
    elseif anylocked and redis.call('EXISTS', prefix .. 'l:' .. string.sub(vkey, plen)) == 1 then
      st = 'LOCKED'
    end
    if st == 'OK' then
      if not ttl then
        old = redis.pcall('SET', vkey, value, 'GET')
      else
        now = now or now_ms()
        d = now + ttl
        if first == nil then
          local f = redis.call('ZRANGE', idx, 0, 0, 'WITHSCORES')[2]
          first = f and tonumber(f) or false
        end
        if grace then
          old = redis.pcall('SET', vkey, header(d) .. value, 'PX', ttl + grace, 'GET')
        else
          old = redis.pcall('SET', vkey, header(d) .. value, 'GET')
        end
      end
      if old then
        if type(old) == 'table' then
          st, expired, d = 'ERR', old.err or 'error', nil
        else
          local od = deadline_of(old)
          if od then
            now = now or now_ms()
            if od <= now then expired = handover(idx, string.sub(vkey, plen), string.sub(old, 9), durable) end
            if not d then redis.call('ZREM', idx, string.sub(vkey, plen)) end
          end
        end
      else
        -- a new entry; one whose value Redis dropped or evicted is claimed first
        expired = claim_dropped(idx, cnt, string.sub(vkey, plen), grace, notified, durable)
        redis.call('INCR', cnt)
      end
      if d then
        redis.call('ZADD', idx, d, string.sub(vkey, plen))
        if not earliest or d < earliest then earliest = d end
      end
      if idle and st == 'OK' then
        local okey = prefix .. 'o:' .. string.sub(vkey, plen)
        if own then
          now = now or now_ms()
          redis.call('SET', okey, now + own, 'PX', own)
        else
          redis.call('DEL', okey)
        end
      end
    end
    if expired or st ~= 'OK' then
      out[#out + 1] = i
      out[#out + 1] = st
      out[#out + 1] = expired
    end
  end
  -- the shard's earliest deadline moved earlier: wake its sweeper
  if earliest and (not first or earliest < first) then redis.call('PUBLISH', ARGV[2], ARGV[a]) end
  k, a = k + 2 + n, a + 2 + 2 * n
end
return out
"#;

/// `compare_and_set`, `incr` and a rate-limit check in one step. `ARGV`: mode (`absent`, `eq`,
/// `incr` or `gcra`), expected codec bytes (`eq`) or delta (`incr`), smallest and
/// largest allowed result (`incr`), new codec bytes (`absent`, `eq`), ttl_ms
/// (`''`: none), grace_ms (`''`: none), wake channel, shard, member →
/// `{status, expired, bytes}`: `OK` with the stored codec bytes, `NO` (the
/// comparison failed) with the live value's codec bytes or false, `RANGE`
/// (the sum leaves the range), `SLOW` (the stored value is not a JSON
/// integer of at most 15 digits, or the sum passes 2^53: the caller takes
/// the key's lock instead). Unguarded: waits (`LOCKED`) for any lock holder.
///
/// `gcra` (a rate-limit check, see `crate::gcra`): `ARGV[2]` the emission
/// interval, `ARGV[3]` the burst tolerance (both µs), `ARGV[4]` the cost; the
/// server's `TIME` is the clock. The stored value is the theoretical arrival
/// time (µs, a JSON integer); an allowed check of cost ≥ 1 stores the new one
/// with a TTL until it (ms, rounded up) → `OK`, else nothing is written →
/// `NO`; either way the third element is `"<now_us> <stored tat_us or ->"`,
/// from which the caller computes the same verdict. `SLOW`: the live value
/// is not an arrival time.
const WRITE_IF: &str = r#"
local st = lock_state(KEYS[4], '')
if st then return {st, false, false} end
local old = redis.call('GET', KEYS[1])
local now = now_ms()
local od, body, live, expired = nil, false, false, false
if old then
  od = deadline_of(old)
  body = payload(old, od)
  if od and od <= now then expired = body else live = true end
end
local mode, new, ttl, answer = ARGV[1], ARGV[5], ARGV[6], false
if mode == 'gcra' then
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  now = math.floor(now_us / 1000)
  local tat = false
  if live then
    if #body > 16 or not string.find(body, '^%d+$') then return {'SLOW', false, false} end
    tat = tonumber(body)
  end
  answer = string.format('%.0f', now_us) .. ' ' .. (tat and string.format('%.0f', tat) or '-')
  local cost, base = tonumber(ARGV[4]), now_us
  if tat and tat > base then base = tat end
  local nt = base + tonumber(ARGV[2]) * cost
  if cost == 0 or nt > now_us + tonumber(ARGV[3]) then return {'NO', false, answer} end
  new = string.format('%.0f', nt)
  ttl = tostring(math.ceil((nt - now_us) / 1000))
elseif mode == 'incr' then
  local n = 0
  if live then
    if #body > 16 or not string.find(body, '^%-?%d+$') then return {'SLOW', false, false} end
    n = tonumber(body)
  end
  local r = n + tonumber(ARGV[2])
  if math.abs(n) > 999999999999999 or math.abs(r) > 9007199254740992 then return {'SLOW', false, false} end
  if r < tonumber(ARGV[3]) or r > tonumber(ARGV[4]) then return {'RANGE', false, false} end
  new = string.format('%.0f', r)
elseif mode == 'absent' then
  if live then return {'NO', false, body} end
elseif not live or body ~= ARGV[2] then
  return {'NO', false, live and body}
end
local member, d = ARGV[10], false
local grace, notified, durable = grace_mode(ARGV[7])
if ttl == '' then
  redis.call('SET', KEYS[1], '~' .. new)
else
  ttl = tonumber(ttl)
  d = now + ttl
  if not grace then
    redis.call('SET', KEYS[1], header(d) .. new)
  else
    redis.call('SET', KEYS[1], header(d) .. new, 'PX', ttl + grace)
  end
end
if not old then
  -- a new entry; one whose value Redis dropped or evicted is claimed first
  expired = claim_dropped(KEYS[2], KEYS[3], member, grace, notified, durable)
  redis.call('INCR', KEYS[3])
elseif od and not d then
  redis.call('ZREM', KEYS[2], member)
end
if d then
  redis.call('ZADD', KEYS[2], d, member)
  wake_if_first(KEYS[2], member, ARGV[8], ARGV[9])
end
return {'OK', handover(KEYS[2], member, expired, durable), answer or new}
"#;

/// `ARGV`: owner, member, grace mode → `{status, expired, removed value}`.
const DELETE: &str = r#"
local st = lock_state(KEYS[4], ARGV[1])
if st then return {st, false, false} end
local old = redis.call('GET', KEYS[1])
if not old then return {'MISSING', claim_dropped(KEYS[2], KEYS[3], ARGV[2], grace_mode(ARGV[3])), false} end
redis.call('DEL', KEYS[1])
redis.call('DECR', KEYS[3])
local od = deadline_of(old)
if od then
  redis.call('ZREM', KEYS[2], ARGV[2])
  if od <= now_ms() then
    return {'MISSING', handover(KEYS[2], ARGV[2], payload(old, od), select(3, grace_mode(ARGV[3]))), false}
  end
end
return {'OK', false, payload(old, od)}
"#;

/// Unguarded deletes of many keys (`delete_many`), grouped by shard as in
/// [`SET_MANY`]: for each shard, `KEYS` its index, its count, then the value
/// key of each delete; `ARGV[1]` the grace mode, then per shard how many
/// deletes follow → `{status, expired, removed value}` for every delete, in
/// call order. Each is checked and applied on its own, as [`DELETE`] does it:
/// `LOCKED` (another owner holds its lock: nothing done), `MISSING` or `OK`.
const DELETE_MANY: &str = r#"
local grace, notified, durable = grace_mode(ARGV[1])
local now = false
local out = {}
local k = 1
for a = 2, #ARGV do
  local idx, cnt, n = KEYS[k], KEYS[k + 1], tonumber(ARGV[a])
  local prefix = string.sub(idx, 1, -2)
  local plen = #prefix + 3
  for j = 0, n - 1 do
    local vkey = KEYS[k + 2 + j]
    local member = string.sub(vkey, plen)
    local st, expired, removed = 'OK', false, false
    if redis.call('EXISTS', prefix .. 'l:' .. member) == 1 then
      st = 'LOCKED'
    else
      local old = redis.call('GET', vkey)
      if not old then
        st, expired = 'MISSING', claim_dropped(idx, cnt, member, grace, notified, durable)
      else
        redis.call('DEL', vkey)
        redis.call('DECR', cnt)
        local od = deadline_of(old)
        if od then
          redis.call('ZREM', idx, member)
          now = now or now_ms()
          if od <= now then st, expired = 'MISSING', handover(idx, member, payload(old, od), durable) end
        end
        if st == 'OK' then removed = payload(old, od) end
      end
    end
    out[#out + 1] = st
    out[#out + 1] = expired
    out[#out + 1] = removed
  end
  k = k + 2 + n
end
return out
"#;

/// `ARGV`: owner, member, ttl_ms, grace mode, wake channel, shard, and with
/// a time-to-idle the TTL of its own (`ttl_ms` is then the earlier of it and
/// the time-to-idle; its deadline goes to `ld:{tag}:o:<key>`) → `{status, expired}`.
const EXPIRE: &str = r#"
local st = lock_state(KEYS[4], ARGV[1])
if st then return {st, false} end
local old = redis.call('GET', KEYS[1])
local grace, notified, durable = grace_mode(ARGV[4])
if not old then return {'MISSING', claim_dropped(KEYS[2], KEYS[3], ARGV[2], grace, notified, durable)} end
local od = deadline_of(old)
local now = now_ms()
if od and od <= now then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('DECR', KEYS[3])
  return {'MISSING', handover(KEYS[2], ARGV[2], payload(old, od), durable)}
end
local ttl = tonumber(ARGV[3])
local d = now + ttl
if not grace then
  redis.call('SET', KEYS[1], header(d) .. payload(old, od))
else
  redis.call('SET', KEYS[1], header(d) .. payload(old, od), 'PX', ttl + grace)
end
redis.call('ZADD', KEYS[2], d, ARGV[2])
wake_if_first(KEYS[2], ARGV[2], ARGV[5], ARGV[6])
if ARGV[7] and ARGV[7] ~= '' then
  local own = tonumber(ARGV[7])
  redis.call('SET', string.sub(KEYS[2], 1, -2) .. 'o:' .. ARGV[2], now + own, 'PX', own)
end
return {'OK', false}
"#;

/// `ARGV`: owner, member, grace mode, and with a time-to-idle its ms (the
/// entry keeps that deadline from now; `MISSING` if it had no TTL of its
/// own, see [`TOUCH`]) → `{status, expired}`.
const PERSIST: &str = r#"
local st = lock_state(KEYS[4], ARGV[1])
if st then return {st, false} end
local old = redis.call('GET', KEYS[1])
if not old then return {'MISSING', claim_dropped(KEYS[2], KEYS[3], ARGV[2], grace_mode(ARGV[3]))} end
local od = deadline_of(old)
if not od then return {'MISSING', false} end
if ARGV[4] and ARGV[4] ~= '' then
  local now = now_ms()
  if od <= now then
    redis.call('ZREM', KEYS[2], ARGV[2])
    redis.call('DEL', KEYS[1])
    redis.call('DECR', KEYS[3])
    return {'MISSING', handover(KEYS[2], ARGV[2], payload(old, od), select(3, grace_mode(ARGV[3])))}
  end
  if redis.call('DEL', string.sub(KEYS[2], 1, -2) .. 'o:' .. ARGV[2]) == 0 then return {'MISSING', false} end
  local idle, grace = tonumber(ARGV[4]), grace_mode(ARGV[3])
  local d = now + idle
  if not grace then
    redis.call('SET', KEYS[1], header(d) .. payload(old, od))
  else
    redis.call('SET', KEYS[1], header(d) .. payload(old, od), 'PX', idle + grace)
  end
  redis.call('ZADD', KEYS[2], d, ARGV[2])
  return {'OK', false}
end
redis.call('ZREM', KEYS[2], ARGV[2])
if od <= now_ms() then
  redis.call('DEL', KEYS[1])
  redis.call('DECR', KEYS[3])
  return {'MISSING', handover(KEYS[2], ARGV[2], payload(old, od), select(3, grace_mode(ARGV[3])))}
end
redis.call('SET', KEYS[1], '~' .. payload(old, od))
return {'OK', false}
"#;

/// Time-to-idle: an access (`get`, `exists`) in one step. `KEYS`: value,
/// index, own-deadline key (`ld:{tag}:o:<key>`); `ARGV`: time-to-idle ms,
/// slack ms, grace ms (`''`: none), member → the stored value (header
/// included; nil if missing or past its deadline).
///
/// A live entry's deadline moves to now + time-to-idle on the server's
/// clock, never past the deadline of its own TTL (`ld:{tag}:o:<key>`,
/// written by the sets and expires that gave it one), unless it would move
/// by at most `slack` ms: then nothing is written. The header, the index and
/// (with a grace period) the value's `PX` move together, so every process
/// and the sweepers see the new deadline. A later deadline never wakes a
/// sweeper (one that wakes at the old deadline finds nothing due).
const TOUCH: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local d = deadline_of(v)
if not d then return v end
local now = now_ms()
if d <= now then return false end
local target = now + tonumber(ARGV[1])
local own = redis.call('GET', KEYS[3])
if own then target = math.min(target, tonumber(own)) end
if target <= d + tonumber(ARGV[2]) then return v end
local nv = header(target) .. string.sub(v, 9)
local grace = tonumber(ARGV[3])
if grace then
  redis.call('SET', KEYS[1], nv, 'PX', target - now + grace)
else
  redis.call('SET', KEYS[1], nv)
end
redis.call('ZADD', KEYS[2], target, ARGV[4])
return nv
"#;

/// The sweeper's claim on one shard. `KEYS`: index, count, then the pending
/// set, records and attempts; `ARGV`: value key prefix, limit, mode, lease_ms,
/// max attempts → `{now_ms, next due time or false, {member, claimed, …},
/// due, {id, attempt, member, codec bytes, …}, abandoned}`.
///
/// At most once: each due entry's claimed is the expired value's codec bytes,
/// or what `claim_dropped` answered for an entry whose value is gone (0:
/// expired without its value, 1: evicted). An index entry whose value was
/// re-set without a deadline is removed and not reported. `due` is how many
/// index entries were due (the limit: call again).
///
/// At least once (mode `d…`): due entries go to the pending set instead;
/// then up to `limit` pending expirations whose lease ran out (new ones,
/// failed ones, those of a claimer that died) are leased to the caller for
/// `lease_ms` with their attempt counted up, or dropped (`abandoned`) once
/// delivered `max attempts` times. The next due time covers both sets.
const CLAIM: &str = r#"
local now = now_ms()
local grace, notified, durable = grace_mode(ARGV[3])
local limit = tonumber(ARGV[2])
local prefix = string.sub(KEYS[1], 1, -2)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, m in ipairs(due) do
  local vkey = ARGV[1] .. m
  local v = redis.call('GET', vkey)
  if not v then
    local r = claim_dropped(KEYS[1], KEYS[2], m, grace, notified, durable)
    if r then
      out[#out + 1] = m
      out[#out + 1] = r
    end
  else
    redis.call('ZREM', KEYS[1], m)
    local od = deadline_of(v)
    if od and od <= now then
      redis.call('DEL', vkey)
      redis.call('DECR', KEYS[2])
      if durable then
        hold(prefix, m, string.sub(v, 9))
      else
        out[#out + 1] = m
        out[#out + 1] = string.sub(v, 9)
      end
    end
  end
end
local leased, abandoned = {}, 0
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
if durable then
  local lease, most = tonumber(ARGV[4]), tonumber(ARGV[5])
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit)) do
    local rec = redis.call('HGET', KEYS[4], id)
    local a = tonumber(redis.call('HGET', KEYS[5], id) or '0')
    if not rec or a >= most then
      redis.call('ZREM', KEYS[3], id)
      redis.call('HDEL', KEYS[4], id)
      redis.call('HDEL', KEYS[5], id)
      if rec then abandoned = abandoned + 1 end
    else
      redis.call('HSET', KEYS[5], id, a + 1)
      redis.call('ZADD', KEYS[3], now + lease, id)
      local c = string.find(rec, ':', 1, true)
      local n = tonumber(string.sub(rec, 1, c - 1))
      leased[#leased + 1] = id
      leased[#leased + 1] = a + 1
      leased[#leased + 1] = string.sub(rec, c + 1, c + n)
      leased[#leased + 1] = string.sub(rec, c + n + 1)
    end
  end
  local p = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2]
  if p and (not nxt or tonumber(p) < tonumber(nxt)) then nxt = p end
end
return {now, nxt or false, out, #due, leased, abandoned}
"#;

/// Settles leased expirations of one shard (`at_least_once`). `KEYS`: the
/// pending set, records, attempts; `ARGV`: wake channel, shard, then
/// `id, attempt, ok` for each. An acknowledged one (`ok` = 1) is dropped; a
/// failed one is made due at once (and the shard's sweeper woken). Either
/// only if it is still at that attempt: a lease that ran out and was taken
/// by another instance is that instance's now.
const SETTLE: &str = r#"
local now, retry = now_ms(), false
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[3], id) == ARGV[i + 1] then
    if ARGV[i + 2] == '1' then
      redis.call('ZREM', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
    else
      redis.call('ZADD', KEYS[1], now, id)
      retry = true
    end
  end
end
if retry then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return 0
"#;

/// `KEYS`: lock, fence counter, the lock's fence; `ARGV`: owner, lease_ms → fence, or 0 if held.
/// The fence is at least the server time in µs, so it never goes backwards,
/// even after a failover lost the counter's last increments. It is also kept
/// next to the lock, as long as the lock, for operators (`livedict locks`).
const LOCK: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local f = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, floor)
  redis.call('SET', KEYS[2], string.format('%.0f', f))
  redis.call('SET', KEYS[3], string.format('%.0f', f), 'PX', ARGV[2])
  return f
end
return 0
"#;

/// `KEYS`: lock, the lock's fence; `ARGV`: owner, lease_ms → 1 if renewed.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"#;

/// The eviction handler, for a value key Redis evicted. `KEYS`: value,
/// index, count; `ARGV`: member → what to report: 0 (an entry past its
/// deadline: expired, without its value) or 1 (evicted). The entry is
/// counted out; its index entry is removed unless the key was set again
/// since (then the index entry is the new value's).
const EVICTED: &str = r#"
redis.call('DECR', KEYS[3])
local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
if s and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  if tonumber(s) <= now_ms() then return 0 end
end
return 1
"#;

/// Rebuilds part of an evicted deadline index from the values' headers.
/// `KEYS`: index, then value keys; `ARGV`: their members → how many were indexed.
const REINDEX: &str = r#"
local n = 0
for i = 2, #KEYS do
  local v = redis.call('GET', KEYS[i])
  local d = v and deadline_of(v)
  if d then
    n = n + redis.call('ZADD', KEYS[1], 'NX', d, ARGV[i - 1])
  end
end
return n
"#;

/// `KEYS`: lock, the lock's fence; `ARGV`: owner → 1 if it was released by this call.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Sweeper membership. `KEYS`: the sweepers hash; `ARGV`: this instance's
/// id, lease_ms, `1` to leave → `{seconds, microseconds, live id, …}`.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
if ARGV[3] == '1' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], now + lease)
end
local out = {t[1], t[2]}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = all[i]
  end
end
redis.call('PEXPIRE', KEYS[1], lease * 10)
return out
"#;

/// The layout check at open. `KEYS`: the layout key, then the version-1
/// index and fence keys of the namespace; `ARGV`: this layout's descriptor →
/// `{'OK'}`, `{'OTHER', descriptor}` or `{'V1'}` (the namespace holds data of
/// the old, one-slot layout).
const LAYOUT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  if cur == ARGV[1] then return {'OK'} end
  return {'OTHER', cur}
end
if redis.call('EXISTS', KEYS[2], KEYS[3]) > 0 then return {'V1'} end
redis.call('SET', KEYS[1], ARGV[1])
return {'OK'}
"#;

/// Every script, loaded lazily by `EVALSHA` (reloaded after a server restart).
pub(super) struct Scripts {
    pub(super) set_many: Script,
    pub(super) delete: Script,
    pub(super) delete_many: Script,
    pub(super) expire: Script,
    pub(super) persist: Script,
    pub(super) touch: Script,
    pub(super) write_if: Script,
    pub(super) claim: Script,
    pub(super) settle: Script,
    pub(super) evicted: Script,
    pub(super) reindex: Script,
    pub(super) lock: Script,
    pub(super) renew: Script,
    pub(super) unlock: Script,
    pub(super) heartbeat: Script,
    pub(super) layout: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_prelude = |body: &str| Script::from_lua(format!("{LUA_HEADER}{PRELUDE}{body}"));
        Scripts {
            set_many: Script::from_lua(format!("{LUA_HEADER}{SET_MANY}")),
            delete: with_prelude(DELETE),
            delete_many: with_prelude(DELETE_MANY),
            expire: with_prelude(EXPIRE),
            persist: with_prelude(PERSIST),
            touch: Script::from_lua(format!("{LUA_HEADER}{TOUCH}")),
            write_if: with_prelude(WRITE_IF),
            claim: Script::from_lua(format!("{LUA_HEADER}{CLAIM}")),
            settle: Script::from_lua(format!("{LUA_HEADER}{SETTLE}")),
            evicted: Script::from_lua(format!("{LUA_HEADER}{EVICTED}")),
            reindex: Script::from_lua(format!("{LUA_HEADER}{REINDEX}")),
            lock: Script::from_lua(LOCK),
            renew: Script::from_lua(RENEW),
            unlock: Script::from_lua(UNLOCK),
            heartbeat: Script::from_lua(HEARTBEAT),
            layout: Script::from_lua(LAYOUT),
        }
    }
}
