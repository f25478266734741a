#!lua flags=allow-oom
-- limit_settle: after a call, move a token budget by what the call used beyond its estimate (a
-- negative number gives the unused part back). The TAT never moves before now: no credit.
-- KEYS[1] tpm_tat
-- ARGV[1] tpm: tokens a minute spaced for
-- ARGV[2] tokens: used minus estimated
-- Returns 1.
--!include clock
local now = now_ms()
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local moved = math.max(tat + tonumber(ARGV[2]) * 60000 / tonumber(ARGV[1]), now)
redis.call('SET', KEYS[1], tostring(moved), 'PX', math.ceil(moved - now) + 60000)
return 1
