#!lua flags=no-writes
-- pending: whether any job is left to run or running: ready, leased, deferred.
-- Returns that count of structures holding jobs (0: nothing left).
-- KEYS[1] LEVELS: the priorities with ready jobs
-- KEYS[2] LEASES: running jobs, by when their lease runs out
-- KEYS[3] DELAYED: deferred jobs, by when they are due
return redis.call('EXISTS', LEVELS, LEASES, DELAYED)
