#!lua flags=allow-oom
-- defer: a running job's attempt ended without its result and the job waits for another, in one
-- step: its document goes back to queued, and the job leaves the lease set for the delayed set until
-- now + delay_ms (Redis time) or, with delay_ms 0, goes back in line at its place at once. The try
-- stays spent when the attempt counted (a retry after its backoff) and is given back when it did not
-- (a shutdown interrupted the call; the rate-limit budget was too far away; every backend was down).
-- A job that ended meanwhile (its document terminal: cancelled; or its record gone) is let go of
-- instead: its record, try counter, lease and route go, and the stored document is returned.
-- KEYS[1] doc: the result document
-- KEYS[2] record: arq's job record
-- KEYS[3] tries: arq's try counter, which the claim raised when it handed the job out
-- KEYS[4] LEVELS: the priorities with ready jobs
-- KEYS[5] LEASES: running jobs, by when their lease runs out
-- KEYS[6] DELAYED: deferred jobs, by when they are due
-- KEYS[7] ROUTES: each queued job's priority, place and fairness key
-- KEYS[8] BACKEND_WAITS: jobs waiting for a backend
-- KEYS[9] RECOVERIES: the backends' recoveries count this queue has heard of (``wait_over.lua``)
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), job records (RECORD_PREFIX).
-- ARGV[1] job_id
-- ARGV[2] doc_json: the queued document
-- ARGV[3] ttl_ms: its time to live, if the document has none yet (else the current one is kept)
-- ARGV[4] delay_ms: how long the job waits (0: back in line now)
-- ARGV[5] try_spent: '1' keeps arq's try, '0' gives it back
-- ARGV[6] for_backend: '1' the job waits for a backend (every backend of its model is down): it is
--  due at once when a circuit closes
-- ARGV[7] recoveries: with for_backend, the backends' recoveries count when the job was told every
--  backend was down: if this queue has heard of a later one, the job goes back in line at once
-- ARGV[8] keep_ms: the record and the document live at least this long from now (0: as they are;
--  a job held for days, for its tenant's next budget period, must not expire meanwhile)
-- Returns the stored terminal document (the job was let go of), or false.
--!include status
--!include clock
--!include queue
--!include let_go
local id = ARGV[1]
local stored = false
if redis.call('EXISTS', KEYS[2]) == 1 then
  stored = write_unless_terminal(KEYS[1], ARGV[2], ARGV[3])
  if not stored then
    if ARGV[5] == '0' and tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
    redis.call('ZREM', LEASES, id)
    local keep_ms = tonumber(ARGV[8])
    if keep_ms > 0 then keep_at_least({KEYS[1], KEYS[2]}, keep_ms) end
    local delay_ms = tonumber(ARGV[4])
    if ARGV[6] == '1' and tonumber(redis.call('GET', RECOVERIES) or '0') > tonumber(ARGV[7]) then delay_ms = 0 end
    if delay_ms > 0 then
      redis.call('ZADD', DELAYED, now_ms() + delay_ms, id)
      if ARGV[6] == '1' then redis.call('ZADD', BACKEND_WAITS, now_ms(), id) end
    else
      back_in_line(id)
    end
    return false
  end
end
return let_go(id, KEYS[1], KEYS[2], KEYS[3], stored)
