--! uses: clock
-- Renew the leases of the GPU calls one worker process has open.
-- KEYS: waiting.  ARGV: lease_seconds, job_id, lease_token, job_id, lease_token, ...
-- A lease renewed here keeps the job off every other worker (it stays due in the
-- waiting set only when the lease ends). Returns {job_id, status, ...} for each call
-- whose lease is gone: the job ended (cancelled, expired by an operator) or another
-- run took it over. Its holder cuts the GPU call.
local t = now()
local until_ = t + tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local job = job_key(id)
  local h = redis.call('HMGET', job, 'status', 'lease_token')
  if h[1] and not TERMINAL[h[1]] and h[2] == token then
    redis.call('HSET', job, 'lease_until', fmt(until_))
    redis.call('ZADD', KEYS[1], until_, id)
  else
    out[#out + 1] = id
    out[#out + 1] = h[1] or OUT.unknown
  end
end
return out
