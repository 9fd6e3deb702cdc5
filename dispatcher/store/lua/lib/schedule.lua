--! uses: clock index
--! Putting a job back to wait, and waking waiting jobs when a GPU slot frees.

local function deadline_of(job)
  local h = redis.call('HMGET', job, 'created_at', 'max_wait')
  return tonumber(h[1] or '0') + tonumber(h[2] or '0')
end

-- Put a job back to wait until `due`; bumps seq so older messages go stale.
-- A job put back has had its answer: any hold it had on a slot ends. `t`: the
-- caller's clock, if it read it.
local function schedule_job(job, waiting, id, from, due, t)
  redis.call('HINCRBY', job, 'seq', 1)
  redis.call('HSET', job, 'status', ST.WAITING, 'next_poll_at', fmt(due))
  redis.call('HDEL', job, 'lease_until', 'lease_token', 'held_until')
  redis.call('ZREM', held_key(redis.call('HGET', job, 'endpoint') or ''), id)
  redis.call('ZADD', waiting, due, id)
  index_move(job, id, from, ST.WAITING, t)
end

-- A GPU slot of the endpoint is free (an assignment, a finished job): hand the
-- most urgent waiting jobs to the caller to publish now, ahead of their poll
-- time, so priority decides who gets freed capacity, and let them hold it
-- (HOLD). Like move_due, each taken job stays in the waiting set, due again
-- after `grace`.
local function wake(job, waiting, n, grace, t)
  local out = {}
  if n <= 0 then return out end
  local h = redis.call('HMGET', job, 'endpoint', 'queue')
  if not h[1] then return out end
  -- The pending index also holds queued jobs; with none waiting there is no one to wake
  -- (the common case of a busy fleet on warm GPUs): one read instead of a scan.
  if tonumber(redis.call('HGET', counts_key(h[1]), ST.WAITING) or '0') <= 0 then
    return out
  end
  local ids = redis.call('ZRANGE', pending_key(h[2] or '', h[1]), 0, n + 7)
  t = t or now()
  for _, id in ipairs(ids) do
    local jk = job_key(id)
    local j = redis.call('HMGET', jk, 'status', 'seq', 'priority', 'woken_seq')
    -- woken_seq: already woken for this schedule number, its message is on the way.
    if j[1] == ST.WAITING and j[4] ~= j[2] then
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
