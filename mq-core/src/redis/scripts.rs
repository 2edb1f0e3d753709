//! The Lua scripts that make multi-key steps atomic. Each touches the keys of one queue only
//! (one hash tag), so they also run on Redis Cluster.

use std::sync::LazyLock;

use ::redis::Script;

/// Offsets per bucket of a queue's lookup index (see [`LOOKUP`]).
pub(crate) const LOOKUP_BUCKET: u64 = 65_536;

/// The Lua functions the storing scripts use to index a message for lookups by id and key.
/// The index of a queue is a sorted set per bucket of [`LOOKUP_BUCKET`] offsets, named
/// `<base><bucket>` where the base is the queue's lookup key (same hash tag, so the same
/// Redis Cluster slot as the stream); its members, all scored 0 so that they sort by bytes,
/// are `i<id>\0<offset>` and `k<key>\0<offset>` with the offset as 16 hex digits. A queue's
/// delayed messages have an index of their own while they wait (see [`PUT_DELAYED`]), whose
/// members end in their due time, sequence and schedule time instead of an offset.
///
/// The id and keys are read from the head of the envelope, a MessagePack array whose first
/// fields are id, topic, tag (nil or a string) and keys (an array of strings): a few bytes
/// parsed here, the body never touched (Redis's `cmsgpack` cannot decode the `bin` body, and
/// would copy it).
const LOOKUP: &str = r"
local function len_at(b, p, width)
  local n = 0
  for i = 1, width do
    n = n * 256 + string.byte(b, p + i)
  end
  return n
end
local function str_at(b, p)
  local t = string.byte(b, p)
  if t == 0xc0 then
    return nil, p + 1
  end
  local n, skip
  if t >= 0xa0 and t <= 0xbf then
    n, skip = t - 0xa0, 1
  elseif t == 0xd9 then
    n, skip = len_at(b, p, 1), 2
  elseif t == 0xda then
    n, skip = len_at(b, p, 2), 3
  elseif t == 0xdb then
    n, skip = len_at(b, p, 4), 5
  else
    error('lookup index: the envelope holds MessagePack type ' .. t .. ' where a string belongs')
  end
  return string.sub(b, p + skip, p + skip + n - 1), p + skip + n
end
local function array_at(b, p)
  local t = string.byte(b, p)
  if t >= 0x90 and t <= 0x9f then
    return t - 0x90, p + 1
  elseif t == 0xdc then
    return len_at(b, p, 2), p + 3
  elseif t == 0xdd then
    return len_at(b, p, 4), p + 5
  end
  error('lookup index: the envelope holds MessagePack type ' .. t .. ' where an array belongs')
end
local function tokens(blob)
  local _, p = array_at(blob, 1)
  local id
  id, p = str_at(blob, p)
  _, p = str_at(blob, p)
  _, p = str_at(blob, p)
  local keys
  keys, p = array_at(blob, p)
  local out = {'i' .. id .. '\0'}
  for _ = 1, keys do
    local key
    key, p = str_at(blob, p)
    out[#out + 1] = 'k' .. key .. '\0'
  end
  return out
end
local function index(base, n, blob)
  local bucket = base .. string.format('%d', math.floor(n / BUCKET))
  local at = string.format('%016x', n)
  for _, t in ipairs(tokens(blob)) do
    redis.call('ZADD', bucket, 0, t .. at)
  end
end
local function waiting_at(due, member, scheduled)
  return string.format('%016x', tonumber(due)) .. string.sub(member, 1, 16) .. scheduled
end
";

fn with_lookup(body: &str) -> Script {
    Script::new(&format!(
        "{}{body}",
        LOOKUP.replace("BUCKET", &LOOKUP_BUCKET.to_string())
    ))
}

/// Appends messages to a queue and indexes them for lookups. KEYS: stream, counter, lookup
/// base. ARGV: store time (ms), then one encoded message each. Returns their offsets.
/// (`string.format('%d')`, not `..`: concatenating a Lua number formats it as a float, slower
/// and wrong above 10^14.)
pub(crate) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    with_lookup(
        r"
local k = #ARGV - 1
local n = redis.call('INCRBY', KEYS[2], k) - k
local offsets = {}
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], string.format('%d-1', n), 'm', ARGV[i], 't', ARGV[1])
  index(KEYS[3], n, ARGV[i])
  offsets[i - 1] = n
  n = n + 1
end
return offsets
",
    )
});

/// Drops the lookup buckets of a queue that lie wholly below its first retained offset.
/// KEYS: lookup base. ARGV: first retained offset. The lowest bucket left is kept in
/// `<base>low`, so that each bucket is deleted once.
pub(crate) static TRIM_LOOKUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
local upto = math.floor(tonumber(ARGV[1]) / {LOOKUP_BUCKET})
local low = tonumber(redis.call('GET', KEYS[1] .. 'low') or '0')
for b = low, upto - 1 do
  redis.call('DEL', KEYS[1] .. string.format('%d', b))
end
if upto > low then
  redis.call('SET', KEYS[1] .. 'low', string.format('%d', upto))
end
return upto
"
    ))
});

/// Stores delayed messages of a queue in send order, and indexes them while they wait.
/// KEYS: delays, sequence, waiting index. ARGV: due (ms), now (ms), then one encoded message
/// each. Each member is prefixed with 16 hex digits of a per-queue sequence, so that members
/// due at the same time leave in the order they came. The waiting index (scores 0) has, per
/// message, `i<id>\0` and `k<key>\0` each followed by the due time, the sequence and the
/// schedule time (16 hex digits each): enough to find the member by its score and prefix.
/// Returns the size of the set.
pub(crate) static PUT_DELAYED: LazyLock<Script> = LazyLock::new(|| {
    with_lookup(
        r"
local scheduled = string.format('%016x', tonumber(ARGV[2]))
for i = 3, #ARGV do
  local n = redis.call('INCR', KEYS[2])
  local member = string.format('%016x', n) .. ARGV[i]
  redis.call('ZADD', KEYS[1], ARGV[1], member)
  local at = waiting_at(ARGV[1], member, scheduled)
  for _, t in ipairs(tokens(ARGV[i])) do
    redis.call('ZADD', KEYS[3], 0, t .. at)
  end
end
return redis.call('ZCARD', KEYS[1])
",
    )
});

/// Moves the due members (see `PUT_DELAYED`) of a queue's delay set into its stream, in due
/// order, indexes them for lookups and takes them out of the waiting index. KEYS: delays,
/// stream, counter, lookup base, waiting index. ARGV: now (ms), at most this many. Returns
/// {moved, earliest remaining due or -1}.
pub(crate) static MOVE_DUE: LazyLock<Script> = LazyLock::new(|| {
    with_lookup(
        r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #due, 2 do
  local m = due[i]
  local n = redis.call('INCR', KEYS[3]) - 1
  local blob = string.sub(m, 17)
  redis.call('XADD', KEYS[2], string.format('%d-1', n), 'm', blob, 't', ARGV[1])
  index(KEYS[4], n, blob)
  local prefix = waiting_at(due[i + 1], m, '')
  for _, t in ipairs(tokens(blob)) do
    local from = '[' .. t .. prefix
    local members = redis.call('ZRANGEBYLEX', KEYS[5], from, from .. '\255', 'LIMIT', 0, 1)
    if #members > 0 then
      redis.call('ZREM', KEYS[5], members[1])
    end
  end
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then
  return {#due / 2, -1}
end
return {#due / 2, tonumber(nxt[2])}
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
