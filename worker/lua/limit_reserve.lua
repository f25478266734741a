#!lua flags=allow-oom
-- limit_reserve: reserve one request, and an estimate of its tokens, in a model's budget. Each limit
-- is a GCRA over Redis time: its theoretical arrival time (TAT, ms) moves on by the request's cost
-- (60000 / rpm, or tokens * 60000 / tpm), and a request may go once now has reached it: no burst,
-- not even after an idle spell.
-- KEYS[1] rpm_tat
-- KEYS[2] tpm_tat
-- KEYS[3] cooldown: set while every worker pauses (a 429, or a server saying its budget is spent)
-- ARGV[1] rpm: requests a minute to space for (0: no request limit)
-- ARGV[2] tpm: tokens a minute (0: no token limit)
-- ARGV[3] tokens: the request's estimate (0: not counted)
-- ARGV[4] max_wait_ms: reserve nothing when the request could go only later than this
-- Returns {RESERVED, wait ms} when a reservation was made (go after wait ms), {NOT_RESERVED, wait ms} when none was
-- (a cool-down runs, or the wait is over the maximum): ask again after that wait, or give up.
--!include clock
local now = now_ms()
local cooldown = redis.call('PTTL', KEYS[3])
if cooldown > 0 then return {NOT_RESERVED, cooldown} end
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_wait_ms = tonumber(ARGV[4])
local at, tat_r, tat_t, step, cost = now, nil, nil, 0, 0
if rpm > 0 then
  step = 60000 / rpm
  tat_r = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  at = math.max(at, tat_r)
end
if tpm > 0 and tokens > 0 then
  cost = tokens * 60000 / tpm
  tat_t = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  at = math.max(at, tat_t)
end
local wait = math.ceil(at - now)
if wait > max_wait_ms then return {NOT_RESERVED, wait} end
if tat_r then
  local new = math.max(tat_r, at) + step
  redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil(new - now) + 60000)
end
if tat_t then
  local new = math.max(tat_t, at) + cost
  redis.call('SET', KEYS[2], tostring(new), 'PX', math.ceil(new - now) + 60000)
end
return {RESERVED, wait}
