-- Drop a streaming job's pieces before its re-run (dispatch.py's retry policy), so its
-- readers follow the new run; only while this run still holds the job (a cancel that
-- came first has written the stream's end, which stays).
-- KEYS: job, stream.  ARGV: lease_token.  Returns 1 if dropped.
if redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[1] then
  return 0
end
return redis.call('DEL', KEYS[2])
