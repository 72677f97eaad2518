-- KEYS: <ns>:workers. ARGV: worker id, record (a JSON object), keep ms.
-- Stamps the record with Redis's clock; prunes records older than keep when there are many. Reply: the stamp.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = cjson.decode(ARGV[2])
rec['last_seen_ms'] = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
if redis.call('HLEN', KEYS[1]) > 16 then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local ok, other = pcall(cjson.decode, all[i + 1])
    local seen = ok and type(other) == 'table' and tonumber(other['last_seen_ms']) or 0
    if seen < now - tonumber(ARGV[3]) then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
return now
