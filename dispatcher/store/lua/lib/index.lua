--! uses: clock notify
--! Per-endpoint gauges, the pending index and the job index, moved with every status
--! change.

-- Jobs of one endpoint not yet on a GPU, most urgent first: priority wins, then age
-- (store/keys.py decodes it).
local function pending_score(priority, created_at)
  return (MAX_PRIORITY - tonumber(priority or '0')) * PRIORITY_BAND + tonumber(created_at or '0')
end

-- The job index (`dispatcher jobs`, list_jobs): one sorted set per endpoint and status,
-- scored by when the job entered it, so listing is a range read and each move is
-- O(log n). An ended job's entry lives as long as the job: entries older than `ttl` are
-- trimmed at each end, the set expires with its newest job, and it keeps the newest
-- JOB_INDEX_MAX.
local function job_index_move(ep, id, from, to, t, ttl)
  if from then redis.call('ZREM', jobs_key(ep, from), id) end
  if not to then return end
  local k = jobs_key(ep, to)
  redis.call('ZADD', k, t, id)
  if TERMINAL[to] and ttl then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. fmt(t - ttl))
    redis.call('ZREMRANGEBYRANK', k, 0, -(JOB_INDEX_MAX + 1))
    redis.call('EXPIRE', k, ttl)
  end
end

-- Every status change goes through here, in the same script as the change:
-- per-endpoint gauges (live states) and totals (terminal states) for
-- `dispatcher stats`, the endpoint's pending index and its job index. `t` (the
-- script's clock, read if not given) and `ttl` (an end's: how long the job stays) are
-- for the job index.
local function index_move(job, id, from, to, t, ttl)
  if from == to then return end
  notify(id, to) -- waiters and watchers (lib/notify.lua)
  local h = redis.call('HMGET', job, 'endpoint', 'queue', 'priority', 'created_at')
  local ep = h[1]
  if not ep then return end
  local k = counts_key(ep)
  if from and not TERMINAL[from] then redis.call('HINCRBY', k, from, -1) end
  if to then redis.call('HINCRBY', k, to, 1) end
  local pk = pending_key(h[2] or '', ep)
  if PENDING[to] and not PENDING[from] then
    redis.call('ZADD', pk, pending_score(h[3], h[4]), id)
  elseif PENDING[from] and not PENDING[to] then
    redis.call('ZREM', pk, id)
    redis.call('ZREM', held_key(ep), id)
  end
  job_index_move(ep, id, from, to, t or now(), ttl)
end
