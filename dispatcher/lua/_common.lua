-- Shared prelude, prepended to every script by store.py.
-- Redis' own clock is the single clock of the fleet, so due times and
-- deadlines do not depend on the skew between machines.
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.6f', x)
end

local TERMINAL = {succeeded = true, failed = true, expired = true, cancelled = true}

-- Per-endpoint job counts for `dispatcher stats`: gauges for live states,
-- running totals for terminal ones. Moved in the same script as the status.
local function count_move(job, from, to)
  if from == to then return end
  local ep = redis.call('HGET', job, 'endpoint')
  if not ep then return end
  local k = 'dispatcher:counts:' .. ep
  if from and not TERMINAL[from] then redis.call('HINCRBY', k, from, -1) end
  if to then redis.call('HINCRBY', k, to, 1) end
end
