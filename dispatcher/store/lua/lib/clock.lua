--! Redis' own clock is the single clock of the fleet, so due times and
--! deadlines do not depend on the skew between machines.
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.6f', x)
end
