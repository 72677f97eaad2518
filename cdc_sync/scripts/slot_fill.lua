-- A Redis Cluster: a reader's fill under its lease, in the key's slot (the namespace's checks run at the same
-- time: gate.lua; a fill they refuse is deleted again).
-- KEYS: key, its lease[, its stamp (stamped only)]. ARGV: token, format, ttl_ms, stamp ('': none), value | field
-- value ... Reply: 'STORED' | 'LOST' (the lease is gone: a change, or a flush)
-- include: hset_args
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'LOST' end
redis.call('DEL', KEYS[2])
local ttl = tonumber(ARGV[3])
if ARGV[2] == 'h' then
  redis.call('DEL', KEYS[1])
  hset_args(KEYS[1], 5, #ARGV)
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
elseif ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[5], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[5])
end
if ARGV[4] ~= '' then
  if ttl > 0 then redis.call('SET', KEYS[3], ARGV[4], 'PX', ttl) else redis.call('SET', KEYS[3], ARGV[4]) end
end
return 'STORED'
