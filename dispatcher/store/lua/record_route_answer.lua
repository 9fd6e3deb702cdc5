--! uses: clock gate
-- Record what /route/ answered, for `dispatcher stats`, and react to 429s.
-- KEYS: gate.
-- ARGV: status_text, is_429 (0/1), recover, pause_base, pause_cap, endpoint, rate
-- A cut needs 429s to be a real share of the fleet's calls (1 in 5 or more over the
-- last two seconds; and at least MIN_SAMPLE calls to learn a rate from): a rate limit answers most calls above it with 429, while a stray
-- 429 says nothing about our rate and must not slow the fleet down. 429s of calls
-- already in flight arrive together: only the first within a second raises the level,
-- so one burst halves the rate once, not ten times.
-- A learned rate never falls below half the most Vast let through lately (BEST_HALF_LIFE
-- seconds of memory). A limit lets about the same number through whatever we call, so
-- the floor never binds it; 429s that do not depend on our rate (an outage, noise) let
-- through a share of what we call, and without the floor every cut would learn less than
-- the last: a spiral down to nothing, the hidden throttle a fleet with no configured rate
-- must never have.
local BEST_HALF_LIFE = 60
-- With no configured rate, fewer calls than this in the window say too little to learn a
-- limit from: their 429s are delays.
local MIN_SAMPLE = 10
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
calls = math.max(calls, limited) -- every 429 answered a call, counted or not
if limited * 5 < calls or (calls < MIN_SAMPLE and tonumber(ARGV[7]) <= 0) then
  return 0
end
local g = redis.call('HMGET', KEYS[1], 'cut_at', 'best', 'best_at')
local cut = tonumber(g[1] or '0')
if t - cut < 1 then
  return 0
end
local before = gate_state(KEYS[1], t, tonumber(ARGV[7]), tonumber(ARGV[3]))
if tonumber(ARGV[7]) <= 0 then
  -- No configured rate: learn the one Vast let through over the window. From a
  -- fleet at full rate; or from a backed-off one still refused, when it let
  -- less through than the figure in force: that figure was too high (a burst
  -- read over a short window), and halving it again and again would keep the
  -- fleet swinging between 429 storms and pauses.
  local accepted = math.max(1, (calls - limited) / math.max(0.25, span))
  local best = tonumber(g[2] or '0') * 0.5 ^ ((t - tonumber(g[3] or t)) / BEST_HALF_LIFE)
  if accepted >= best then
    best = accepted
    redis.call('HSET', KEYS[1], 'best', fmt(best), 'best_at', fmt(t))
  end
  local learned = tonumber(redis.call('HGET', KEYS[1], 'learned') or '0')
  if before == 0 or accepted < learned then
    local floor = best / 2
    if before == 0 or floor < learned then
      redis.call('HSET', KEYS[1], 'learned', fmt(math.max(accepted, floor)))
      before = 0
    end
  end
end
local level = math.min(before + 1, 8)
local pause = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ (level - 1))
redis.call('HSET', KEYS[1], 'level', level, 'cut_at', fmt(t), 'paused_until', fmt(t + pause),
  'tokens', 0, 'ts', fmt(t + pause))
return level
