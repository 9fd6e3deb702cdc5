--! uses: clock gate
-- Record what /route/ answered, for `dispatcher stats`, and react to 429s.
-- KEYS: gate.
-- ARGV: status_text, is_429 (0/1), recover, pause_base, pause_cap, endpoint, rate
--
-- A cut needs 429s to be a real share of the fleet's calls (1 in 5 or more over the last
-- two seconds): a rate limit answers most calls above it with 429, while a stray 429 says
-- nothing about our rate and must not slow the fleet down. 429s of calls already in
-- flight arrive together: only the first within a second raises the level, so one burst
-- halves the rate once, not ten times.
--
-- With no configured rate the cut also learns the rate Vast let through, and three
-- rules keep 429s that do not depend on our rate (an outage, noise) from spiralling that
-- figure down to nothing, the hidden throttle a fleet with no configured rate must never
-- have:
-- * a window of fewer than MIN_SAMPLE calls, or of calls in this second only, teaches
--   nothing: its 429s are delays (a rate read off a part-second is too rough to keep);
-- * a limit lets about as many calls through however many we make, so its share of 429s
--   falls as the fleet slows; noise refuses the same share of whatever we send: when,
--   after a cut, the fleet calls far less (3/5 or under), Vast lets through clearly
--   fewer (3/4 or under) and still refuses about the share it refused at the cut (3/4
--   of it or more), the 429s are noise: the cut is given back and for NOISE_HOLD
--   recover periods 429s are only delays. (Without the share test, a limit whose burst
--   inflated the figure read at the cut looked like noise, and the fleet stormed.)
-- * a learned rate never falls below half the most Vast let through lately
--   (BEST_HALF_LIFE seconds of memory), which a limit never reaches.
local MIN_SAMPLE = 10
local NOISE_HOLD = 6
local BEST_HALF_LIFE = 60
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
local learning = tonumber(ARGV[7]) <= 0
if limited * 5 < calls or (learning and (calls < MIN_SAMPLE or span < 1)) then
  return 0
end
local g = redis.call('HMGET', KEYS[1], 'cut_at', 'best', 'best_at', 'noisy_until',
  'cut_calls', 'cut_accepted', 'learned_before', 'cut_share')
local cut = tonumber(g[1] or '0')
if t - cut < 1 or tonumber(g[4] or '0') > t then
  return 0
end
local recover = math.max(1, tonumber(ARGV[3]))
local before = gate_state(KEYS[1], t, tonumber(ARGV[7]), tonumber(ARGV[3]))
local calls_s = calls / math.max(0.25, span)
local accepted = math.max(1, (calls - limited) / math.max(0.25, span))
local share = limited / calls
if learning then
  if g[6] and t - cut < 3 * recover and calls_s <= 0.6 * tonumber(g[5])
      and accepted <= 0.75 * tonumber(g[6]) and share >= 0.75 * tonumber(g[8] or '1') then
    redis.call('HSET', KEYS[1], 'noisy_until', fmt(t + NOISE_HOLD * recover),
      'level', math.max(0, before - 1), 'paused_until', fmt(t), 'learned', g[7] or '0')
    redis.call('HDEL', KEYS[1], 'cut_accepted')
    redis.call('HINCRBY', KEYS[1], 'noise_holds', 1)
    return 0
  end
  -- Learn what Vast let through over the window: from a fleet at full rate; or from a
  -- backed-off one still refused, when it let less through than the figure in force
  -- (that figure was too high: a burst read over a short window).
  local best = tonumber(g[2] or '0') * 0.5 ^ ((t - tonumber(g[3] or t)) / BEST_HALF_LIFE)
  if accepted >= best then
    best = accepted
    redis.call('HSET', KEYS[1], 'best', fmt(best), 'best_at', fmt(t))
  end
  local learned = redis.call('HGET', KEYS[1], 'learned')
  if before == 0 or (accepted < tonumber(learned or '0') and best / 2 < tonumber(learned)) then
    redis.call('HSET', KEYS[1], 'learned', fmt(math.max(accepted, best / 2)),
      'learned_before', learned or '0')
    before = 0
  end
  redis.call('HSET', KEYS[1], 'cut_calls', fmt(calls_s), 'cut_accepted', fmt(accepted),
    'cut_share', fmt(share))
end
local level = math.min(before + 1, 8)
local pause = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ (level - 1))
redis.call('HSET', KEYS[1], 'level', level, 'cut_at', fmt(t), 'paused_until', fmt(t + pause),
  'tokens', 0, 'ts', fmt(t + pause))
return level
