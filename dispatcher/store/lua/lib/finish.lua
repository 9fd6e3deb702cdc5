--! uses: clock index endpoints
--! The terminal write. The first one wins, so a result is stored once even if
--! the job ran twice.

-- Wait (submit to GPU) and run (GPU to end) seconds of the endpoint's recent jobs, one
-- entry per job: two commands per end, not four.
local function record_samples(ep, created_at, assigned_at, t)
  local k = samples_key(ep)
  local a = tonumber(assigned_at)
  redis.call('LPUSH', k, string.format('%.4f %.4f', a - tonumber(created_at or assigned_at),
    t - a))
  redis.call('LTRIM', k, 0, SAMPLES_KEPT - 1)
end

local function wants_hook(events, status)
  local ev = ',' .. (events or '') .. ','
  return ev:find(',' .. status .. ',', 1, true) or ev:find(',completed,', 1, true)
end

-- Queue the job's webhook delivery (in the hooks set, due after `grace` as a
-- safety net; the caller publishes its first message at once).
local function queue_hook(job, hooks, id, status, t, grace)
  if hook_behind(job, status) then return end -- after `started` (lib/notify.lua)
  redis.call('HSET', job, 'webhook_status', WEBHOOK.pending, 'webhook_seq', FIRST_WEBHOOK_SEQ,
    'webhook_event', status, 'webhook_delivery_id', delivery_id(job, id, status),
    'webhook_attempts', '0')
  redis.call('ZADD', hooks, t + grace, id)
end

-- Store a terminal state. Returns the outcome (OUT.ok, or the status the job
-- already had) and whether a webhook delivery was queued.
local function finish_job(job, waiting, hooks, id, status, ttl, grace, fields)
  local st = redis.call('HGET', job, 'status')
  if not st then
    return OUT.unknown, false
  end
  if TERMINAL[st] then
    return st, false
  end
  local t = now()
  redis.call('HSET', job, 'status', status, 'finished_at', fmt(t), unpack(fields))
  redis.call('HDEL', job, 'lease_until', 'lease_token', 'next_poll_at')
  if status == ST.CANCELLED and st == ST.RUNNING then
    -- Its holder sees the lease gone within a second and cuts the GPU call.
    redis.call('HSET', job, 'error', (redis.call('HGET', job, 'error') or ST.CANCELLED) ..
      '; its GPU call was interrupted')
  end
  if status == ST.SUCCEEDED then
    -- Its payload (up to megabytes) is no longer needed: keep its size only. Jobs that
    -- ended otherwise keep theirs, to be run again.
    redis.call('HSET', job, 'payload_bytes', redis.call('HSTRLEN', job, 'payload'))
    redis.call('HDEL', job, 'payload')
  end
  redis.call('ZREM', waiting, id)
  redis.call('EXPIRE', job, ttl)
  if redis.call('HGET', job, 'stream') == '1' then
    -- After the terminal write, in the same script: a reader that sees the end entry
    -- reads the job's final status and result.
    local sk = stream_key(id)
    redis.call('XADD', sk, '*', 'end', status)
    redis.call('EXPIRE', sk, ttl)
  end
  index_move(job, id, st, status, t, ttl)
  local h = redis.call('HMGET', job, 'endpoint', 'created_at', 'assigned_at', 'webhook',
    'webhook_events')
  touch_endpoint(h[1], t)
  if h[1] and h[3] then
    record_samples(h[1], h[2], h[3], t)
  end
  if h[4] and h[4] ~= '' and wants_hook(h[5], status) then
    queue_hook(job, hooks, id, status, t, grace)
    return OUT.ok, true
  end
  return OUT.ok, false
end
