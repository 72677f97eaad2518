-- The worker's apply step: check the checkpoint, apply one batch of operations, move the checkpoint; atomic.
-- KEYS: checkpoint, leader, stats, then each operation's keys, in order (below).
-- ARGV: expected checkpoint, has_expected ('1' | '0'), new checkpoint, hold-off ms, leader token ('' = HA off),
--       lease prefix, hold-off prefix, then the operations, each its code and arguments:
--   D              KEYS: key, its lease, its hold-off marker   delete the key and its lease; hold fills off
--   J value ttl    KEYS: key, its lease                        store a JSON string (ttl 0: no expiry)
--   H ttl n f v..  KEYS: key, its lease                        replace a hash with its n fields
--   C name n       (no KEYS: the stats hash)                   count n under name
--   T              KEYS: tag set, tag hold-off marker          evict the tag's members (evict_tag.lua)
-- Reply: {'OK'} | {'DUP'} (this very step was applied already) | {'REWIND', stored checkpoint} | {'LOST'} (no
-- checkpoint where one was expected) | {'FENCED'} (another worker holds the leader lease)
-- include: evict_tag
local expected, has_expected, new = ARGV[1], ARGV[2] == '1', ARGV[3]
local holdoff, token = tonumber(ARGV[4]), ARGV[5]
local lease_prefix, inv_prefix = ARGV[6], ARGV[7]
if token ~= '' and redis.call('GET', KEYS[2]) ~= token then return {'FENCED'} end
local cur = redis.call('GET', KEYS[1])
if has_expected then
  if cur ~= expected then
    if cur == new then return {'DUP'} end
    if cur then return {'REWIND', cur} end
    return {'LOST'}
  end
elseif cur then
  if cur == new then return {'DUP'} end
  return {'REWIND', cur}
end
local i, k, n = 8, 4, #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'D' then
    redis.call('DEL', KEYS[k], KEYS[k + 1])
    if holdoff > 0 then redis.call('SET', KEYS[k + 2], '1', 'PX', holdoff) end
    i, k = i + 1, k + 3
  elseif op == 'J' then
    local ttl = tonumber(ARGV[i + 2])
    if ttl > 0 then redis.call('SET', KEYS[k], ARGV[i + 1], 'PX', ttl) else redis.call('SET', KEYS[k], ARGV[i + 1]) end
    redis.call('DEL', KEYS[k + 1])
    i, k = i + 3, k + 2
  elseif op == 'H' then
    local ttl, nf = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    redis.call('DEL', KEYS[k], KEYS[k + 1])
    local j, last = i + 3, i + 2 + nf * 2
    while j <= last do
      local stop = math.min(j + 999, last)
      redis.call('HSET', KEYS[k], unpack(ARGV, j, stop))
      j = stop + 1
    end
    if ttl > 0 then redis.call('PEXPIRE', KEYS[k], ttl) end
    i, k = last + 1, k + 2
  elseif op == 'C' then
    redis.call('HINCRBY', KEYS[3], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'T' then
    evict_tag(KEYS[k], KEYS[k + 1], lease_prefix, inv_prefix, holdoff)
    i, k = i + 1, k + 2
  else
    return redis.error_reply('cdc-sync: unknown op ' .. tostring(op))
  end
end
redis.call('SET', KEYS[1], new)
return {'OK'}
