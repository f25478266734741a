#!lua flags=allow-oom
-- finish: write a job's terminal document and let go of it in the same step: its record, try
-- counter, lease and route go (and any place in line a lost lease gave it meanwhile), so no
-- redelivery can run it again once its result is stored. A failed job's record is kept beside its
-- result (for Producer.retry) and its id joins FAILED. A document cancelled meanwhile is kept (the
-- bookkeeping goes all the same). A streamed job's stream gets its done entry; waiters get the document.
-- The worker counts the job for the dashboard (roll_up.lua) when this says it ended here: not when
-- its document was terminal already (a second delivery's finish).
-- KEYS[1] doc: the result document
-- KEYS[2] record: arq's job record
-- KEYS[3] tries: arq's try counter
-- KEYS[4] kept: where a failed job's record is kept
-- KEYS[5] stream: the job's event stream
-- KEYS[6] LEVELS: the priorities with ready jobs
-- KEYS[7] LEASES: running jobs, by when their lease runs out
-- KEYS[8] DELAYED: deferred jobs, by when they are due
-- KEYS[9] ROUTES: each queued job's priority, place and fairness key
-- KEYS[10] FAILED: failed job ids, by when they failed
-- KEYS[11] WEBHOOKS: webhook deliveries, by when they are due
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), job records (RECORD_PREFIX), a webhook delivery (WEBHOOK_PREFIX).
-- ARGV[1] job_id
-- ARGV[2] doc_json: the terminal document
-- ARGV[3] ttl_ms
-- ARGV[4] status: succeeded or failed
-- ARGV[5] now_ms: when it failed
-- ARGV[6] streamed: '1' for a streamed job
-- ARGV[7] webhook_url: the job's webhook ('' none): a delivery of the document is due once it ended here
-- Returns the cancelled document that was kept; else ENDED_HERE, or ENDED_BEFORE when its document
-- was terminal already.
--!include status
--!include queue
--!include webhook
local current = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'GET')
local was = status_of(current)
local cancelled = was == 'cancelled'
if cancelled then
  redis.call('SET', KEYS[1], current, 'PX', ARGV[3])  -- the cancel stands
else
  if ARGV[4] == 'failed' then
    local record = redis.call('GET', KEYS[2])
    if record then redis.call('SET', KEYS[4], record, 'PX', ARGV[3]) end
    redis.call('ZADD', FAILED, ARGV[5], ARGV[1])
    redis.call('ZREMRANGEBYRANK', FAILED, 0, -(FAILED_MAX + 1))
  end
end
redis.call('DEL', KEYS[2], KEYS[3])
unplace(ARGV[1])
if cancelled then return current end
if ARGV[6] == '1' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', STREAM_MAXLEN, '*', 'type', 'done', 'status', ARGV[4])
  redis.call('PEXPIRE', KEYS[5], ARGV[3])
end
redis.call('PUBLISH', DONE_PREFIX .. ARGV[1], ARGV[2])
if TERMINAL[was] then return ENDED_BEFORE end
want_webhook(ARGV[7], ARGV[1], ARGV[2])
return ENDED_HERE
