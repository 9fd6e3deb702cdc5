--! A job's fields but its payload: a job is read many times while it waits, and
--! its payload (up to megabytes) is needed only once it has a GPU worker.
local function append_fields(out, job)
  local h = redis.call('HGETALL', job)
  for i = 1, #h, 2 do
    if h[i] ~= 'payload' then
      out[#out + 1] = h[i]
      out[#out + 1] = h[i + 1]
    end
  end
  return out
end
