-- A Redis Cluster: a reader holding a lease joins one of its key's dependency tags, in the tag's slot, before it
-- loads the value (a change after the load then evicts it: slot by slot, see redis_cluster.py).
-- KEYS: the tag's hold-off marker, the tag set. ARGV: the key, tag ttl ms (0: no expiry).
-- Reply: 1 joined, 0 the tag is held off (just evicted: the caller gives its lease back and bypasses).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local existed = redis.call('EXISTS', KEYS[2]) == 1
redis.call('SADD', KEYS[2], ARGV[1])
local tag_ttl = tonumber(ARGV[2])
if tag_ttl == 0 then
  redis.call('PERSIST', KEYS[2])
else
  local p = redis.call('PTTL', KEYS[2])
  if (not existed) or (p >= 0 and p < tag_ttl) then redis.call('PEXPIRE', KEYS[2], tag_ttl) end
end
return 1
