#!lua flags=allow-oom
-- wait_over: a backend recovered (its circuit closed: ``circuit.lua`` counted it and published the
-- count on BACKENDS): every job of this queue waiting for a backend is due now, and the queue keeps
-- the count, so that a job told every backend was down before it (``defer.lua``) does not wait.
-- KEYS[1] DELAYED: deferred jobs, by when they are due
-- KEYS[2] BACKEND_WAITS: jobs waiting for a backend
-- KEYS[3] RECOVERIES: the backends' recoveries count this queue has heard of
-- ARGV[1] recoveries: the count published
-- Returns how many jobs were made due.
--!include clock
local now = now_ms()
if tonumber(redis.call('GET', RECOVERIES) or '0') < tonumber(ARGV[1]) then redis.call('SET', RECOVERIES, ARGV[1]) end
local waiting = redis.call('ZRANGE', BACKEND_WAITS, 0, -1)
for _, id in ipairs(waiting) do redis.call('ZADD', DELAYED, 'XX', now, id) end
redis.call('DEL', BACKEND_WAITS)
return #waiting
