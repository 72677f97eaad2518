-- A reader's checked lookup: a hit, a bypass, a fill lease or a wait, decided on Redis's clock.
-- KEYS: key, heartbeat, hold-off of key, lease of key, rules, then nflush flushing markers, then the tags'
--       hold-off markers and the tag sets (ntags each), then nflush schema epochs, then the key's stamp (if stamped).
-- ARGV: max_staleness_ms, lease_ttl_ms, token, nflush, format ('j' | 'h'), tag ttl ms (0: no expiry), ntags,
--       then for each flushed table: its name and the sha1 of the reader's rule fingerprint, then for each the
--       schema epoch its column info was read at ('': none used), then '1' when the value is stamped (a fetch
--       result: a hit only while the stamp is the tables' epochs now).
-- Reply: {'HIT', value, ms the heartbeat keeps the cache trusted, heartbeat} | {'BYPASS', reason[, table]}
--        | {'LEASE', schema epoch of each table now} | {'WAIT'}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hb = redis.call('GET', KEYS[2])
if not hb then return {'BYPASS', 'no_heartbeat'} end
local fresh = tonumber(ARGV[1]) - (now - tonumber(hb))  -- ms this heartbeat keeps the cache trusted
if fresh < 0 then return {'BYPASS', 'stale'} end
local nflush, ntags = tonumber(ARGV[4]), tonumber(ARGV[7])
for i = 6, 5 + nflush do
  if redis.call('EXISTS', KEYS[i]) == 1 then return {'BYPASS', 'flushing'} end
end
local first_tag = 6 + nflush
local first_epoch = first_tag + 2 * ntags
if ARGV[5] == 'h' then
  local v = redis.call('HGETALL', KEYS[1])
  if #v > 0 then return {'HIT', v, fresh, hb} end
else
  local v = redis.call('GET', KEYS[1])
  if v then
    if ARGV[8 + 3 * nflush] ~= '1' then return {'HIT', v, fresh, hb} end
    local now_epochs = {}
    for i = 1, nflush do now_epochs[i] = redis.call('GET', KEYS[first_epoch + i - 1]) or '0' end
    if redis.call('GET', KEYS[first_epoch + nflush]) == table.concat(now_epochs, ',') then
      return {'HIT', v, fresh, hb}
    end  -- (stamped before a flush of one of its tables, or the stamp is gone: a miss)
  end
end
for i = 1, nflush do  -- a lease only under the worker's own rule for every table the value depends on
  local table_name = ARGV[6 + 2 * i]
  if redis.sha1hex(redis.call('HGET', KEYS[5], table_name) or '') ~= ARGV[7 + 2 * i] then
    return {'BYPASS', 'rule_mismatch', table_name}
  end
end
for i = 1, nflush do  -- and only with column info read since the table's last DDL
  local want = ARGV[7 + 2 * nflush + i]
  if want ~= '' and (redis.call('GET', KEYS[first_epoch + i - 1]) or '0') ~= want then
    return {'BYPASS', 'schema_changed', ARGV[6 + 2 * i]}
  end
end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'BYPASS', 'holdoff'} end
for i = first_tag, first_tag + ntags - 1 do
  if redis.call('EXISTS', KEYS[i]) == 1 then return {'BYPASS', 'holdoff'} end
end
if not redis.call('SET', KEYS[4], ARGV[3], 'NX', 'PX', ARGV[2]) then return {'WAIT'} end
local tag_ttl = tonumber(ARGV[6])
for i = first_tag + ntags, first_tag + 2 * ntags - 1 do
  local existed = redis.call('EXISTS', KEYS[i]) == 1
  redis.call('SADD', KEYS[i], KEYS[1])
  if tag_ttl == 0 then
    redis.call('PERSIST', KEYS[i])
  else
    local p = redis.call('PTTL', KEYS[i])
    if (not existed) or (p >= 0 and p < tag_ttl) then redis.call('PEXPIRE', KEYS[i], tag_ttl) end
  end
end
local reply = {'LEASE'}
for i = 1, nflush do reply[i + 1] = redis.call('GET', KEYS[first_epoch + i - 1]) or '0' end
return reply
