--! uses: clock schedule gate
-- Put a job back to wait in Redis (not in worker memory) until it is due.
-- KEYS: job, waiting.
-- ARGV: job_id, token, delay, rate, spread_draw, recover, field, value, ...
-- When the endpoint's fleet budget (configured or learned, see lib/gate.lua) cannot
-- poll every pending job once per `delay`, the delay stretches to what the full
-- budget allows (spread by the draw), so polls arrive at about the budget's rate.
-- Never past the job's deadline.
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  return OUT.unknown
end
if TERMINAL[st] then
  return st
end
if redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[2] then
  return OUT.lost
end
local t = now()
local delay = tonumber(ARGV[3])
local j = redis.call('HMGET', KEYS[1], 'endpoint', 'queue')
local _, _, rate = gate_state(gate_key(j[1] or ''), t, tonumber(ARGV[4]), tonumber(ARGV[6]))
if rate > 0 then
  local n = tonumber(redis.call('ZCARD', pending_key(j[2] or '', j[1] or '')))
  delay = math.max(delay, tonumber(ARGV[5]) * (n + 1) / rate)
end
if #ARGV > 6 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 7))
end
schedule_job(KEYS[1], KEYS[2], ARGV[1], st, math.min(deadline_of(KEYS[1]), t + delay), t)
return OUT.ok
