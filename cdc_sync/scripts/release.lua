-- Give back a lease or lock that holds our token (a reader's fill lease, the HA leader lease).
-- KEYS: the lease. ARGV: token. Reply: 1 released, 0 it was not ours (expired, or taken by another).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
