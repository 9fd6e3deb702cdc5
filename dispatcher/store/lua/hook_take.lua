--! uses: clock fields
-- Take a webhook delivery for one attempt.
-- KEYS: job, hooks.  ARGV: job_id, webhook_seq, lease_seconds
-- Bumps webhook_seq, so a duplicate message for the same attempt is stale;
-- the delivery stays in the hooks set, due when the lease ends, in case this
-- worker dies mid-attempt. Returns {outcome[, new_seq, field, value, ...]}.
local h = redis.call('HMGET', KEYS[1], 'webhook_status', 'webhook_seq')
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
local seq = redis.call('HINCRBY', KEYS[1], 'webhook_seq', 1)
redis.call('HINCRBY', KEYS[1], 'webhook_attempts', 1)
redis.call('ZADD', KEYS[2], t + tonumber(ARGV[3]), ARGV[1])
return append_fields({OUT.ok, tostring(seq)}, KEYS[1])
