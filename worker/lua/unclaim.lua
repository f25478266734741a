#!lua flags=allow-oom
-- unclaim: a job a claim handed to this worker whose attempt never began. The claim counted its try
-- (claim.lua): the try is given back, if the counter still holds the claim's count (a later claim's
-- is left as it is). With `back` '1' (the worker let go of the job before it began: a shutdown), the
-- job also leaves the lease set and goes back in line at its place now, if it is still leased and
-- its try was given back (else a later claim holds it, and it is left to that one); with
-- '0' (the job was still running here from an earlier claim, whose attempt goes on) only the try.
-- A job back in line has its document say so again (queued, the try given back, not started) and
-- wakes the queue's workers (another may have a slot for it now).
-- KEYS[1] tries: arq's try counter
-- KEYS[2] LEVELS: the priorities with ready jobs
-- KEYS[3] LEASES: running jobs, by when their lease runs out
-- KEYS[4] DELAYED: deferred jobs, by when they are due (the queue's helpers name it)
-- KEYS[5] ROUTES: each queued job's priority, place and fairness key
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), job records (RECORD_PREFIX), result documents (RESULT_PREFIX).
-- ARGV[1] job_id
-- ARGV[2] claimed_try: the try the claim counted
-- ARGV[3] back: '1' the job goes back in line, '0' only its try is given back
-- Returns 1 when the try was given back, else 0.
--!include queue
--!include status
--!include document
local id, given = ARGV[1], 0
if redis.call('GET', KEYS[1]) == ARGV[2] then
  local try = tonumber(ARGV[2]) - 1
  if try > 0 then redis.call('SET', KEYS[1], try, 'KEEPTTL') else redis.call('DEL', KEYS[1]) end
  given = 1
end
if ARGV[3] == '1' and given == 1 and redis.call('ZREM', LEASES, id) == 1 and back_in_line(id) then
  local raw = redis.call('GET', RESULT_PREFIX .. id)
  if raw and status_of(raw) == 'running' then
    local queued = with_fields(raw, {status = '"queued"', attempts = tostring(tonumber(ARGV[2]) - 1), started_at = 'null'})
    if queued then redis.call('SET', RESULT_PREFIX .. id, queued, 'KEEPTTL') end
  end
  redis.call('PUBLISH', WAKE, '1')
end
return given
