#!lua flags=allow-oom
-- collect: a batch-tier job a worker claimed joins its collection, to be sent in a provider batch,
-- in one step: its document becomes batched (the backend chosen), the job leaves the lease set (its
-- record stays: it holds the request the provider batch's line is made of; its route too: its place
-- should it run live later) and joins the collection, which joins COLLECTING if it had no job. Its
-- try stays spent: the provider batch is its attempt. The record and the document are kept at least
-- keep_ms from now (a provider batch may take a day). A job that ended meanwhile (its document
-- terminal: cancelled) is let go of instead: its record, try counter, lease and route go, and the
-- stored document is returned. A job this attempt no longer holds (its lease ran out and it went back
-- in line, or another worker claimed it since: its try counter moved on) is left as it is.
-- KEYS[1] doc: the result document
-- KEYS[2] record: arq's job record
-- KEYS[3] tries: arq's try counter
-- KEYS[4] collect: the collection's jobs
-- KEYS[5] LEVELS: the priorities with ready jobs
-- KEYS[6] LEASES: running jobs, by when their lease runs out
-- KEYS[7] DELAYED: deferred jobs, by when they are due
-- KEYS[8] ROUTES: each queued job's priority, place and fairness key
-- KEYS[9] COLLECTING: the collections with jobs, by when their oldest joined
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), job records (RECORD_PREFIX).
-- ARGV[1] job_id
-- ARGV[2] doc_json: the batched document
-- ARGV[3] collection: its name ("{backend} {endpoint} {model}")
-- ARGV[4] keep_ms: the record and the document live at least this long from now
-- ARGV[5] attempt: the attempt's number (arq's try counter when it was claimed)
-- Returns COLLECTED, LEASE_LOST, or the stored terminal document (the job was let go of).
--!include status
--!include clock
--!include queue
--!include let_go
local id = ARGV[1]
local held = redis.call('ZSCORE', LEASES, id) and redis.call('GET', KEYS[3]) == ARGV[5]
if redis.call('EXISTS', KEYS[2]) == 0 then return let_go(id, KEYS[1], KEYS[2], KEYS[3], false) end
if not held then return LEASE_LOST end
local stored = write_unless_terminal(KEYS[1], ARGV[2], ARGV[4])
if stored then return let_go(id, KEYS[1], KEYS[2], KEYS[3], stored) end
redis.call('ZREM', LEASES, id)
keep_at_least({KEYS[1], KEYS[2]}, tonumber(ARGV[4]))
local now = now_ms()
redis.call('ZADD', KEYS[4], now, id)
redis.call('ZADD', COLLECTING, 'NX', now, ARGV[3])
return COLLECTED
