--! uses: clock gate
-- The route budget in force for `dispatcher stats`.
-- KEYS: gate.  ARGV: rate, recover.  Returns {level, rate (0 = no limit)}.
local level, rate = gate_state(KEYS[1], now(), tonumber(ARGV[1]), tonumber(ARGV[2]))
return {level, fmt(rate)}
