#!lua flags=no-writes
-- pending: whether any job is left to run or running: ready, leased, deferred, or in LEGACY_QUEUE.
-- Returns that count of structures holding jobs (0: nothing left).
return redis.call('EXISTS', LEVELS, LEASES, DELAYED, LEGACY_QUEUE)
