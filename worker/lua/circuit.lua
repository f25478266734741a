#!lua flags=allow-oom
-- circuit: record how a call to a backend ended, in its circuit breaker, shared by every worker.
-- "In a row" is in the order the calls were routed (Redis time), not the order their answers came:
-- the failures on record are those of calls routed after the latest-routed success. A success
-- forgets the failures of calls routed before it; a failure of a call routed before the latest
-- success is stale (the backend answered since). `failures` failures on record open the circuit
-- for `cool_down_ms`. While it is open, only the probe counts: its success closes the circuit, and
-- the recovery is counted and published on BACKENDS, where every worker makes the jobs waiting for a
-- backend in its queues due at once (``wait_over.lua``); its failure opens
-- it again for twice the last cool-down (at most `max_cool_down_ms`). The answers of calls routed
-- before it opened (in flight then) change nothing.
-- KEYS[1] circuit: the backend's circuit (a hash: fails, ok_at, open_until, cooldown_ms, opened_at,
--  probe_until, scout)
-- KEYS[2] failures: the failures on record (a sorted set of calls, by when they were routed)
-- KEYS[3] BACKEND_RECOVERIES: how many circuits have closed after being open
-- ARGV[1] ok: '1' the call succeeded (or the backend answered), '0' it failed with a retryable error
-- ARGV[2] probe: '1' the call was the probe
-- ARGV[3] failures_to_open: failures on record that open the circuit
-- ARGV[4] cool_down_ms: the first cool-down
-- ARGV[5] max_cool_down_ms
-- ARGV[6] routed_at: when the call was routed (ms, Redis time: route.lua's answer)
-- ARGV[7] call: the call's id (unique)
-- Returns {CIRCUIT_CLOSED, 0, 0}, {CIRCUIT_RECOVERED, 0, the recoveries count}, or {CIRCUIT_OPEN, ms until a
-- probe may go, 0}.
--!include clock
local now = now_ms()
local routed, probe = tonumber(ARGV[6]), ARGV[2] == '1'
local c = redis.call('HMGET', KEYS[1], 'open_until', 'cooldown_ms', 'ok_at')
local open_until, ok_at = tonumber(c[1] or '0'), tonumber(c[3] or '0')
if open_until > 0 then
  if not probe then return {CIRCUIT_OPEN, math.max(open_until - now, 0), 0} end  -- sent before it opened
  if ARGV[1] == '0' then
    local cool = math.min(tonumber(c[2] or ARGV[4]) * 2, tonumber(ARGV[5]))
    local due = string.format('%d', now + cool)
    redis.call('HSET', KEYS[1], 'open_until', due, 'cooldown_ms', cool, 'probe_until', '0')
    return {CIRCUIT_OPEN, cool, 0}
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  local count = redis.call('INCR', BACKEND_RECOVERIES)
  redis.call('PUBLISH', BACKENDS, count)
  return {CIRCUIT_RECOVERED, 0, count}
end
if ARGV[1] == '1' then
  if routed > ok_at then
    redis.call('HSET', KEYS[1], 'ok_at', string.format('%d', routed))
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', routed)
    if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('HDEL', KEYS[1], 'fails') end
  end
  return {CIRCUIT_CLOSED, 0, 0}
end
if routed <= ok_at then return {CIRCUIT_CLOSED, 0, 0} end  -- stale: a call routed after it succeeded
redis.call('ZADD', KEYS[2], routed, ARGV[7])
local fails = redis.call('ZCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'fails', fails)
if fails < tonumber(ARGV[3]) then return {CIRCUIT_CLOSED, 0, 0} end
local cool = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'open_until', string.format('%d', now + cool), 'cooldown_ms', cool,
  'opened_at', string.format('%d', now))
redis.call('DEL', KEYS[2])
return {CIRCUIT_OPEN, cool, 0}
