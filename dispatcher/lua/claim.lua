-- Take the lease on a job for one dispatch run.
-- KEYS: job, waiting.  ARGV: job_id, seq, lease_seconds, token
-- Returns {outcome, redis_now[, field, value, ...]}.
-- While leased, the job stays in the waiting set, due when the lease ends:
-- if this worker dies, any live worker picks the job up again then.
local t = now()
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'unknown', fmt(t)}
end
if TERMINAL[st] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'done', fmt(t)}
end
if redis.call('HGET', KEYS[1], 'seq') ~= ARGV[2] then
  -- An older message of a job that has since been rescheduled.
  return {'stale', fmt(t)}
end
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if lease > t then
  -- A second delivery while another run holds the job: come back when the
  -- lease ends (LT keeps an earlier due time if one is set).
  redis.call('ZADD', KEYS[2], 'LT', lease, ARGV[1])
  return {'busy', fmt(t)}
end
local until_ = t + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'lease_until', fmt(until_), 'lease_token', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZADD', KEYS[2], until_, ARGV[1])
-- Everything but the payload: a waiting job is polled many times, and its
-- payload (up to megabytes) is needed only once it has a GPU worker.
local out = {'ok', fmt(t)}
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  if h[i] ~= 'payload' then
    out[#out + 1] = h[i]
    out[#out + 1] = h[i + 1]
  end
end
return out
