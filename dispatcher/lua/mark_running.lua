-- The job got a GPU worker: record it and stretch the lease over the
-- execution timeout, unless the job was cancelled or taken over meanwhile.
-- KEYS: job, waiting.  ARGV: job_id, token, lease_seconds, field, value, ...
-- Returns the payload to forward, or false.
local st = redis.call('HGET', KEYS[1], 'status')
if not st or TERMINAL[st] then
  return false
end
if redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[2] then
  return false
end
local t = now()
local until_ = t + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'running', 'assigned_at', fmt(t),
  'lease_until', fmt(until_), unpack(ARGV, 4))
redis.call('HDEL', KEYS[1], 'next_poll_at')
redis.call('ZADD', KEYS[2], until_, ARGV[1])
count_move(KEYS[1], st, 'running')
return redis.call('HGET', KEYS[1], 'payload')
