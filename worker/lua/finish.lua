#!lua flags=allow-oom
-- finish: write the terminal documents of a group of jobs of one queue (those whose attempts ended
-- while the worker's previous finish was on its way: ``worker.settle``) and let go of each in the same
-- step: its record, try counter, lease and route go (and any place in line a lost lease gave it
-- meanwhile), so no redelivery can run it again once its result is stored. A failed job's record is
-- kept beside its result (for Producer.retry) and its id joins FAILED. A document cancelled meanwhile
-- is kept (the bookkeeping goes all the same). A streamed job's stream gets its done entry; waiters
-- get the document. The worker counts a job for the dashboard (roll_up.lua) when this says it ended
-- here: not when its document was terminal already (a second delivery's finish).
-- KEYS[1] LEVELS: the priorities with ready jobs
-- KEYS[2] LEASES: running jobs, by when their lease runs out
-- KEYS[3] DELAYED: deferred jobs, by when they are due
-- KEYS[4] ROUTES: each queued job's priority, place and fairness key
-- KEYS[5] FAILED: failed job ids, by when they failed
-- KEYS[6] WEBHOOKS: webhook deliveries, by when they are due
-- Keys it builds from the ids it is given or finds: result documents (RESULT_PREFIX), job records
--  (RECORD_PREFIX), try counters (TRIES_PREFIX), kept records (FAILED_JOB_PREFIX), event streams
--  (STREAM_PREFIX), ready sets (READY_PREFIX), active sets (ACTIVE_PREFIX), a webhook delivery
--  (WEBHOOK_PREFIX).
-- ARGV[1] ttl_ms
-- ARGV[2] now_ms: when they failed
-- ARGV[3..] jobs: per job its id, terminal document, status (succeeded or failed), streamed ('1'
--  for a streamed job) and webhook URL ('' none: else a delivery of the document is due once it
--  ended here)
-- Returns per job, in order: the cancelled document that was kept; else ENDED_HERE, or ENDED_BEFORE
-- when its document was terminal already.
--!include status
--!include queue
--!include webhook
local ttl, out, gone, ids = ARGV[1], {}, {}, {}
for n = 3, #ARGV, 5 do
  local id, doc, status = ARGV[n], ARGV[n + 1], ARGV[n + 2]
  local doc_key = RESULT_PREFIX .. id
  local current = redis.call('SET', doc_key, doc, 'PX', ttl, 'GET')
  local was = status_of(current)
  if was == 'cancelled' then
    redis.call('SET', doc_key, current, 'PX', ttl)  -- the cancel stands
    out[#out + 1] = current
  else
    if status == 'failed' then
      local record = redis.call('GET', RECORD_PREFIX .. id)
      if record then redis.call('SET', FAILED_JOB_PREFIX .. id, record, 'PX', ttl) end
      redis.call('ZADD', FAILED, ARGV[2], id)
      redis.call('ZREMRANGEBYRANK', FAILED, 0, -(FAILED_MAX + 1))
    end
    if ARGV[n + 3] == '1' then
      local stream = STREAM_PREFIX .. id
      redis.call('XADD', stream, 'MAXLEN', '~', STREAM_MAXLEN, '*', 'type', 'done', 'status', status)
      redis.call('PEXPIRE', stream, ttl)
    end
    redis.call('PUBLISH', DONE_PREFIX .. id, doc)
    if TERMINAL[was] then
      out[#out + 1] = ENDED_BEFORE
    else
      want_webhook(ARGV[n + 4], id, doc)
      out[#out + 1] = ENDED_HERE
    end
  end
  gone[#gone + 1] = RECORD_PREFIX .. id
  gone[#gone + 1] = TRIES_PREFIX .. id
  ids[#ids + 1] = id
end
redis.call('DEL', unpack(gone))
-- Out of the queue: the jobs still leased (the common case) leave LEASES and ROUTES together; any
-- other (its lease lost meanwhile) is looked for wherever it may be.
if #ids == 1 then
  unplace(ids[1])
else
  local leased, others = {}, {}
  for k, score in ipairs(redis.call('ZMSCORE', LEASES, unpack(ids))) do
    if score then leased[#leased + 1] = ids[k] else others[#others + 1] = ids[k] end
  end
  if #leased > 0 then
    redis.call('ZREM', LEASES, unpack(leased))
    redis.call('HDEL', ROUTES, unpack(leased))
  end
  for _, id in ipairs(others) do unplace(id) end
end
return out
