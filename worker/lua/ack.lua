#!lua flags=allow-oom
-- ack: let go of a claimed job that ended without a result of this attempt's: it was cancelled (the
-- cancelled document stays), or arq could not run it (its record gone or unreadable). Its record, try
-- counter, lease and route go.
-- KEYS[1] record: arq's job record
-- KEYS[2] tries: arq's try counter
-- KEYS[3] LEVELS: the priorities with ready jobs
-- KEYS[4] LEASES: running jobs, by when their lease runs out
-- KEYS[5] DELAYED: deferred jobs, by when they are due
-- KEYS[6] ROUTES: each queued job's priority, place and fairness key
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), job records (RECORD_PREFIX).
-- ARGV[1] job_id
-- Returns 1.
--!include queue
redis.call('DEL', KEYS[1], KEYS[2])
unplace(ARGV[1])
return 1
