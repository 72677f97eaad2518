-- A Redis Cluster with HA: a new leadership term claims a slot before it applies anything, so that a leader of an
-- older term (paused past its lease, then woken) is refused in every slot, not only in those the new one wrote.
-- KEYS: the slot's fence. ARGV: the term's fence number. Reply: 1 (the fence is at least that now).
local stored = tonumber(redis.call('GET', KEYS[1]) or '0')
if stored < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
