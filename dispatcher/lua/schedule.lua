-- Put a job back to wait in Redis (not in worker memory) until it is due.
-- KEYS: job, waiting.  ARGV: job_id, token, delay, field, value, ...
-- Bumps seq so that any older message for this job becomes stale.
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  return 'unknown'
end
if TERMINAL[st] then
  return st
end
if redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[2] then
  return 'lost'
end
local due = now() + tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'status', 'waiting', 'next_poll_at', fmt(due), unpack(ARGV, 4))
redis.call('HDEL', KEYS[1], 'lease_until', 'lease_token')
redis.call('ZADD', KEYS[2], due, ARGV[1])
count_move(KEYS[1], st, 'waiting')
return 'ok'
