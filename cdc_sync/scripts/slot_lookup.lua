-- A Redis Cluster: a reader's lookup in the key's slot (its namespace checks run at the same time: gate.lua).
-- KEYS: key, its hold-off marker, its lease, the slot's checkpoint[, the key's stamp (stamped only)].
-- ARGV: lease_ttl_ms, token, format ('j' | 'h'), '1' when stamped.
-- Reply: {'HIT', value, the slot's checkpoint, stamp} | {'BYPASS', 'holdoff'} | {'LEASE', the slot's checkpoint}
--        | {'WAIT'}. (A lease the gate's reply forbids is given back: release.lua.)
local ck = redis.call('GET', KEYS[4]) or ''
local v
if ARGV[3] == 'h' then
  v = redis.call('HGETALL', KEYS[1])
  if #v == 0 then v = nil end
else
  v = redis.call('GET', KEYS[1])
end
if v then
  local stamp = ''
  if ARGV[4] == '1' then stamp = redis.call('GET', KEYS[5]) or '' end
  return {'HIT', v, ck, stamp}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'BYPASS', 'holdoff'} end
if not redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[1]) then return {'WAIT'} end
return {'LEASE', ck}
