-- One step of a wholesale flush, refused when HA is on and the leader lease is not ours, or when run by an
-- operator command whose lock no longer holds its token (it was paused past the lock's TTL, and the next command
-- may hold the same markers).
-- KEYS: leader, operator lock, then the keys: for hold and mark each flushing marker followed by its table's
-- schema epoch; for the other ops the keys themselves.
-- ARGV: leader token ('' = HA off), operator token ('' = the worker), op, ms. Ops on flushing markers:
--   hold     mark until released (operator commands: an interrupted one leaves the tables bypassed, never stale)
--   mark     mark for ms (the worker: a crashed flush is redone by the replay); never shortens a held mark
--   unmark   end the worker's mark (a held one stays), leaving it as a hold-off marker for ms (0: delete it)
--   release  end any mark the same way
--   unlink   UNLINK the keys
-- hold and mark also bump each table's schema epoch (reader/protocol.py): a flush may stand for a DDL (or a jump
-- past one), so readers' column info read before it no longer fills. Each bump goes to Redis's clock in
-- microseconds, or one past the epoch if that is later: an emptied namespace, or one restored from an older
-- snapshot, never repeats an epoch a reader may have seen before.
-- Reply: {'OK', keys handled (unlink: removed)} | {'FENCED'} | {'LOCK_LOST'}
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'FENCED'} end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return {'LOCK_LOST'} end
local op, ms = ARGV[3], tonumber(ARGV[4])
if op == 'unlink' then return {'OK', redis.call('UNLINK', unpack(KEYS, 3))} end
local step = 1
if op == 'hold' or op == 'mark' then step = 2 end
local n = 0
for i = 3, #KEYS, step do
  local k = KEYS[i]
  if step == 2 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local next = (tonumber(redis.call('GET', KEYS[i + 1]) or '0') or 0) + 1
    if next < now then next = now end
    redis.call('SET', KEYS[i + 1], string.format('%.0f', next))
  end
  local held = redis.call('PTTL', k) == -1
  if op == 'hold' then
    redis.call('SET', k, '1')
  elseif op == 'mark' then
    if not held then redis.call('SET', k, '1', 'PX', ms) end
  elseif op == 'release' or (op == 'unmark' and not held) then
    if ms > 0 then redis.call('SET', k, '1', 'PX', ms) else redis.call('DEL', k) end
  end
  n = n + 1
end
return {'OK', n}
