-- KEYS: the operator lock. ARGV: token, ms. Extends the lock while it is ours, or releases it (ms = 0).
-- Reply: 1 done, 0 the lock is not ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
