-- Store a terminal state. The first terminal write wins, so a result is
-- stored once even if the job ran twice.
-- KEYS: job, waiting.  ARGV: job_id, status, ttl, field, value, ...
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  return 'unknown'
end
if TERMINAL[st] then
  return st
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', fmt(now()), unpack(ARGV, 4))
redis.call('HDEL', KEYS[1], 'lease_until', 'lease_token', 'next_poll_at')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
count_move(KEYS[1], st, ARGV[2])
return 'ok'
