--! uses: clock endpoints
-- Forget endpoints idle for `idle` seconds (no create, no end) with no live job: their
-- counters, gate, samples, holds, pending index and job index go. Names are bounded (validation),
-- their number is not: without this, every name ever submitted would stay in Redis.
-- KEYS: endpoints.  ARGV: idle_seconds, queue, limit.  Returns the names forgotten.
local t = now()
endpoints_zset(t)
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t - tonumber(ARGV[1]),
  'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, ep in ipairs(old) do
  local c = redis.call('HMGET', counts_key(ep), ST.QUEUED, ST.WAITING, ST.RUNNING)
  local live = tonumber(c[1] or '0') + tonumber(c[2] or '0') + tonumber(c[3] or '0')
  if live <= 0 then
    redis.call('DEL', counts_key(ep), gate_key(ep), samples_key(ep), held_key(ep),
      pending_key(ARGV[2], ep))
    for _, st in pairs(ST) do redis.call('DEL', jobs_key(ep, st)) end -- its job index
    redis.call('ZREM', KEYS[1], ep)
    out[#out + 1] = ep
  else
    redis.call('ZADD', KEYS[1], t, ep) -- idle but not done: look again later
  end
end
return out
