--! uses: finish schedule
-- Store a terminal state (finish_job in lib/finish.lua).
-- KEYS: job, waiting, hooks.
-- ARGV: job_id, status, ttl, grace, wake_n, lease_token, field, value, ...
-- A run's write carries its lease token: a run whose lease was taken over is stale
-- and writes nothing (OUT.lost). Cancels and purges carry none.
-- Returns {outcome, hook (0/1), woken (id, seq, priority)...}: a job that
-- succeeded freed a GPU slot, so the endpoint's most urgent waiting job is woken.
if ARGV[6] ~= '' then
  local h = redis.call('HMGET', KEYS[1], 'status', 'lease_token')
  if h[1] and not TERMINAL[h[1]] and h[2] ~= ARGV[6] then
    return {OUT.lost, 0}
  end
end
local outcome, hook = finish_job(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2],
  tonumber(ARGV[3]), tonumber(ARGV[4]), {unpack(ARGV, 7)})
local out = {outcome, hook and 1 or 0}
if outcome == OUT.ok then
  for _, v in ipairs(wake(KEYS[1], KEYS[2], tonumber(ARGV[5]), tonumber(ARGV[4]))) do
    out[#out + 1] = v
  end
end
return out
