#!lua flags=allow-oom
-- batch_settle: the answers read from a provider batch's output and error files, settled for a run of
-- its jobs in one step. A job leaves the provider batch's jobs as its answer is settled (a job no
-- longer there was settled before: a second reading after a crash changes nothing). Then, by `how`:
--  succeeded, failed: as finish.lua: the terminal document, the record, try counter and route gone
--   (a failed job's record kept beside its result, its id in FAILED), waiters told;
--  again: its line failed with a retryable error, or its provider batch expired or was cancelled
--   before answering it, and it has tries left: its document (batched, with the error) is written,
--   its try counted, and it joins its collection again for a later file;
--  live: its provider batch expired (PROMPTQ_BATCH_EXPIRED=live): its try given back, back in line
--   at its place to run live, named in RUN_LIVE so that its next attempt calls the API.
-- A job sent again has its record and document kept keep_ms at least. A job whose document is
-- terminal (cancelled while it was in the provider batch) keeps it: its answer is dropped, and its
-- record, try counter and route go. A failed one whose record expired (it cannot be sent again)
-- fails without it.
-- KEYS[1] jobs: the provider batch's jobs whose answer is not read yet
-- KEYS[2] collect: its collection's jobs (for again and back)
-- KEYS[3] LEVELS: the priorities with ready jobs
-- KEYS[4] LEASES: running jobs, by when their lease runs out
-- KEYS[5] DELAYED: deferred jobs, by when they are due
-- KEYS[6] ROUTES: each queued job's priority, place and fairness key
-- KEYS[7] FAILED: failed job ids, by when they failed
-- KEYS[8] COLLECTING: the collections with jobs, by when their oldest joined
-- KEYS[9] RUN_LIVE: jobs whose next attempt runs live
-- KEYS[10] WEBHOOKS: webhook deliveries, by when they are due
-- Keys it builds from the ids it is given: result documents (RESULT_PREFIX), job records
--  (RECORD_PREFIX), try counters (TRIES_PREFIX), kept records (FAILED_JOB_PREFIX), ready sets
--  (READY_PREFIX), active sets (ACTIVE_PREFIX), webhook deliveries (WEBHOOK_PREFIX: a job that ends
--  here and whose record names one).
-- ARGV[1] ttl_ms: a terminal document's time to live
-- ARGV[2] collection: the provider batch's collection
-- ARGV[3] keep_ms: a job sent again (again, live) has its record and document kept this long at least
-- ARGV[4..] answers: job id, how, document, job id, how, document...
-- Returns, for each answer, 1 when it was settled here, 0 when not (settled before, or cancelled).
--!include status
--!include clock
--!include queue
--!include webhook
local now = now_ms()
local keep_ms = tonumber(ARGV[3])
local settled, woken = {}, false
for i = 4, #ARGV, 3 do
  local id, how, doc = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local result_key, record_key = RESULT_PREFIX .. id, RECORD_PREFIX .. id
  local done = 0
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local current = redis.call('GET', result_key)
    local record = redis.call('GET', record_key)
    if TERMINAL[status_of(current)] then  -- cancelled meanwhile: its answer is dropped
      redis.call('DEL', record_key, TRIES_PREFIX .. id)
      unplace(id)
    elseif how == 'succeeded' or how == 'failed' then
      redis.call('SET', result_key, doc, 'PX', ARGV[1])
      if how == 'failed' then
        if record then redis.call('SET', FAILED_JOB_PREFIX .. id, record, 'PX', ARGV[1]) end
        redis.call('ZADD', FAILED, now, id)
        redis.call('ZREMRANGEBYRANK', FAILED, 0, -(FAILED_MAX + 1))
      end
      want_webhook(webhook_of(record), id, doc)
      redis.call('DEL', record_key, TRIES_PREFIX .. id)
      unplace(id)
      redis.call('PUBLISH', DONE_PREFIX .. id, doc)
      done = 1
    elseif record then
      redis.call('SET', result_key, doc, 'KEEPTTL')
      keep_at_least({result_key, record_key}, keep_ms)
      if how == 'again' then redis.call('INCR', TRIES_PREFIX .. id) end
      if how == 'live' then
        if tonumber(redis.call('GET', TRIES_PREFIX .. id) or '0') > 0 then redis.call('DECR', TRIES_PREFIX .. id) end
        redis.call('SADD', RUN_LIVE, id)
        back_in_line(id)
        woken = true
      else
        redis.call('ZADD', KEYS[2], now, id)
        redis.call('ZADD', COLLECTING, 'NX', now, ARGV[2])
      end
      done = 1
    end
  end
  settled[#settled + 1] = done
end
if woken then redis.call('PUBLISH', WAKE, '1') end
return settled
