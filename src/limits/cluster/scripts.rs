//! The Lua scripts: one admission in one round trip, and the renewal of many leases.
//! Both read the time from Redis (`TIME`), so instances' clocks never matter.

use crate::limits::bucket::TICKS_PER_TOKEN;

/// Admits one request. KEYS: user leases, key leases (sorted sets), user rate bucket (hash),
/// this instance's marker (see [`RENEW_LUA`]).
/// ARGV: stream id, lease ttl (ms), user stream limit, key stream limit, rpm (-1: no limit),
/// stream (1/0), has user (1/0), has key (1/0).
/// Returns {0, user streams, key streams} (counts after admission, -1 when not counted),
/// {1} user streams full, {2} key streams full, {3, ms until a token} rate, {4} the marker is
/// missing: Redis lost this instance's leases (a restart, a flush, a failover to a replica that
/// lagged), so its counts are too low to decide on until the leases are written again.
///
/// A stream already holding its lease is admitted again without change: an admission sent a
/// second time (its connection broke after Redis ran it, before the answer came) takes no
/// second token and is not refused by its own lease.
pub(crate) const ADMIT_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[1]
local ttl = tonumber(ARGV[2])
local user_limit = tonumber(ARGV[3])
local key_limit = tonumber(ARGV[4])
local rpm = tonumber(ARGV[5])
local stream = ARGV[6] == '1'
local has_user = ARGV[7] == '1'
local has_key = ARGV[8] == '1'
if redis.call('GET', KEYS[4]) ~= '1' then return {4, 0, 0} end
local users, keys = -1, -1
if stream and (has_user or has_key) then
  local held = (has_user and redis.call('ZSCORE', KEYS[1], member))
    or (has_key and redis.call('ZSCORE', KEYS[2], member))
  if held then
    if has_user then users = redis.call('ZCARD', KEYS[1]) end
    if has_key then keys = redis.call('ZCARD', KEYS[2]) end
    return {0, users, keys}
  end
end
if stream and has_user then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  users = redis.call('ZCARD', KEYS[1])
  if user_limit >= 0 and users >= user_limit then return {1, users, 0} end
end
if stream and has_key then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  keys = redis.call('ZCARD', KEYS[2])
  if key_limit >= 0 and keys >= key_limit then return {2, keys, 0} end
end
if has_user and rpm >= 0 then
  local per_token = 60000
  local cap = rpm * per_token
  local b = redis.call('HMGET', KEYS[3], 't', 'ms')
  local ticks = tonumber(b[1])
  local last = tonumber(b[2])
  if ticks == nil or last == nil then ticks = cap; last = now end
  if now > last then
    ticks = ticks + (now - last) * rpm
    last = now
  end
  if ticks > cap then ticks = cap end
  if ticks < per_token then
    if rpm == 0 then return {3, 60000, 0} end
    return {3, math.ceil((per_token - ticks) / rpm), 0}
  end
  ticks = ticks - per_token
  redis.call('HSET', KEYS[3], 't', ticks, 'ms', last)
  redis.call('PEXPIRE', KEYS[3], math.ceil((cap - ticks) / rpm) + 1000)
end
if stream then
  local expiry = now + ttl
  if has_user then
    redis.call('ZADD', KEYS[1], expiry, member)
    redis.call('PEXPIRE', KEYS[1], 2 * ttl)
    users = users + 1
  end
  if has_key then
    redis.call('ZADD', KEYS[2], expiry, member)
    redis.call('PEXPIRE', KEYS[2], 2 * ttl)
    keys = keys + 1
  end
end
return {0, users, keys}
"#;

/// Renews leases: KEYS[1] is this instance's marker, KEYS[i] (i > 1) a sorted set and
/// ARGV[i + 1] the stream id in it; ARGV[1] the ttl, ARGV[2] what to do with the marker: `0`
/// nothing (a middle call), `1` refresh it only if it is there (the last call of a routine
/// renewal), `2` write it (a recovery in one call), `3` write it as pending (the first call of a
/// recovery in several), `4` make a pending one whole (the last call of such a recovery).
/// A plain ZADD: a lease Redis lost is created again. Returns the number of leases renewed, or
/// -1 when a refresh found the marker gone or a recovery found its pending marker gone (Redis
/// lost its data again between the calls, and the leases of the calls before with it).
///
/// The marker says, when it is `1`, "Redis holds every lease of this instance". Only the
/// recovery writes it, after renewing every lease, so an empty Redis (restarted, flushed) lacks
/// it and `ADMIT_LUA` refuses to count until the leases are back. A routine renewal only
/// refreshes it: its list of leases was read before the call, so a lease admitted meanwhile in a
/// Redis that then restarted would be missing behind a marker it had written.
pub(crate) const RENEW_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], 2 * ttl)
end
local marker = ARGV[2]
if marker == '1' then
  if not redis.call('SET', KEYS[1], '1', 'PX', 2 * ttl, 'XX') then return -1 end
elseif marker == '2' then
  redis.call('SET', KEYS[1], '1', 'PX', 2 * ttl)
elseif marker == '3' then
  redis.call('SET', KEYS[1], '0', 'PX', 2 * ttl)
elseif marker == '4' then
  if redis.call('GET', KEYS[1]) ~= '0' then return -1 end
  redis.call('SET', KEYS[1], '1', 'PX', 2 * ttl)
end
return #KEYS - 1
"#;

const _: () = assert!(TICKS_PER_TOKEN == 60_000, "ADMIT_LUA's per_token is 60000");
