-- HA: keep the leader lease. KEYS: leader. ARGV: token, ttl ms. Reply: 1 renewed (it is ours), else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
