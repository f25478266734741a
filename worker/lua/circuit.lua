#!lua flags=allow-oom
-- circuit: record how a call to a backend ended, in its circuit breaker, shared by every worker.
-- A success closes the circuit (and forgets its failures); when it was open, every job waiting for a
-- backend is due at once (and idle workers are woken on WAKE). A retryable failure (not a 429) counts: `failures` in a row open it for
-- `cool_down_ms`. While it is open, only the probe's failure counts: it opens again for twice the
-- last cool-down (at most `max_cool_down_ms`). A failure of a call sent before the circuit opened
-- changes nothing.
-- KEYS[1] circuit: the backend's circuit (a hash: fails, open_until, cooldown_ms, opened_at,
--  probe_until, scout)
-- KEYS[2] DELAYED: deferred jobs, by when they are due
-- KEYS[3] BACKEND_WAITS: jobs waiting for a backend
-- KEYS[4] RECOVERIES: how many circuits have closed after being open
-- ARGV[1] ok: '1' the call succeeded, '0' it failed with a retryable error
-- ARGV[2] probe: '1' the call was the probe
-- ARGV[3] failures: failures in a row that open the circuit
-- ARGV[4] cool_down_ms: the first cool-down
-- ARGV[5] max_cool_down_ms
-- Returns {CIRCUIT_CLOSED, 0, 0}, {CIRCUIT_RECOVERED, 0, jobs made due}, or {CIRCUIT_OPEN, ms until a
-- probe may go, 0}.
--!include clock
local now = now_ms()
local c = redis.call('HMGET', KEYS[1], 'open_until', 'cooldown_ms')
local open_until = tonumber(c[1] or '0')
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  if open_until == 0 then return {CIRCUIT_CLOSED, 0, 0} end
  redis.call('INCR', RECOVERIES)
  local waiting = redis.call('ZRANGE', BACKEND_WAITS, 0, -1)
  for _, id in ipairs(waiting) do redis.call('ZADD', DELAYED, 'XX', now, id) end
  redis.call('DEL', BACKEND_WAITS)
  redis.call('PUBLISH', WAKE, '1')
  return {CIRCUIT_RECOVERED, 0, #waiting}
end
if open_until == 0 then
  if redis.call('HINCRBY', KEYS[1], 'fails', 1) < tonumber(ARGV[3]) then return {CIRCUIT_CLOSED, 0, 0} end
  local cool = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'open_until', string.format('%d', now + cool), 'cooldown_ms', cool,
    'opened_at', string.format('%d', now))
  return {CIRCUIT_OPEN, cool, 0}
end
if ARGV[2] == '1' then
  local cool = math.min(tonumber(c[2] or ARGV[4]) * 2, tonumber(ARGV[5]))
  local due = string.format('%d', now + cool)
  redis.call('HSET', KEYS[1], 'open_until', due, 'cooldown_ms', cool, 'probe_until', '0')
  return {CIRCUIT_OPEN, cool, 0}
end
return {CIRCUIT_OPEN, math.max(open_until - now, 0), 0}
