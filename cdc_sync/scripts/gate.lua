-- A Redis Cluster: a reader's checks of the namespace's state, on its home slot (the key's own checks run in the
-- key's slot at the same time: slot_lookup.lua, slot_fill.lua; reader/cluster.py combines the two replies).
-- KEYS: heartbeat, rules, the hash of slot checkpoints, then ntables flushing markers, then ntables schema epochs.
-- ARGV: max_staleness_ms, the key's slot, ntables, then for each table its name and rule digest, then for each the
--       schema epoch its column info was read at ('': none used).
-- Reply: {status, ms the heartbeat keeps the cache trusted, heartbeat, the slot's checkpoint as the heartbeat
--         recorded it ('' when none), why no lease may be taken ('' | 'rule_mismatch' | 'schema_changed'), its
--         table, then each table's schema epoch now}; status 'OK', or the reason to bypass ('no_heartbeat',
--         'stale', 'flushing').
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[3])
local epochs = {}
for i = 1, n do epochs[i] = redis.call('GET', KEYS[3 + n + i]) or '0' end
local function reply(status, fresh, hb, why, tbl)
  local out = {status, fresh, hb or '', redis.call('HGET', KEYS[3], ARGV[2]) or '', why, tbl}
  for i = 1, n do out[6 + i] = epochs[i] end
  return out
end
local hb = redis.call('GET', KEYS[1])
if not hb then return reply('no_heartbeat', 0, nil, '', '') end
local fresh = tonumber(ARGV[1]) - (now - tonumber(hb))
if fresh < 0 then return reply('stale', 0, hb, '', '') end
for i = 1, n do
  if redis.call('EXISTS', KEYS[3 + i]) == 1 then return reply('flushing', fresh, hb, '', '') end
end
for i = 1, n do
  local table_name = ARGV[2 + 2 * i]
  if redis.sha1hex(redis.call('HGET', KEYS[2], table_name) or '') ~= ARGV[3 + 2 * i] then
    return reply('OK', fresh, hb, 'rule_mismatch', table_name)
  end
end
for i = 1, n do
  local want = ARGV[3 + 2 * n + i]
  if want ~= '' and epochs[i] ~= want then return reply('OK', fresh, hb, 'schema_changed', ARGV[2 + 2 * i]) end
end
return reply('OK', fresh, hb, '', '')
