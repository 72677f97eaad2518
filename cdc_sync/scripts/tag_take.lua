-- A Redis Cluster: the first half of a tag eviction, in the tag's slot (its members sit in other slots).
-- KEYS: the tag set, its hold-off marker. ARGV: hold-off ms.
-- Holds fills of the tag off (a reader joining the tag from now on bypasses) and returns the members; the caller
-- evicts each in its own slot, then removes just those members (SREM): a crash in between leaves them in the set,
-- so the replay evicts them again.
local holdoff = tonumber(ARGV[1])
if holdoff > 0 then redis.call('SET', KEYS[2], '1', 'PX', holdoff) end
return redis.call('SMEMBERS', KEYS[1])
