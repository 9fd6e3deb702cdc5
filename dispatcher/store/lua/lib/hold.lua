--! A woken job holds the freed GPU slot until its route call is answered (at
--! most HOLD seconds, should its message be lost): a less urgent job of the
--! endpoint that polls meanwhile waits, instead of taking the slot in the
--! milliseconds before the woken job's call lands. Per endpoint, as slots are.

-- When a hold by a job more urgent than `priority` ends, or nil if none.
local function held_for_more_urgent(ep, priority, t)
  local hk = held_key(ep)
  for _ = 1, 8 do
    local top = redis.call('ZREVRANGE', hk, 0, 0, 'WITHSCORES')
    if #top == 0 or tonumber(top[2]) <= priority then
      return nil
    end
    local until_ = tonumber(redis.call('HGET', job_key(top[1]), 'held_until') or '0')
    if until_ > t then
      return until_
    end
    redis.call('ZREM', hk, top[1]) -- its message was lost or the job is gone
  end
  return nil
end
