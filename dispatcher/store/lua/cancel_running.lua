--! uses: finish
-- Cancel up to `limit` jobs of one endpoint that are on a GPU (`purge --running`), from
-- the job index. Each holder sees its lease gone within a second and cuts the GPU call;
-- the error says so (lib/finish.lua).
-- KEYS: the endpoint's running jobs (job index), waiting, hooks.
-- ARGV: limit, ttl, grace, error, error_kind
-- Returns {cancelled_count, scanned_count, hook_job_ids...}.
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local n = 0
local out = {0, #ids}
for _, id in ipairs(ids) do
  local job = job_key(id)
  if redis.call('HGET', job, 'status') == ST.RUNNING then
    local outcome, hook = finish_job(job, KEYS[2], KEYS[3], id, ST.CANCELLED, tonumber(ARGV[2]),
      tonumber(ARGV[3]), {'error', ARGV[4], 'error_kind', ARGV[5]})
    if outcome == OUT.ok then n = n + 1 end
    if hook then out[#out + 1] = id end
  else
    redis.call('ZREM', KEYS[1], id) -- a stale entry: its job is gone
  end
end
out[1] = n
return out
