-- The worker's apply step: check the checkpoint, apply one batch of operations, move the checkpoint; atomic.
-- KEYS: checkpoint, leader, stats, then each operation's keys, in order (below).
-- ARGV: expected checkpoint, has_expected ('1' | '0'), new checkpoint, hold-off ms, leader token ('' = HA off),
--       lease prefix, hold-off prefix, then the operations, each its code and arguments: D, J and H (apply_op.lua),
--   C name n       (no KEYS: the stats hash)                   count n under name
--   T              KEYS: tag set, tag hold-off marker          evict the tag's members (evict_tag.lua)
-- Reply: {'OK'} | {'DUP'} (this very step was applied already) | {'REWIND', stored checkpoint} | {'LOST'} (no
-- checkpoint where one was expected) | {'FENCED'} (another worker holds the leader lease)
-- include: evict_tag
-- include: checkpoint_cas
-- include: apply_op
local expected, has_expected, new = ARGV[1], ARGV[2] == '1', ARGV[3]
local holdoff, token = tonumber(ARGV[4]), ARGV[5]
local lease_prefix, inv_prefix = ARGV[6], ARGV[7]
if token ~= '' and redis.call('GET', KEYS[2]) ~= token then return {'FENCED'} end
local refused = checkpoint_cas(KEYS[1], expected, has_expected, new)
if refused then return refused end
local i, k, n = 8, 4, #ARGV
while i <= n do
  local op = ARGV[i]
  local next_i, next_k = apply_op(i, k, holdoff)
  if next_i then
    i, k = next_i, next_k
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
