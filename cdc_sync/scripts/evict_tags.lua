-- A flush's eviction of reader tag sets, fenced like a flush step (flush_step.lua).
-- KEYS: leader, operator lock, then for each tag its set and its hold-off marker.
-- ARGV: leader token ('' = HA off), operator token ('' = the worker), hold-off ms, lease prefix, hold-off prefix.
-- Reply: {'OK', members evicted} | {'FENCED'} | {'LOCK_LOST'}
-- include: evict_tag
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'FENCED'} end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return {'LOCK_LOST'} end
local holdoff, n = tonumber(ARGV[3]), 0
for k = 3, #KEYS, 2 do
  n = n + evict_tag(KEYS[k], KEYS[k + 1], ARGV[4], ARGV[5], holdoff)
end
return {'OK', n}
