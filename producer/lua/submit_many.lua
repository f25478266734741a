-- submit_many: enqueue a chunk of jobs in one call, each as submit does (a known id is skipped).
-- KEYS[1] LEVELS: the priorities with ready jobs
-- KEYS[2] LEASES: running jobs, by when their lease runs out
-- KEYS[3] DELAYED: deferred jobs, by when they are due
-- KEYS[4] ROUTES: each queued job's priority, place and fairness key
-- KEYS[5] SEQUENCE: the counter of places in line
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), job records (RECORD_PREFIX), result documents (RESULT_PREFIX).
-- ARGV[1] ttl_ms: how long each record and document live
-- ARGV[2] count: jobs in the chunk
-- ARGV[3] chunk: for each job its id, record, queued document, priority and fairness key, every
--         field ended by a newline (none holds one: ids and keys are checked, JSON escapes it)
-- Returns how many jobs were new. (Keys are built here from the ids, under the queue's tag: one slot.)
--!include queue
--!include memory
if full(#ARGV[3]) then return redis.error_reply(FULL) end
local chunk, at, added = ARGV[3], 1, 0
local place = redis.call('INCRBY', SEQUENCE, ARGV[2]) - tonumber(ARGV[2])
local active = {}
while at <= #chunk do
  local e1 = string.find(chunk, '\n', at, true)
  local e2 = string.find(chunk, '\n', e1 + 1, true)
  local e3 = string.find(chunk, '\n', e2 + 1, true)
  local e4 = string.find(chunk, '\n', e3 + 1, true)
  local e5 = string.find(chunk, '\n', e4 + 1, true)
  local id = string.sub(chunk, at, e1 - 1)
  local doc_key, record_key = RESULT_PREFIX .. id, RECORD_PREFIX .. id
  place = place + 1
  if redis.call('EXISTS', doc_key, record_key) == 0 then
    local priority, fkey = string.sub(chunk, e3 + 1, e4 - 1), string.sub(chunk, e4 + 1, e5 - 1)
    redis.call('SET', record_key, string.sub(chunk, e1 + 1, e2 - 1), 'PX', ARGV[1])
    redis.call('SET', doc_key, string.sub(chunk, e2 + 1, e3 - 1), 'PX', ARGV[1])
    set_route(id, priority, place, fkey)
    local ready = READY_PREFIX .. priority .. ':' .. fkey
    redis.call('ZADD', ready, place, id)
    if not active[ready] then
      activate(priority, fkey)
      active[ready] = true
    end
    added = added + 1
  end
  at = e5 + 1
end
if added > 0 then redis.call('PUBLISH', WAKE, '1') end
return added
