--! uses: clock notify
-- Record how a webhook attempt went. Delivery state lives in webhook_* fields
-- and never touches the job's status or result.
-- KEYS: job, hooks.  ARGV: job_id, webhook_seq, outcome (delivered|retry|failed),
-- retry_delay, max_attempts, detail, http_status
local h = redis.call('HMGET', KEYS[1], 'webhook_seq', 'webhook_attempts')
if h[1] ~= ARGV[2] then
  return OUT.stale
end
local t = now()
local outcome = ARGV[3]
if outcome == HOOK.retry and tonumber(h[2] or '0') >= tonumber(ARGV[5]) then
  outcome = HOOK.failed
end
redis.call('HSET', KEYS[1], 'webhook_last_error', ARGV[6], 'webhook_last_status', ARGV[7],
  'webhook_last_at', fmt(t))
if outcome == HOOK.retry then
  local due = t + tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'webhook_status', WEBHOOK.retrying, 'webhook_next_at', fmt(due))
  redis.call('ZADD', KEYS[2], due, ARGV[1])
else
  redis.call('HSET', KEYS[1], 'webhook_status', outcome)
  redis.call('HDEL', KEYS[1], 'webhook_next_at')
  if outcome == HOOK.delivered then
    redis.call('HSET', KEYS[1], 'webhook_delivered_at', fmt(t), 'webhook_last_error', '')
  end
  redis.call('ZREM', KEYS[2], ARGV[1])
  start_next_hook(KEYS[1], KEYS[2], ARGV[1], t) -- an end behind `started` (lib/notify.lua)
end
return outcome
