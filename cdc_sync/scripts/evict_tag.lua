-- Shared by apply.lua and evict_tags.lua: evict every member of the tag set `tag` (a cached key) with its
-- lease, hold fills of each member and of the tag itself off for `holdoff` ms, and drop the set. The members
-- are found at run time, so their lease and hold-off keys are built from the prefixes the caller passes
-- (keys.Namespace.lease_prefix / inv_prefix). Returns how many members were evicted.
local function evict_tag(tag, tinv, lease_prefix, inv_prefix, holdoff)
  local members = redis.call('SMEMBERS', tag)
  for _, member in ipairs(members) do
    redis.call('DEL', member, lease_prefix .. member)
    if holdoff > 0 then redis.call('SET', inv_prefix .. member, '1', 'PX', holdoff) end
  end
  redis.call('DEL', tag)
  if holdoff > 0 then redis.call('SET', tinv, '1', 'PX', holdoff) end
  return #members
end
