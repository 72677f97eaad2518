-- A Redis Cluster: the apply step of one slot, atomic with that slot's own checkpoint.
-- KEYS: the slot's checkpoint, the slot's fence, then each operation's keys (apply_op.lua), all in the slot.
-- ARGV: expected checkpoint of the slot, has_expected ('1' | '0'), new checkpoint, hold-off ms, fence number
--       ('' = HA off), then the operations (D, J, H: apply_op.lua).
-- The fence: the highest leadership term (HA fence number) that wrote this slot; a lower one is refused, so a
-- leader that lost its lease cannot write a slot its successor wrote.
-- Reply: {'OK'} | {'DUP'} (this very step was applied already) | {'REWIND', stored checkpoint} | {'LOST'} (no
-- checkpoint where one was expected) | {'FENCED'}
-- include: checkpoint_cas
-- include: apply_op
local expected, has_expected, new = ARGV[1], ARGV[2] == '1', ARGV[3]
local holdoff, fence = tonumber(ARGV[4]), ARGV[5]
if fence ~= '' then
  local stored = tonumber(redis.call('GET', KEYS[2]) or '0')
  if stored > tonumber(fence) then return {'FENCED'} end
end
local refused = checkpoint_cas(KEYS[1], expected, has_expected, new)
if refused then return refused end
local i, k, n = 6, 3, #ARGV
while i <= n do
  local next_i, next_k = apply_op(i, k, holdoff)
  if not next_i then return redis.error_reply('cdc-sync: unknown op ' .. tostring(ARGV[i])) end
  i, k = next_i, next_k
end
redis.call('SET', KEYS[1], new)
if fence ~= '' then redis.call('SET', KEYS[2], fence) end
return {'OK'}
