-- KEYS: checkpoint, heartbeat, leader[, a cluster: the hash of slot checkpoints].
-- ARGV: expected checkpoint, time (ms), leader token ('' = HA off)[, then slot, checkpoint pairs].
-- Moves the heartbeat forward only, and only while the checkpoint (and the leader lease) is still this worker's;
-- on a cluster records, in the same step, each slot's checkpoint as this heartbeat vouches for it.
-- Reply: 1 moved (or already there), 0 refused.
-- include: hset_args
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[3] then return 0 end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
if #ARGV > 3 then hset_args(KEYS[4], 4, #ARGV) end
return 1
