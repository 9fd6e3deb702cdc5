--! Waiters hear of a job's changes from the script that makes them, not by polling.
--! Every status change is PUBLISHed on the job's events channel (watchers). The end
--! is also pushed to the job's done list, kept NOTIFY_TTL seconds: a waiter blocks on
--! it with BLMOVE from the list onto itself, so all waiters wake (the element stays)
--! and one that arrives just after the end returns at once.
local function notify(id, status)
  if not status then return end
  redis.call('PUBLISH', events_key(id), status)
  if TERMINAL[status] then
    local k = done_key(id)
    redis.call('DEL', k)
    redis.call('RPUSH', k, status)
    redis.call('EXPIRE', k, NOTIFY_TTL)
  end
end
