-- Hand due waiting jobs to a live worker for publishing to the Celery queue.
-- KEYS: waiting.  ARGV: limit, grace, job_key_prefix
-- Each taken job stays in the set, due again after `grace`: if the publisher
-- dies before the message is out, another worker publishes it then.
local t = now()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', ARGV[3] .. id, 'seq', 'priority')
  if h[1] then
    redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), id)
    out[#out + 1] = id
    out[#out + 1] = h[1]
    out[#out + 1] = h[2] or '0'
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
