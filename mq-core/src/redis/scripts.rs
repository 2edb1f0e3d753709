//! The Lua scripts that make multi-key steps atomic. Each touches the keys of one queue only
//! (one hash tag), so they also run on Redis Cluster.

use std::sync::LazyLock;

use ::redis::Script;

/// Appends messages to a queue. KEYS: stream, counter. ARGV: store time (ms), then one encoded
/// message each. Returns their offsets. (`string.format('%d')`, not `..`: concatenating a Lua
/// number formats it as a float, slower and wrong above 10^14.)
pub(crate) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local k = #ARGV - 1
local n = redis.call('INCRBY', KEYS[2], k) - k
local offsets = {}
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], string.format('%d-1', n), 'm', ARGV[i], 't', ARGV[1])
  offsets[i - 1] = n
  n = n + 1
end
return offsets
",
    )
});

/// Stores delayed messages of a queue in send order. KEYS: delays, sequence. ARGV: due (ms),
/// then one encoded message each. Each member is prefixed with 16 hex digits of a per-queue
/// sequence, so that members due at the same time leave in the order they came. Returns the
/// size of the set.
pub(crate) static PUT_DELAYED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 2, #ARGV do
  local n = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], ARGV[1], string.format('%016x', n) .. ARGV[i])
end
return redis.call('ZCARD', KEYS[1])
",
    )
});

/// Moves the due members (see `PUT_DELAYED`) of a queue's delay set into its stream, in due order.
/// KEYS: delays, stream, counter. ARGV: now (ms), at most this many.
/// Returns {moved, earliest remaining due or -1}.
pub(crate) static MOVE_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  local n = redis.call('INCR', KEYS[3]) - 1
  redis.call('XADD', KEYS[2], string.format('%d-1', n), 'm', string.sub(m, 17), 't', ARGV[1])
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then
  return {#due, -1}
end
return {#due, tonumber(nxt[2])}
",
    )
});

/// Joins a group. KEYS: members, subscription. ARGV: instance, now (ms), live since (ms),
/// subscription. Returns {0, ""} when joined, {1, ""} if the instance is already live, {2,
/// stored} if live members subscribe differently.
pub(crate) static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf')
for _, m in ipairs(live) do
  if m == ARGV[1] then
    return {1, ''}
  end
end
local stored = redis.call('GET', KEYS[2])
if stored and stored ~= ARGV[4] and #live > 0 then
  return {2, stored}
end
redis.call('SET', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return {0, ''}
",
    )
});

/// Takes or renews a lease. KEYS: lease. ARGV: owner, ttl (ms). Returns 1 if the caller holds it.
pub(crate) static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// Gives a lease up if the caller holds it. KEYS: lease. ARGV: owner.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});
