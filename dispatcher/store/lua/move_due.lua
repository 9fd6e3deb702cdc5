--! uses: clock
-- Hand due waiting jobs to a live worker for publishing to the Celery queue.
-- KEYS: waiting, then the Celery queue's lists.
-- ARGV: limit, grace, max_backlog, seq_field
-- (The same script moves due webhook deliveries, whose seq field is webhook_seq.)
-- Each taken job stays in the set, due again after `grace`: if the publisher
-- dies before the message is out, another worker publishes it then.
-- Backpressure: nothing moves while the broker already holds max_backlog
-- messages, so a long backlog never snowballs into duplicate messages; due
-- jobs wait here, in due-time order, at no cost to worker memory.
local t = now()
local backlog = 0
for i = 2, #KEYS do backlog = backlog + redis.call('LLEN', KEYS[i]) end
local room = math.min(tonumber(ARGV[1]), tonumber(ARGV[3]) - backlog)
if room <= 0 then
  return {}
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t, 'LIMIT', 0, room)
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', job_key(id), ARGV[4], 'priority', 'endpoint')
  if h[1] then
    redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), id)
    out[#out + 1] = id
    out[#out + 1] = h[1]
    out[#out + 1] = h[2] or '0'
    out[#out + 1] = h[3] or ''
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
