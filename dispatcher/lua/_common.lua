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
local PENDING = {queued = true, waiting = true}
local PREFIX = 'dispatcher:'

-- Jobs of one endpoint not yet on a GPU, most urgent first: score is
-- (9 - priority) * 1e10 + created_at, so priority wins, then age.
local function pending_key(queue, ep)
  return PREFIX .. 'pending:' .. queue .. ':' .. ep
end

local function pending_score(priority, created_at)
  return (9 - tonumber(priority or '0')) * 1e10 + tonumber(created_at or '0')
end

-- A woken job holds the freed GPU slot until its route call is answered (at
-- most HOLD seconds, should its message be lost): a less urgent job of the
-- endpoint that polls meanwhile waits, instead of taking the slot in the
-- milliseconds before the woken job's call lands. Per endpoint, as slots are.
local HOLD = 2.0

local function held_key(ep)
  return PREFIX .. 'held:' .. ep
end

-- When a hold by a job more urgent than `priority` ends, or nil if none.
local function held_for_more_urgent(ep, priority, t)
  local hk = held_key(ep)
  for _ = 1, 8 do
    local top = redis.call('ZREVRANGE', hk, 0, 0, 'WITHSCORES')
    if #top == 0 or tonumber(top[2]) <= priority then
      return nil
    end
    local until_ = tonumber(redis.call('HGET', PREFIX .. 'job:' .. top[1], 'held_until') or '0')
    if until_ > t then
      return until_
    end
    redis.call('ZREM', hk, top[1]) -- its message was lost or the job is gone
  end
  return nil
end

-- Every status change goes through here, in the same script as the change:
-- per-endpoint gauges (live states) and totals (terminal states) for
-- `dispatcher stats`, and the endpoint's pending index.
local function index_move(job, id, from, to)
  if from == to then return end
  local h = redis.call('HMGET', job, 'endpoint', 'queue', 'priority', 'created_at')
  local ep = h[1]
  if not ep then return end
  local k = PREFIX .. 'counts:' .. ep
  if from and not TERMINAL[from] then redis.call('HINCRBY', k, from, -1) end
  if to then redis.call('HINCRBY', k, to, 1) end
  local pk = pending_key(h[2] or '', ep)
  if PENDING[to] and not PENDING[from] then
    redis.call('ZADD', pk, pending_score(h[3], h[4]), id)
  elseif PENDING[from] and not PENDING[to] then
    redis.call('ZREM', pk, id)
    redis.call('ZREM', held_key(ep), id)
  end
end

-- Put a job back to wait until `due`; bumps seq so older messages go stale.
-- A job put back has had its answer: any hold it had on a slot ends.
local function schedule_job(job, waiting, id, from, due)
  redis.call('HINCRBY', job, 'seq', 1)
  redis.call('HSET', job, 'status', 'waiting', 'next_poll_at', fmt(due))
  redis.call('HDEL', job, 'lease_until', 'lease_token', 'held_until')
  redis.call('ZREM', held_key(redis.call('HGET', job, 'endpoint') or ''), id)
  redis.call('ZADD', waiting, due, id)
  index_move(job, id, from, 'waiting')
end

-- A GPU slot of the endpoint is free (an assignment, a finished job): hand the
-- most urgent waiting jobs to the caller to publish now, ahead of their poll
-- time, so priority decides who gets freed capacity, and let them hold it
-- (HOLD). Like move_due, each taken job stays in the waiting set, due again
-- after `grace`.
local function wake(job, waiting, n, grace)
  local out = {}
  if n <= 0 then return out end
  local h = redis.call('HMGET', job, 'endpoint', 'queue')
  if not h[1] then return out end
  local ids = redis.call('ZRANGE', pending_key(h[2] or '', h[1]), 0, n + 7)
  local t = now()
  for _, id in ipairs(ids) do
    local jk = PREFIX .. 'job:' .. id
    local j = redis.call('HMGET', jk, 'status', 'seq', 'priority', 'woken_seq')
    -- woken_seq: already woken for this schedule number, its message is on the way.
    if j[1] == 'waiting' and j[4] ~= j[2] then
      local due = tonumber(redis.call('ZSCORE', waiting, id) or '0')
      if due > t then
        redis.call('ZADD', waiting, t + grace, id)
        redis.call('HSET', jk, 'woken_seq', j[2], 'held_until', fmt(t + math.min(grace, HOLD)))
        redis.call('ZADD', held_key(h[1]), tonumber(j[3] or '0'), id)
        out[#out + 1] = id
        out[#out + 1] = j[2]
        out[#out + 1] = j[3] or '0'
        out[#out + 1] = h[1]
        if #out >= 4 * n then break end
      end
    end
  end
  return out
end

local function deadline_of(job)
  local h = redis.call('HMGET', job, 'created_at', 'max_wait')
  return tonumber(h[1] or '0') + tonumber(h[2] or '0')
end

local function wants_hook(events, status)
  local ev = ',' .. (events or '') .. ','
  return ev:find(',' .. status .. ',', 1, true) or ev:find(',completed,', 1, true)
end

-- Store a terminal state; the first terminal write wins, so a result is
-- stored once even if the job ran twice. Returns the outcome and whether a
-- webhook delivery was queued (in the hooks set, due after `grace` as a
-- safety net; the caller publishes it at once).
local function finish_job(job, waiting, hooks, id, status, ttl, grace, fields)
  local st = redis.call('HGET', job, 'status')
  if not st then
    return 'unknown', false
  end
  if TERMINAL[st] then
    return st, false
  end
  local t = now()
  redis.call('HSET', job, 'status', status, 'finished_at', fmt(t), unpack(fields))
  redis.call('HDEL', job, 'lease_until', 'lease_token', 'next_poll_at')
  redis.call('ZREM', waiting, id)
  redis.call('EXPIRE', job, ttl)
  index_move(job, id, st, status)
  local h = redis.call('HMGET', job, 'endpoint', 'created_at', 'assigned_at', 'webhook',
    'webhook_events')
  if h[1] and h[3] then
    local base = PREFIX .. 'samples:' .. h[1]
    redis.call('LPUSH', base .. ':wait', fmt(tonumber(h[3]) - tonumber(h[2] or h[3])))
    redis.call('LTRIM', base .. ':wait', 0, 999)
    redis.call('LPUSH', base .. ':run', fmt(t - tonumber(h[3])))
    redis.call('LTRIM', base .. ':run', 0, 999)
  end
  local hook = false
  if h[4] and h[4] ~= '' and wants_hook(h[5], status) then
    redis.call('HSET', job, 'webhook_status', 'pending', 'webhook_seq', '1',
      'webhook_event', status, 'webhook_delivery_id', id .. '.' .. status,
      'webhook_attempts', '0')
    redis.call('ZADD', hooks, t + grace, id)
    hook = true
  end
  return 'ok', hook
end

-- A job's fields but its payload: a job is read many times while it waits, and
-- its payload (up to megabytes) is needed only once it has a GPU worker.
local function append_fields(out, job)
  local h = redis.call('HGETALL', job)
  for i = 1, #h, 2 do
    if h[i] ~= 'payload' then
      out[#out + 1] = h[i]
      out[#out + 1] = h[i + 1]
    end
  end
  return out
end
