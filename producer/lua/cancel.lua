#!lua flags=allow-oom
-- cancel: mark a job cancelled, if its document is still the one the caller read (else 0: read again).
-- A job a worker holds (leased) is named on the cancel channel, where that worker stops its request
-- (or does not start it) and lets go of it; any other leaves whichever structure holds it (its ready
-- set, the delayed set), so it never calls the API. Either way the job's stream gets its done entry
-- and waiters hear of it. The job is counted as cancelled in the minute's roll-up and its batch's tally.
-- KEYS[1] doc: the result document
-- KEYS[2] record: arq's job record
-- KEYS[3] tries: arq's try counter
-- KEYS[4] stream: the job's event stream
-- KEYS[5] LEVELS: the priorities with ready jobs
-- KEYS[6] LEASES: running jobs, by when their lease runs out
-- KEYS[7] DELAYED: deferred jobs, by when they are due
-- KEYS[8] ROUTES: each queued job's priority, place and fairness key
-- KEYS[9] WEBHOOKS: webhook deliveries, by when they are due
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), job records (RECORD_PREFIX), minute roll-ups (STATS_PREFIX), batch tallies
--  (BATCH_TALLY_PREFIX), a webhook delivery (WEBHOOK_PREFIX: the record names a webhook_url).
-- ARGV[1] doc_as_read
-- ARGV[2] cancelled_doc
-- ARGV[3] job_id
-- ARGV[4] model ('' none)
-- ARGV[5] batch: the batch its id names ('' none)
-- Returns CANCELLED, or CHANGED_MEANWHILE when the document had changed (read it again).
--!include queue
--!include clock
--!include tally
--!include webhook
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return CHANGED_MEANWHILE end
want_webhook(webhook_of(redis.call('GET', KEYS[2])), ARGV[3], ARGV[2])
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
if redis.call('ZSCORE', LEASES, ARGV[3]) then
  redis.call('PUBLISH', CANCEL, ARGV[3])
else
  redis.call('DEL', KEYS[2], KEYS[3])
  unplace(ARGV[3])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', STREAM_MAXLEN, '*', 'type', 'done', 'status', 'cancelled')
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[4], ttl) end
redis.call('PUBLISH', DONE_PREFIX .. ARGV[3], ARGV[2])
local now = now_ms()
local model = {}
if ARGV[4] ~= '' then model[ARGV[4]] = {1, 0, 0, false} end
roll_up(math.floor(now / 60000), {s = {cancelled = 1}, m = model})
if ARGV[5] ~= '' then batch_up(ARGV[5], {0, 0, 1, 0, false}, now) end
return CANCELLED
