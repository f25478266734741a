-- submit: enqueue one job, unless its id is known (queued, running, or finished and not expired).
-- KEYS[1] doc: the result document
-- KEYS[2] record: arq's job record
-- KEYS[3] LEVELS: the priorities with ready jobs
-- KEYS[4] LEASES: running jobs, by when their lease runs out
-- KEYS[5] DELAYED: deferred jobs, by when they are due
-- KEYS[6] ROUTES: each queued job's priority, place and fairness key
-- KEYS[7] SEQUENCE: the counter of places in line
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), job records (RECORD_PREFIX).
-- ARGV[1] job_id
-- ARGV[2] record_json: the job record (arq's fields, JSON)
-- ARGV[3] doc_json: the queued result document
-- ARGV[4] ttl_ms: how long the record and the document live
-- ARGV[5] priority: '0' to '9'
-- ARGV[6] fairness_key
-- ARGV[7] request: the digest of the request (PromptJob.request)
-- Returns ENQUEUED; ALREADY_KNOWN when the id was known with the same request, CONFLICT with
-- another (then nothing is written).
--!include queue
--!include memory
--!include request
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
make_ready(ARGV[1], ARGV[5], place, ARGV[6])
redis.call('PUBLISH', WAKE, '1')
return ENQUEUED
