#!lua
-- open_batch: start a batch's tally before its jobs are submitted (so that none ends uncounted):
-- its total and submit time are set, counts already there stay (a batch submitted again enqueues
-- nothing new); the batch joins BATCHES (the newest BATCHES_MAX kept). Lists show a batch once its
-- manifest is saved, after its jobs.
-- KEYS[1] tally: the batch's tally
-- KEYS[2] BATCHES: batch names, by submit time
-- ARGV[1] name
-- ARGV[2] total: its jobs
-- ARGV[3] ttl_ms: as long as its jobs are kept
-- Returns the submit time (ms, Redis time).
--!include clock
local now = now_ms()
redis.call('HSET', KEYS[1], 'total', ARGV[2], 'submitted_ms', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', BATCHES, now, ARGV[1])
redis.call('ZREMRANGEBYRANK', BATCHES, 0, -(BATCHES_MAX + 1))
return now
