-- submit: enqueue one job, unless its id is known (queued, running, or finished and not expired).
-- KEYS[1] doc: the result document
-- KEYS[2] record: arq's job record
-- KEYS[3] LEVELS: the priorities with ready jobs
-- KEYS[4] LEASES: running jobs, by when their lease runs out
-- KEYS[5] DELAYED: deferred jobs, by when they are due
-- KEYS[6] ROUTES: each queued job's priority, place and fairness key
-- KEYS[7] SEQUENCE: the counter of places in line
-- KEYS[8] PARKED: idle workers a submit may hand a job to (claim.lua parks them)
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), job records (RECORD_PREFIX), try counters (TRIES_PREFIX).
-- ARGV[1] job_id
-- ARGV[2] record_json: the job record (arq's fields, JSON)
-- ARGV[3] doc_json: the queued result document
-- ARGV[4] ttl_ms: how long the record and the document live
-- ARGV[5] priority: '0' to '9'
-- ARGV[6] fairness_key
-- ARGV[7] request: the digest of the request (PromptJob.request)
-- Returns ENQUEUED; ALREADY_KNOWN when the id was known with the same request, CONFLICT with
-- another (then nothing is written).
-- A new job goes in line and the queue's workers are woken; or, when no job is ready in the queue
-- (it would pass none) and a worker is parked, it is handed to that worker at once: leased to it,
-- its first try counted and its document marked running, as a claim does, and published on the
-- worker's handoff channel (`{now_ms} {urgent: 1 or 0} {job_id}`, a newline, its record).
--!include queue
--!include memory
--!include request
--!include clock
--!include document

-- hand_off(): whether the job was handed to a parked worker (one drawn at random). It is not when
-- a job is due before it (a retry whose wait is over, a lease that ran out: the next claim puts
-- them in line), when the parking ran out (the entry is dropped), or when nobody hears the worker's
-- channel (its connection is gone: the entry is dropped); the job then goes in line.
local function hand_off()
  if redis.call('EXISTS', LEVELS) == 1 then return false end
  local drawn = redis.call('HRANDFIELD', PARKED, 1, 'WITHVALUES')
  if #drawn == 0 then return false end
  local worker = drawn[1]
  local until_ms, free, lease_ms, model_json = string.match(drawn[2], '^(%d+) (%d+) (%d+) (.*)$')
  local now = now_ms()
  if not until_ms or tonumber(until_ms) <= now then
    redis.call('HDEL', PARKED, worker)
    return false
  end
  free = tonumber(free)
  if free < 1 then return false end  -- (its slots on offer all taken: the entry stays, for its claim)
  if #redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, 1) > 0
    or #redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, 1) > 0 then
    return false
  end
  local urgent = ARGV[5] == '0' and '1' or '0'
  -- (published first: the worker reads it only once this script is over, its writes done)
  if redis.call('PUBLISH', HANDOFF .. worker, now .. ' ' .. urgent .. ' ' .. ARGV[1] .. '\n' .. ARGV[2]) == 0 then
    redis.call('HDEL', PARKED, worker)
    return false
  end
  redis.call('HSET', PARKED, worker, until_ms .. ' ' .. (free - 1) .. ' ' .. lease_ms .. ' ' .. model_json)
  redis.call('ZADD', LEASES, now + tonumber(lease_ms), ARGV[1])
  redis.call('SET', TRIES_PREFIX .. ARGV[1], 1, 'EX', TRIES_TTL_S)
  local doc = running(ARGV[3], 1, seconds_text(now), model_json)
  if doc then redis.call('SET', KEYS[1], doc, 'KEEPTTL') end
  return true
end

if full(#ARGV[2] + #ARGV[3]) then return redis.error_reply(FULL) end
-- The document is written only if the id has none (its old one is read in the same command); then
-- the record, only if it has none (a record without its document: known, the document undone).
local known = redis.call('SET', KEYS[1], ARGV[3], 'NX', 'GET', 'PX', ARGV[4])
if known then
  if same_request(known, ARGV[7]) then return ALREADY_KNOWN end
  return CONFLICT
end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[4]) then
  redis.call('DEL', KEYS[1])
  return ALREADY_KNOWN
end
local place = redis.call('INCR', SEQUENCE)
set_route(ARGV[1], ARGV[5], place, ARGV[6])
if not hand_off() then
  make_ready(ARGV[1], ARGV[5], place, ARGV[6])
  redis.call('PUBLISH', WAKE, '1')
end
return ENQUEUED
