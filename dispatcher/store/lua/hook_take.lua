--! uses: clock fields notify
-- Take a webhook delivery for one attempt.
-- KEYS: job, hooks.  ARGV: job_id, webhook_seq, lease_seconds, max_attempts
-- Bumps webhook_seq, so a duplicate message for the same attempt is stale;
-- the delivery stays in the hooks set, due when the lease ends, in case this
-- worker dies mid-attempt. The attempt cap is kept here, not only in hook_done:
-- an attempt whose worker died records nothing, and each lease end would
-- otherwise start one more. Once max_attempts were taken, the next take ends
-- the delivery failed without a request. Returns {outcome[, new_seq, field,
-- value, ...]}, or {OUT.done, WEBHOOK.failed} when the cap ended it.
local h = redis.call('HMGET', KEYS[1], 'webhook_status', 'webhook_seq', 'webhook_attempts')
if not h[1] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {OUT.unknown}
end
if h[1] ~= WEBHOOK.pending and h[1] ~= WEBHOOK.retrying then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {OUT.done}
end
if h[2] ~= ARGV[2] then
  return {OUT.stale}
end
local t = now()
local taken = tonumber(h[3] or '0') or 0
if taken >= tonumber(ARGV[4]) then
  redis.call('HINCRBY', KEYS[1], 'webhook_seq', 1)
  redis.call('HSET', KEYS[1], 'webhook_status', WEBHOOK.failed, 'webhook_last_at', fmt(t),
    'webhook_last_error', 'all ' .. ARGV[4] .. ' attempts taken (DISPATCHER_WEBHOOK_ATTEMPTS);'
      .. ' the last left no outcome: its worker stopped mid-attempt')
  redis.call('HDEL', KEYS[1], 'webhook_next_at')
  redis.call('ZREM', KEYS[2], ARGV[1])
  start_next_hook(KEYS[1], KEYS[2], ARGV[1], t) -- an end behind `started` (lib/notify.lua)
  return {OUT.done, WEBHOOK.failed}
end
local seq = redis.call('HINCRBY', KEYS[1], 'webhook_seq', 1)
redis.call('HINCRBY', KEYS[1], 'webhook_attempts', 1)
redis.call('ZADD', KEYS[2], t + tonumber(ARGV[3]), ARGV[1])
return append_fields({OUT.ok, tostring(seq)}, KEYS[1])
