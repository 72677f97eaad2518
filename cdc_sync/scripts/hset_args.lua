-- Shared by apply_op.lua, fill.lua, slot_fill.lua and heartbeat.lua: HSET key with the field, value pairs
-- ARGV[first..last], a thousand arguments a call (Lua's unpack stops at about 8000 values: a row of 4096 columns,
-- a heartbeat recording every slot).
local function hset_args(key, first, last)
  local j = first
  while j <= last do
    local stop = math.min(j + 999, last)
    redis.call('HSET', key, unpack(ARGV, j, stop))
    j = stop + 1
  end
end
