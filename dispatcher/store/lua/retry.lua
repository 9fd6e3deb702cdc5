--! uses: clock index endpoints
-- Run an ended job again (`dispatcher retry`): back to queued with its payload and
-- settings, as a new submission of the same job (a new schedule number, so every older
-- message of it is stale; a new created_at, so its max_wait counts from now), `retries`
-- + 1, and the error of the run that ended kept as last_error / last_error_kind.
-- One script: of two retries of the same job at once, the first queues it and the
-- second finds it queued and does nothing.
-- KEYS: job, waiting.  ARGV: job_id, grace, force (0/1), queue
-- Returns {OUT.ok, seq, priority, endpoint} (publish that message), or {why not}: the
-- live status it has, OUT.unknown, ST.SUCCEEDED (re-run only when forced),
-- OUT.no_payload (a success's payload was dropped at its end), OUT.other_queue.
local h = redis.call('HMGET', KEYS[1], 'status', 'queue', 'error', 'error_kind',
  'created_at', 'first_created_at', 'stream', 'webhook_status')
local st = h[1]
if not st then
  return {OUT.unknown}
end
if not TERMINAL[st] then
  return {st}
end
if st == ST.SUCCEEDED and ARGV[3] ~= '1' then
  return {st}
end
if (h[2] or '') ~= ARGV[4] then
  return {OUT.other_queue}
end
if redis.call('HEXISTS', KEYS[1], 'payload') == 0 then
  return {OUT.no_payload}
end
local t = now()
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HINCRBY', KEYS[1], 'retries', 1)
-- The ended run's outcome and counters go; its error is kept apart.
redis.call('HDEL', KEYS[1], 'error', 'error_kind', 'result', 'result_type', 'finished_at',
  'assigned_at', 'worker_url', 'worker_status', 'wait_reason', 'next_poll_at', 'request_idx',
  'lease_until', 'lease_token', 'held_until', 'woken_seq', 'attempts', 'route_calls',
  'worker_attempts', 'reroutes', 'polls', 'deferrals')
redis.call('HSET', KEYS[1], 'status', ST.QUEUED, 'created_at', fmt(t),
  'first_created_at', h[6] or h[5] or fmt(t), 'last_error', h[3] or '',
  'last_error_kind', h[4] or '')
if h[8] ~= WEBHOOK.pending and h[8] ~= WEBHOOK.retrying then
  -- No delivery in flight: the re-run's events are delivered afresh (`started` too).
  redis.call('HDEL', KEYS[1], 'webhook_event', 'webhook_next_event')
end
redis.call('PERSIST', KEYS[1])
redis.call('DEL', done_key(ARGV[1])) -- the old end notice would wake a new waiter
if h[7] == '1' then
  redis.call('DEL', stream_key(ARGV[1])) -- a reader of the re-run reads the re-run
end
-- A safety net, as at create: republished after `grace` if the caller's publish is lost.
redis.call('ZADD', KEYS[2], t + tonumber(ARGV[2]), ARGV[1])
index_move(KEYS[1], ARGV[1], st, ST.QUEUED, t)
local j = redis.call('HMGET', KEYS[1], 'priority', 'endpoint')
touch_endpoint(j[2], t)
return {OUT.ok, seq, j[1] or '0', j[2] or ''}
