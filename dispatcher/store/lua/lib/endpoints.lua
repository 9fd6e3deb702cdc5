--! The endpoints the fleet has seen, scored by their last create or end, so that the
--! keys of an endpoint nobody uses any more can be forgotten (forget_endpoints.lua).

-- The endpoints key, as a sorted set: an earlier version wrote a plain set, whose
-- members are kept, scored `t`.
local function endpoints_zset(t)
  local k = endpoints_key()
  if redis.call('TYPE', k).ok == 'set' then
    local old = redis.call('SMEMBERS', k)
    redis.call('DEL', k)
    for _, name in ipairs(old) do
      redis.call('ZADD', k, t, name)
    end
  end
  return k
end

local function touch_endpoint(ep, t)
  if not ep then return end
  local r = redis.pcall('ZADD', endpoints_key(), t, ep)
  if type(r) == 'table' and r.err then
    redis.call('ZADD', endpoints_zset(t), t, ep) -- an earlier version's set, migrated
  end
end
