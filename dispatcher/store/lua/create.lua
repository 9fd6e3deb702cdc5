--! uses: clock index endpoints
-- Create a job unless its id exists (idempotent submit).
-- KEYS: job, waiting.  ARGV: job_id, grace, field, value, ...
-- The job also enters the waiting set, due after `grace`: a safety net that
-- republishes it if the submitter dies between this write and the publish.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local t = now()
redis.call('HSET', KEYS[1], 'created_at', fmt(t), 'seq', '0', unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], t + tonumber(ARGV[2]), ARGV[1])
touch_endpoint(redis.call('HGET', KEYS[1], 'endpoint'), t)
index_move(KEYS[1], ARGV[1], nil, ST.QUEUED, t)
return 1
