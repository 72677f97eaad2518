-- KEYS: checkpoint, heartbeat, operator lock. ARGV: position, operator token ('' = none).
-- Replaces the checkpoint and drops the heartbeat (the cache is vouched for again only once the worker has
-- caught up from the new position). Reply: 1 done, 0 refused (the operator lock no longer holds the token).
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
