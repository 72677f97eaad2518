-- HA: take the leader lease. KEYS: leader, fence. ARGV: token, ttl ms.
-- Reply: the new fence number, or 0 when someone holds the lease.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('INCR', KEYS[2]) end
return 0
