--! uses: clock
-- The fleet's route-call budget for one endpoint, shared by every worker
-- process: a token bucket in the hash `dispatcher:gate:<endpoint>`.
-- 429s from Vast raise the backoff level (each level halves the rate) and
-- pause the whole fleet; one level is given back every `recover` seconds.
-- With no configured rate (0), each cut learns the rate Vast let through
-- (route_result.lua) and levels halve that one. Once they are all given back,
-- a fleet that uses the whole learned rate raises it by PROBE per `recover`
-- seconds, to find out whether Vast now allows more; one that uses less
-- leaves it alone. Before the first cut there is no limit.

local PROBE = 1.25 -- one step above Vast's limit is 1 in 5 refused: a cut
-- MIN_BURST (store/keys.py): movers hand due jobs over in 0.1 s batches, so jobs on
-- time for their slots arrive in twos and threes at low rates: a smaller bucket
-- refuses them and sends them to the back of the queue.

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

-- The endpoint's waiting jobs were spread for the old rate (next_slot, the
-- stretched poll delays): bring their due times `factor` closer, so a raised
-- rate is used now, not once the whole backlog has turned over. Leased jobs
-- and jobs already handed over keep theirs.
local function compress_schedule(g, pk, waiting, t, factor)
  for _, id in ipairs(redis.call('ZRANGE', pk, 0, -1)) do
    local due = tonumber(redis.call('ZSCORE', waiting, id) or '0')
    if due > t then
      local jk = job_key(id)
      local h = redis.call('HMGET', jk, 'status', 'lease_until', 'seq', 'woken_seq')
      if h[1] == ST.WAITING and not h[2] and h[3] ~= h[4] then
        local new = fmt(t + (due - t) / factor)
        redis.call('ZADD', waiting, new, id)
        redis.call('HSET', jk, 'next_poll_at', new)
      end
    end
  end
  local tail = tonumber(redis.call('HGET', g, 'next_slot') or '0')
  if tail > t then
    redis.call('HSET', g, 'next_slot', fmt(t + (tail - t) / factor))
  end
end

-- A learned rate `r` the fleet used up over the last full second, with no cut
-- for `recover` seconds and no raise since: try PROBE times more, and bring the
-- waiting jobs' schedule in line with it. Returns the learned rate now.
local function gate_probe(g, ep, t, r, recover, pk, waiting)
  local h = redis.call('HMGET', g, 'cut_at', 'level', 'probed_at')
  local quiet_since = math.max(tonumber(h[3] or '0'),
    tonumber(h[1] or '0') + tonumber(h[2] or '0') * recover)
  local last = calls_key(ep, math.floor(t) - 1)
  if recover > 0 and t - quiet_since >= recover
      and tonumber(redis.call('GET', last) or '0') >= 0.9 * r then
    redis.call('HSET', g, 'learned', fmt(r * PROBE), 'probed_at', fmt(t))
    compress_schedule(g, pk, waiting, t, PROBE)
    return r * PROBE
  end
  return r
end

-- Takes a token: returns 0, or the seconds until one is expected; and the
-- rate before halving (gate_state), which deferred jobs are spread over.
-- `pk` and `waiting` (the job's pending index and waiting set) are for gate_probe.
local function gate_take(g, ep, t, rate, burst, recover, pk, waiting)
  local h = redis.call('HMGET', g, 'tokens', 'ts', 'paused_until')
  local level, r, base = gate_state(g, t, rate, recover)
  local paused = tonumber(h[3] or '0')
  if paused > t then
    redis.call('HINCRBY', g, 'deferred_calls', 1)
    return paused - t, base
  end
  if r > 0 then
    if rate <= 0 then
      burst = math.max(MIN_BURST, r / 5) -- a learned rate: the default burst for it
      if level == 0 then
        base = gate_probe(g, ep, t, r, recover, pk, waiting)
      end
    end
    local tokens = tonumber(h[1] or burst)
    tokens = math.min(burst, tokens + math.max(0, t - tonumber(h[2] or t)) * r)
    if tokens < 1 then
      redis.call('HSET', g, 'tokens', tokens, 'ts', fmt(t))
      redis.call('HINCRBY', g, 'deferred_calls', 1)
      return (1 - tokens) / r, base
    end
    redis.call('HSET', g, 'tokens', tokens - 1, 'ts', fmt(t))
  end
  redis.call('HINCRBY', g, 'calls', 1)
  local sec = calls_key(ep, math.floor(t))
  if redis.call('INCR', sec) == 1 then
    redis.call('EXPIRE', sec, COUNTER_TTL)
  end
  return 0, base
end
