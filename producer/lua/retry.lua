-- retry: put a failed job back in line (a new place, at the back of its fairness key's), if it is
-- still failed and not queued again already (a second retry of the same id finds it queued).
-- KEYS[1] doc: the result document
-- KEYS[2] kept: the failed job's kept record
-- KEYS[3] record: arq's job record
-- KEYS[4] tries: arq's try counter
-- KEYS[5] LEVELS: the priorities with ready jobs
-- KEYS[6] LEASES: running jobs, by when their lease runs out
-- KEYS[7] DELAYED: deferred jobs, by when they are due
-- KEYS[8] ROUTES: each queued job's priority, place and fairness key
-- KEYS[9] SEQUENCE: the counter of places in line
-- KEYS[10] FAILED: failed job ids, by when they failed
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), job records (RECORD_PREFIX), batch tallies (BATCH_TALLY_PREFIX).
-- ARGV[1] job_id
-- ARGV[2] record_json: the record to run (the kept one, with a new enqueue time)
-- ARGV[3] doc_json: the queued result document
-- ARGV[4] ttl_ms
-- ARGV[5] priority
-- ARGV[6] fairness_key
-- ARGV[7] batch: the batch its id names ('' none): its tally counts one failed job fewer
-- Returns RETRIED, NO_DOCUMENT or NOT_FAILED.
--!include status
--!include queue
--!include memory
if full(#ARGV[2] + #ARGV[3]) then return redis.error_reply(FULL) end
local current = redis.call('GET', KEYS[1])
if not current then return NO_DOCUMENT end
if status_of(current) ~= 'failed' or redis.call('EXISTS', KEYS[3]) == 1 then return NOT_FAILED end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[4])
redis.call('DEL', KEYS[2], KEYS[4])
local place = redis.call('INCR', SEQUENCE)
set_route(ARGV[1], ARGV[5], place, ARGV[6])
make_ready(ARGV[1], ARGV[5], place, ARGV[6])
redis.call('ZREM', FAILED, ARGV[1])
if ARGV[7] ~= '' and redis.call('EXISTS', BATCH_TALLY_PREFIX .. ARGV[7]) == 1 then
  redis.call('HINCRBY', BATCH_TALLY_PREFIX .. ARGV[7], 'failed', -1)
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('PUBLISH', WAKE, '1')
return RETRIED
