-- Shared by apply.lua and slot_apply.lua: one data operation, its code at ARGV[i], its keys from KEYS[k]:
--   D              KEYS: key, its lease, its hold-off marker   delete the key and its lease; hold fills off
--   J value ttl    KEYS: key, its lease                        store a JSON string (ttl 0: no expiry)
--   H ttl n f v..  KEYS: key, its lease                        replace a hash with its n fields
-- Returns the next (i, k), or nil when ARGV[i] is another code (left to the caller).
-- include: hset_args
local function apply_op(i, k, holdoff)
  local op = ARGV[i]
  if op == 'D' then
    redis.call('DEL', KEYS[k], KEYS[k + 1])
    if holdoff > 0 then redis.call('SET', KEYS[k + 2], '1', 'PX', holdoff) end
    return i + 1, k + 3
  elseif op == 'J' then
    local ttl = tonumber(ARGV[i + 2])
    if ttl > 0 then redis.call('SET', KEYS[k], ARGV[i + 1], 'PX', ttl) else redis.call('SET', KEYS[k], ARGV[i + 1]) end
    redis.call('DEL', KEYS[k + 1])
    return i + 3, k + 2
  elseif op == 'H' then
    local ttl, nf = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    redis.call('DEL', KEYS[k], KEYS[k + 1])
    local last = i + 2 + nf * 2
    hset_args(KEYS[k], i + 3, last)
    if ttl > 0 then redis.call('PEXPIRE', KEYS[k], ttl) end
    return last + 1, k + 2
  end
  return nil
end
