--! uses: clock gate
-- Record what /route/ answered, for `dispatcher stats`, and react to 429s.
-- KEYS: gate.
-- ARGV: status_text, is_429 (0/1), recover, pause_base, pause_cap, endpoint, rate
-- A cut needs 429s to be a real share of the fleet's calls (1 in 5 or more over the
-- last two seconds): a rate limit answers most calls above it with 429, while a stray
-- 429 says nothing about our rate and must not slow the fleet down. 429s of calls
-- already in flight arrive together: only the first within a second raises the level,
-- so one burst halves the rate once, not ten times.
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
local cut = tonumber(redis.call('HGET', KEYS[1], 'cut_at') or '0')
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
  local learned = tonumber(redis.call('HGET', KEYS[1], 'learned') or '0')
  if before == 0 or accepted < learned then
    redis.call('HSET', KEYS[1], 'learned', fmt(accepted))
    before = 0
  end
end
local level = math.min(before + 1, 8)
local pause = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ (level - 1))
redis.call('HSET', KEYS[1], 'level', level, 'cut_at', fmt(t), 'paused_until', fmt(t + pause),
  'tokens', 0, 'ts', fmt(t + pause))
return level
