#!lua flags=allow-oom
-- unclaim: a claimed job ends its attempt without promptq's finish.
--   'forget': it ended all the same (its result was stored already, it was cancelled, or its record
--             could not be run): its record, try counter, lease and route go.
--   'defer':  a retry waits: out of LEASES, into DELAYED until now + delay_ms (Redis time).
--   'back':   an interrupted call (shutdown): back in line at its place now.
-- A job whose record is gone (cancelled meanwhile) is forgotten whatever the mode.
-- KEYS[1] record: arq's job record
-- KEYS[2] tries: arq's try counter
-- ARGV[1] job_id
-- ARGV[2] mode: forget, defer or back
-- ARGV[3] delay_ms: for defer
-- Returns 1 when the job is in line again (or waits), 0 when it was forgotten.
--!include clock
--!include queue
local id, mode = ARGV[1], ARGV[2]
if mode == 'forget' or redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  unplace(id)
  return 0
end
redis.call('ZREM', LEASES, id)
if mode == 'defer' then
  local due = now_ms() + tonumber(ARGV[3])
  redis.call('ZADD', DELAYED, due, id)
  return 1
end
if requeue(id) then return 1 end
return 0
