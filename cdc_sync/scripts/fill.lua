-- A reader's fill under its lease.
-- KEYS: key, lease, rules, then the flushing markers, then the schema epochs, then the key's stamp (stamped only).
-- ARGV: token, format, ttl_ms, ntables, then for each table its name and rule digest, then for each the schema
-- epoch its column info was read at ('': none used), then '1' to stamp the value with the tables' epochs now (a
-- fetch result), then value | field value ...
-- Reply: 'STORED' | 'LOST' (the lease is gone, or a flush runs) | 'RULE_MISMATCH' (refused: the worker's rule for
-- a table is no longer the reader's) | 'SCHEMA_CHANGED' (refused: a table's schema epoch moved, a DDL)
-- include: hset_args
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'LOST' end
redis.call('DEL', KEYS[2])
local n = tonumber(ARGV[4])
for i = 1, n do
  if redis.call('EXISTS', KEYS[3 + i]) == 1 then return 'LOST' end
end
for i = 1, n do
  if redis.sha1hex(redis.call('HGET', KEYS[3], ARGV[3 + 2 * i]) or '') ~= ARGV[4 + 2 * i] then
    return 'RULE_MISMATCH'
  end
end
for i = 1, n do
  local want = ARGV[4 + 2 * n + i]
  if want ~= '' and (redis.call('GET', KEYS[3 + n + i]) or '0') ~= want then return 'SCHEMA_CHANGED' end
end
local first = 6 + 3 * n
local ttl = tonumber(ARGV[3])
if ARGV[2] == 'h' then
  redis.call('DEL', KEYS[1])
  hset_args(KEYS[1], first, #ARGV)
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
elseif ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[first], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[first])
end
if ARGV[5 + 3 * n] == '1' then
  local epochs = {}
  for i = 1, n do epochs[i] = redis.call('GET', KEYS[3 + n + i]) or '0' end
  if ttl > 0 then
    redis.call('SET', KEYS[4 + 2 * n], table.concat(epochs, ','), 'PX', ttl)
  else
    redis.call('SET', KEYS[4 + 2 * n], table.concat(epochs, ','))
  end
end
return 'STORED'
