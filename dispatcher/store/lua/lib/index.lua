--! uses: clock notify
--! Per-endpoint gauges and the pending index, moved with every status change.

-- Jobs of one endpoint not yet on a GPU, most urgent first: priority wins, then age
-- (store/keys.py decodes it).
local function pending_score(priority, created_at)
  return (MAX_PRIORITY - tonumber(priority or '0')) * PRIORITY_BAND + tonumber(created_at or '0')
end

-- Every status change goes through here, in the same script as the change:
-- per-endpoint gauges (live states) and totals (terminal states) for
-- `dispatcher stats`, and the endpoint's pending index.
local function index_move(job, id, from, to)
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
end
