--! uses: clock gate
-- Record what /route/ answered, for `dispatcher stats`, and react to 429s.
-- KEYS: gate.
-- ARGV: status_text, is_429 (0/1), recover, pause_base, pause_cap, endpoint, rate
-- A cut needs 429s to be a real share of the fleet's calls (1 in 5 or more over the
-- last two seconds): a rate limit answers most calls above it with 429, while a stray
-- 429 says nothing about our rate and must not slow the fleet down. 429s of calls
-- already in flight arrive together: only the first within a second raises the level,
-- so one burst halves the rate once, not ten times.
-- A limit refuses a smaller share as the fleet calls less. So when, after a cut, the
-- fleet calls at most 3/4 as often and Vast still refuses as large a share (4/5 of it
-- or more), these 429s do not depend on our rate (an outage, noise): the cut is given
-- back and, for NOISE_HOLD recover periods, 429s are only delays for their jobs.
-- Otherwise a learned rate would spiral down to nothing: the hidden throttle a fleet
-- with no configured rate must never have.
local NOISE_HOLD = 6
local t = now()
redis.call('HSET', KEYS[1], 'last_status', ARGV[1], 'last_status_at', fmt(t))
if ARGV[2] ~= '1' then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'r429', 1)
local sec = math.floor(t)
redis.call('INCR', r429_key(ARGV[6], sec))
redis.call('EXPIRE', r429_key(ARGV[6], sec), COUNTER_TTL)
local calls, limited, span = 0, 0, 0
for s = sec - 1, sec do
  local c = tonumber(redis.call('GET', calls_key(ARGV[6], s)) or '0')
  if c > 0 and span == 0 then
    span = t - s -- the window starts with its first second that had calls
  end
  calls = calls + c
  limited = limited + tonumber(redis.call('GET', r429_key(ARGV[6], s)) or '0')
end
if limited * 5 < calls then
  return 0
end
local g = redis.call('HMGET', KEYS[1], 'cut_at', 'cut_share', 'cut_calls', 'noisy_until',
  'learned_before')
local cut = tonumber(g[1] or '0')
if t - cut < 1 or tonumber(g[4] or '0') > t then
  return 0
end
local recover = math.max(1, tonumber(ARGV[3]))
calls = math.max(calls, limited) -- every 429 answered a call, counted or not
local share = limited / calls
local calls_per_s = calls / math.max(0.25, span)
local before = gate_state(KEYS[1], t, tonumber(ARGV[7]), tonumber(ARGV[3]))
if tonumber(g[2] or '0') > 0 and t - cut < 3 * recover and calls_per_s <= 0.75 * tonumber(g[3])
    and share >= 0.8 * tonumber(g[2]) then
  redis.call('HSET', KEYS[1], 'noisy_until', fmt(t + NOISE_HOLD * recover),
    'level', math.max(0, before - 1), 'paused_until', fmt(t), 'cut_share', 0)
  if g[5] then
    redis.call('HSET', KEYS[1], 'learned', g[5])
  end
  redis.call('HINCRBY', KEYS[1], 'noise_holds', 1)
  return 0
end
if tonumber(ARGV[7]) <= 0 then
  -- No configured rate: learn the one Vast let through over the window. From a
  -- fleet at full rate; or from a backed-off one still refused, when it let
  -- less through than the figure in force: that figure was too high (a burst
  -- read over a short window), and halving it again and again would keep the
  -- fleet swinging between 429 storms and pauses.
  local accepted = math.max(1, (calls - limited) / math.max(0.25, span))
  local learned = redis.call('HGET', KEYS[1], 'learned')
  if before == 0 or accepted < tonumber(learned or '0') then
    redis.call('HSET', KEYS[1], 'learned', fmt(accepted), 'learned_before', learned or '0')
    before = 0
  end
end
local level = math.min(before + 1, 8)
local pause = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ (level - 1))
redis.call('HSET', KEYS[1], 'level', level, 'cut_at', fmt(t), 'paused_until', fmt(t + pause),
  'tokens', 0, 'ts', fmt(t + pause), 'cut_share', fmt(share), 'cut_calls', fmt(calls_per_s))
return level
