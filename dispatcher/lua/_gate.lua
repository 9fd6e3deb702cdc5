-- The fleet's route-call budget for one endpoint, shared by every worker
-- process: a token bucket in the hash `dispatcher:gate:<endpoint>`.
-- 429s from Vast raise the backoff level (each level halves the rate) and
-- pause the whole fleet; one level is given back every `recover` seconds.
-- With no configured rate (0), the first cut learns the rate the fleet was
-- calling at, and levels halve that one; at level 0 there is no limit again.

local function gate_key(ep)
  return PREFIX .. 'gate:' .. ep
end

local function gate_level(g, t, recover)
  local h = redis.call('HMGET', g, 'level', 'cut_at')
  local level = tonumber(h[1] or '0')
  if level > 0 and recover > 0 then
    level = math.max(0, level - math.floor((t - tonumber(h[2] or '0')) / recover))
  end
  return level
end

-- The rate in force, calls/s; 0 = no limit.
local function gate_rate(g, t, rate, recover)
  local level = gate_level(g, t, recover)
  if rate <= 0 then
    if level == 0 then return 0 end
    rate = tonumber(redis.call('HGET', g, 'learned') or '0')
  end
  return rate / (2 ^ level)
end

-- Takes a token: returns 0, or the seconds until one is expected.
local function gate_take(g, ep, t, rate, burst, recover)
  local h = redis.call('HMGET', g, 'tokens', 'ts', 'paused_until')
  local paused = tonumber(h[3] or '0')
  if paused > t then
    redis.call('HINCRBY', g, 'deferred', 1)
    return paused - t
  end
  local r = gate_rate(g, t, rate, recover)
  if r > 0 then
    local tokens = tonumber(h[1] or burst)
    tokens = math.min(burst, tokens + math.max(0, t - tonumber(h[2] or t)) * r)
    if tokens < 1 then
      redis.call('HSET', g, 'tokens', tokens, 'ts', fmt(t))
      redis.call('HINCRBY', g, 'deferred', 1)
      return (1 - tokens) / r
    end
    redis.call('HSET', g, 'tokens', tokens - 1, 'ts', fmt(t))
  end
  redis.call('HINCRBY', g, 'calls', 1)
  local sec = PREFIX .. 'calls:' .. ep .. ':' .. math.floor(t)
  redis.call('INCR', sec)
  redis.call('EXPIRE', sec, 60)
  return 0
end
