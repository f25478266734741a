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
-- ARGV[3] chunk: for each job its id, record, queued document, priority, fairness key and request
--         digest, every field ended by a newline (none holds one: ids and keys are checked, JSON
--         escapes it)
-- Returns {ENQUEUED, how many jobs were new}, or {CONFLICT, the first id known with another
-- request} and writes nothing. (Keys are built here from the ids, under the queue's tag: one slot.)
--!include queue
--!include memory
--!include request
if full(#ARGV[3]) then return redis.error_reply(FULL) end
local chunk = ARGV[3]
-- fields(at): the ends of the six fields of the job at `at`
local function fields(at)
  local e = {}
  local from = at
  for n = 1, 6 do
    e[n] = string.find(chunk, '\n', from, true)
    from = e[n] + 1
  end
  return e
end
-- First each new job's document, written only where the id has none (the old one read in the same
-- command); a known id with another request undoes the documents written so far and writes nothing.
-- (An id twice in the chunk: the second is known, by the first's request.)
local known, seen, written, at = {}, {}, {}, 1
while at <= #chunk do
  local e = fields(at)
  local id, digest = string.sub(chunk, at, e[1] - 1), string.sub(chunk, e[5] + 1, e[6] - 1)
  local doc_key = RESULT_PREFIX .. id
  local old = nil
  if not seen[id] then old = redis.call('SET', doc_key, string.sub(chunk, e[2] + 1, e[3] - 1), 'NX', 'GET', 'PX', ARGV[1]) end
  if (seen[id] and seen[id] ~= digest) or (old and not same_request(old, digest)) then
    if #written > 0 then redis.call('DEL', unpack(written)) end
    return {CONFLICT, id}
  end
  if seen[id] or old then
    known[at] = true
  else
    written[#written + 1] = doc_key
  end
  seen[id] = digest
  at = e[6] + 1
end
local added = 0
local place = redis.call('INCRBY', SEQUENCE, ARGV[2]) - tonumber(ARGV[2])
-- The chunk's routes go in one HSET, and its places in line in one ZADD a ready set.
local routes, lines, line_of = {}, {}, {}
at = 1
while at <= #chunk do
  local e = fields(at)
  place = place + 1
  local id = string.sub(chunk, at, e[1] - 1)
  -- A record without its document: the job is known (its new document undone).
  if not known[at] and not redis.call('SET', RECORD_PREFIX .. id, string.sub(chunk, e[1] + 1, e[2] - 1), 'NX', 'PX', ARGV[1]) then
    redis.call('DEL', RESULT_PREFIX .. id)
    known[at] = true
  end
  if not known[at] then
    local priority, fkey = string.sub(chunk, e[3] + 1, e[4] - 1), string.sub(chunk, e[4] + 1, e[5] - 1)
    routes[#routes + 1] = id
    routes[#routes + 1] = priority .. ' ' .. place .. ' ' .. fkey
    local ready = READY_PREFIX .. priority .. ':' .. fkey
    local line = line_of[ready]
    if not line then
      line = {priority, fkey}
      line_of[ready] = line
      lines[#lines + 1] = ready
    end
    line[#line + 1] = place
    line[#line + 1] = id
    added = added + 1
  end
  at = e[6] + 1
end
if added > 0 then
  redis.call('HSET', ROUTES, unpack(routes))
  for _, ready in ipairs(lines) do
    local line = line_of[ready]
    redis.call('ZADD', ready, unpack(line, 3))
    activate(line[1], line[2])
  end
  redis.call('PUBLISH', WAKE, '1')
end
return {ENQUEUED, added}
