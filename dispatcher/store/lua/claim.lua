--! uses: clock index hold schedule gate fields
-- Take the lease on a job for one dispatch run, and a route call from the
-- endpoint's fleet budget (lib/gate.lua), unless a more urgent job holds the
-- endpoint's freed slot (lib/hold.lua).
-- KEYS: job, waiting (the gate key is derived from the job's endpoint).
-- ARGV: job_id, seq, lease_seconds, token, rate, burst, recover, spread_draw, poll_cap
-- Returns {outcome, redis_now[, field, value, ...]}.
-- While leased, the job stays in the waiting set, due when the lease ends:
-- if this worker dies, any live worker picks the job up again then.
local t = now()
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {OUT.unknown, fmt(t)}
end
if TERMINAL[st] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {OUT.done, fmt(t)}
end
if redis.call('HGET', KEYS[1], 'seq') ~= ARGV[2] then
  -- An older message of a job that has since been rescheduled.
  return {OUT.stale, fmt(t)}
end
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if lease > t then
  -- A second delivery while another run holds the job: come back when the
  -- lease ends (LT keeps an earlier due time if one is set).
  redis.call('ZADD', KEYS[2], 'LT', lease, ARGV[1])
  return {OUT.busy, fmt(t)}
end
local j = redis.call('HMGET', KEYS[1], 'endpoint', 'created_at', 'max_wait', 'queue', 'priority')
local deadline = tonumber(j[2] or '0') + tonumber(j[3] or '0')
if j[1] and t < deadline then
  -- A more urgent job was woken for a freed slot: leave the slot to it.
  local held = held_for_more_urgent(j[1], tonumber(j[5] or '0'), t)
  if held then
    redis.call('HINCRBY', KEYS[1], 'deferrals', 1)
    schedule_job(KEYS[1], KEYS[2], ARGV[1], st, math.min(deadline, held), t)
    return {OUT.deferred, fmt(t)}
  end
  local g = gate_key(j[1])
  local rate = tonumber(ARGV[5])
  local pk = pending_key(j[4] or '', j[1])
  local wait, spread_rate = gate_take(g, j[1], t, rate, tonumber(ARGV[6]), tonumber(ARGV[7]),
    pk, KEYS[2])
  if wait > 0 then
    -- No budget: wait in Redis, not in a worker, for the endpoint's next free
    -- slot: deferred jobs queue up one budget interval apart (`next_slot`), so
    -- thousands deferred at once come back at about the budget's rate, from
    -- now on, not all together. The queue is never longer than the pending
    -- jobs need (jobs that ended leave no gaps). The full rate, not the
    -- backed-off one: slots locked in at a low rate would keep the fleet slow
    -- long after 429s stop.
    local due = t + wait + tonumber(ARGV[8]) * tonumber(ARGV[9])
    if spread_rate > 0 then
      local n = tonumber(redis.call('ZCARD', pk))
      local tail = tonumber(redis.call('HGET', g, 'next_slot') or '0')
      due = math.min(math.max(t + wait, tail), t + wait + n / spread_rate)
      redis.call('HSET', g, 'next_slot', fmt(due + 1 / spread_rate))
    end
    due = math.min(deadline, due)
    redis.call('HINCRBY', KEYS[1], 'deferrals', 1)
    schedule_job(KEYS[1], KEYS[2], ARGV[1], st, due, t)
    return {OUT.deferred, fmt(t)}
  end
end
local until_ = t + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'lease_until', fmt(until_), 'lease_token', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZADD', KEYS[2], until_, ARGV[1])
return append_fields({OUT.ok, fmt(t)}, KEYS[1])
