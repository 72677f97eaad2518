-- Shared by apply.lua and slot_apply.lua: the checkpoint's compare-and-set. Returns nil when the step may apply
-- (the checkpoint at `key` is `expected`, or absent where none is expected), else the step's reply:
-- {'DUP'} (it holds `new`: this very step was applied already), {'REWIND', stored} or {'LOST'} (none where one
-- was expected).
local function checkpoint_cas(key, expected, has_expected, new)
  local cur = redis.call('GET', key)
  if has_expected then
    if cur == expected then return nil end
    if cur == new then return {'DUP'} end
    if cur then return {'REWIND', cur} end
    return {'LOST'}
  end
  if not cur then return nil end
  if cur == new then return {'DUP'} end
  return {'REWIND', cur}
end
