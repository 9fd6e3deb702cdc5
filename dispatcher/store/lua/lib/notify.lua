--! Waiters hear of a job's changes from the script that makes them, not by polling.
--! Every status change is PUBLISHed on the job's events channel (watchers). The end
--! is also pushed to the job's done list, kept NOTIFY_TTL seconds: a waiter blocks on
--! it with BLMOVE from the list onto itself, so all waiters wake (the element stays)
--! and one that arrives just after the end returns at once.
local function notify(id, status)
  if not status then return end
  redis.call('PUBLISH', events_key(id), status)
  if TERMINAL[status] then
    local k = done_key(id)
    redis.call('DEL', k)
    redis.call('RPUSH', k, status)
    redis.call('EXPIRE', k, NOTIFY_TTL)
  end
end

-- Webhooks of lifecycle events, one delivery per event (`<id>.<event>`), one at a
-- time per job and in order: an end that comes while the `started` delivery is still
-- pending or retrying waits behind it (webhook_next_event), and goes when it is over.

-- A delivery's id: `<job id>.<event>`, then `.<n>` once the job was re-run n times
-- (retry.lua), so a receiver that de-duplicates on it still hears of a re-run.
local function delivery_id(job, id, event)
  local n = redis.call('HGET', job, 'retries')
  return id .. '.' .. event .. (n and ('.' .. n) or '')
end

-- The job got a GPU: queue its `started` delivery, if it asked for one and no delivery
-- was made yet (a re-routed job starts once). Due now: a worker's mover publishes it.
local function queue_started_hook(job, id, t)
  local h = redis.call('HMGET', job, 'webhook', 'webhook_events', 'webhook_event', 'queue')
  if not h[1] or h[1] == '' or h[3] then return end
  if not (',' .. (h[2] or '') .. ','):find(',' .. STARTED_EVENT .. ',', 1, true) then
    return
  end
  redis.call('HSET', job, 'webhook_status', WEBHOOK.pending, 'webhook_seq', FIRST_WEBHOOK_SEQ,
    'webhook_event', STARTED_EVENT, 'webhook_delivery_id', delivery_id(job, id, STARTED_EVENT),
    'webhook_attempts', '0')
  redis.call('ZADD', hooks_key(h[4] or ''), t, id)
end

-- The job ended while a delivery is in flight: the end event goes after it. True if so.
local function hook_behind(job, event)
  local st = redis.call('HGET', job, 'webhook_status')
  if st ~= WEBHOOK.pending and st ~= WEBHOOK.retrying then return false end
  redis.call('HSET', job, 'webhook_next_event', event)
  return true
end

-- A delivery is over (delivered or failed): start the one waiting behind it, due now.
local function start_next_hook(job, hooks, id, t)
  local event = redis.call('HGET', job, 'webhook_next_event')
  if not event then return end
  redis.call('HDEL', job, 'webhook_next_event', 'webhook_next_at')
  redis.call('HINCRBY', job, 'webhook_seq', 1)
  redis.call('HSET', job, 'webhook_status', WEBHOOK.pending, 'webhook_event', event,
    'webhook_delivery_id', delivery_id(job, id, event), 'webhook_attempts', '0')
  redis.call('ZADD', hooks, t, id)
end
