--! uses: clock index schedule
-- The job got a GPU worker: record it and stretch the lease over the
-- execution timeout, unless the job was cancelled or taken over meanwhile.
-- KEYS: job, waiting.  ARGV: job_id, token, lease_seconds, wake_n, grace, field, value, ...
-- Returns {payload, woken (id, seq, priority)...}, or false. An assignment
-- means the endpoint has capacity now: its most urgent waiting job is woken.
local st = redis.call('HGET', KEYS[1], 'status')
if not st or TERMINAL[st] then
  return false
end
if redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[2] then
  return false
end
local t = now()
local until_ = t + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'status', ST.RUNNING, 'assigned_at', fmt(t),
  'lease_until', fmt(until_), unpack(ARGV, 6))
redis.call('HDEL', KEYS[1], 'next_poll_at')
redis.call('ZADD', KEYS[2], until_, ARGV[1])
index_move(KEYS[1], ARGV[1], st, ST.RUNNING, t)
queue_started_hook(KEYS[1], ARGV[1], t) -- its `started` webhook (lib/notify.lua)
local out = {redis.call('HGET', KEYS[1], 'payload')}
for _, v in ipairs(wake(KEYS[1], KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]), t)) do
  out[#out + 1] = v
end
return out
