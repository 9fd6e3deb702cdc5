-- The fleet's route-call budget for one endpoint, shared by every worker
-- process: a token bucket in the hash `dispatcher:gate:<endpoint>`.
-- 429s from Vast raise the backoff level (each level halves the rate) and
-- pause the whole fleet; one level is given back every `recover` seconds.
-- With no configured rate (0), each cut learns the rate Vast let through
-- (route_result.lua) and levels halve that one. Once they are all given back,
-- a fleet that wants more than the learned rate raises it by PROBE per
-- `recover` seconds, to find out whether Vast now allows more; one that wants
-- less leaves it alone. Before the first cut there is no limit.

local PROBE = 1.25 -- one step above Vast's limit is 1 in 5 refused: a cut

local function gate_key(ep)
  return PREFIX .. 'gate:' .. ep
end

-- Route calls the fleet made in one second (for the 429 share, probes, stats).
local function calls_key(ep, sec)
  return PREFIX .. 'calls:' .. ep .. ':' .. sec
end

-- The budget in force: level, rate (calls/s, 0 = no limit), and the rate
-- before halving (what waiting jobs are spread over).
local function gate_state(g, t, rate, recover)
  local h = redis.call('HMGET', g, 'level', 'cut_at', 'learned')
  local level = tonumber(h[1] or '0')
  if level > 0 and recover > 0 then
    level = math.max(0, level - math.floor((t - tonumber(h[2] or '0')) / recover))
  end
  if rate <= 0 then
    rate = tonumber(h[3] or '0')
  end
  return level, rate / (2 ^ level), rate
end

-- A learned rate the fleet used up over the last full second, with no cut for
-- `recover` seconds and no raise since: try PROBE times more.
local function gate_probe(g, ep, t, r, recover)
  local h = redis.call('HMGET', g, 'learned', 'cut_at', 'level', 'probed_at')
  local quiet_since = math.max(tonumber(h[4] or '0'),
    tonumber(h[2] or '0') + tonumber(h[3] or '0') * recover)
  local last = calls_key(ep, math.floor(t) - 1)
  if recover > 0 and t - quiet_since >= recover
      and tonumber(redis.call('GET', last) or '0') >= 0.9 * r then
    redis.call('HSET', g, 'learned', fmt(tonumber(h[1]) * PROBE), 'probed_at', fmt(t))
  end
end

-- Takes a token: returns 0, or the seconds until one is expected.
local function gate_take(g, ep, t, rate, burst, recover)
  local h = redis.call('HMGET', g, 'tokens', 'ts', 'paused_until')
  local paused = tonumber(h[3] or '0')
  if paused > t then
    redis.call('HINCRBY', g, 'deferred', 1)
    return paused - t
  end
  local level, r = gate_state(g, t, rate, recover)
  if r > 0 then
    if rate <= 0 then
      burst = math.max(1, r / 5) -- a learned rate: the default burst for it
    end
    local tokens = tonumber(h[1] or burst)
    tokens = math.min(burst, tokens + math.max(0, t - tonumber(h[2] or t)) * r)
    if tokens < 1 then
      redis.call('HSET', g, 'tokens', tokens, 'ts', fmt(t))
      if rate <= 0 and level == 0 then
        gate_probe(g, ep, t, r, recover)
      end
      redis.call('HINCRBY', g, 'deferred', 1)
      return (1 - tokens) / r
    end
    redis.call('HSET', g, 'tokens', tokens - 1, 'ts', fmt(t))
  end
  redis.call('HINCRBY', g, 'calls', 1)
  local sec = calls_key(ep, math.floor(t))
  redis.call('INCR', sec)
  redis.call('EXPIRE', sec, 60)
  return 0
end
