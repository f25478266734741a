#!lua
-- claim: take up to `want` ready jobs for one worker, each leased until now + lease_ms (Redis time).
-- First, in bounded steps, jobs come back in line: those whose lease ran out (their worker died or
-- lost Redis) and deferred retries that are due. Then
-- the lowest priority level with ready jobs is served (strict between levels); within a level the
-- fairness key with the lowest turn gives its oldest job and its turn moves on by 1 / weight, so
-- keys take turns (a weight-3 key three for one). Cost: O(log n) per job taken, whatever the
-- number of jobs running.
-- A full Redis refuses the whole claim (it declares no allow-oom: it writes each job's try counter and
-- document); the jobs running finish, which frees memory, and claims go on when there is room.
-- Jobs at priority 0 may take every slot the worker has free (`want`), jobs at other priorities only
-- its ordinary ones (`want_ordinary`): a worker keeps a few slots for urgent work.
-- Each job taken is marked running in its result document (status, attempts, started_at; a default
-- model filled in), in this same step. A job whose document is terminal already (its result was
-- stored by an earlier delivery, or it was cancelled) is let go of instead: it is not handed out.
-- KEYS[1] LEVELS: the priorities with ready jobs
-- KEYS[2] LEASES: running jobs, by when their lease runs out
-- KEYS[3] DELAYED: deferred jobs, by when they are due
-- KEYS[4] ROUTES: each queued job's priority, place and fairness key
-- KEYS[5] BACKEND_WAITS: jobs waiting for a backend (a job back in line waits no more)
-- KEYS[6] PARKED: idle workers a submit may hand a job to (submit.lua)
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), job records (RECORD_PREFIX), try counters (TRIES_PREFIX), result documents
--  (RESULT_PREFIX).
-- ARGV[1] lease_ms
-- ARGV[2] want: jobs wanted at priority 0 (every free slot)
-- ARGV[3] want_ordinary: jobs wanted at priorities 1 to 9 at most (free ordinary slots)
-- ARGV[4] step: jobs brought back per kind at most in one call
-- ARGV[5] model_json: the worker's default model, as JSON, for documents whose model is null
-- ARGV[6] handoff_id: the worker's name in PARKED (its handoff channel: HANDOFF .. handoff_id)
-- ARGV[7] park_ms: how long the worker stays parked when this claim leaves it idle (0: it does not)
-- ARGV[8] parked_free: the slots the worker's last claim parked it with (0: it did not park it)
-- ARGV[9] heard: the handoffs the worker has taken since that claim's answer
-- ARGV[10..] weights: fairness key, weight, fairness key, weight... (unnamed keys weigh 1)
-- Returns {now_ms, recovered, promoted, skipped, more, urgent, parked, then per job: its id, its
-- record (nil when gone), its try}:
-- `more` is 1 when ready jobs are left, `urgent` how many of the job ids (the first ones) are at
-- priority 0, `skipped` how many jobs were let go of for a terminal document, `parked` the slots
-- this claim parked the worker with (0: none).
-- Parking: a claim that leaves no job ready and the worker with ordinary slots free parks the worker
-- (its entry in PARKED: `{until_ms} {free} {lease_ms} {model_json}`, until now + park_ms), so that
-- the next submit hands it its job directly; any other claim of the worker ends its parking. The
-- entry of a worker that died is dropped by the submit that draws it, or with the whole hash.
-- Handoffs published to the worker that it has not heard yet (its parking's slots taken since, less
-- those it has heard) hold their slots: this claim takes that many fewer.
--!include status
--!include document
--!include queue
--!include clock
local now = now_ms()
local parking = redis.call('HGET', PARKED, ARGV[6])  -- (gone: its parking ended, no handoff pending)
local left = parking and tonumber(string.match(parking, '^%d+ (%d+) '))
local unheard = left and math.max(0, tonumber(ARGV[8]) - left - tonumber(ARGV[9])) or 0
local deadline, want, step = now + tonumber(ARGV[1]), math.max(0, tonumber(ARGV[2]) - unheard), tonumber(ARGV[4])
local want_ordinary = math.min(want, math.max(0, tonumber(ARGV[3]) - unheard))
local free, free_ordinary = want, want_ordinary
local started_at = seconds_text(now)

-- Mark a claimed job running and count its try: {record, try} (arq's job record, read here so that
-- arq's start of the job needs no call of its own: ``worker.arq_seam``), or false when its document is
-- terminal (the job is let go of). The try counter lives TRIES_TTL_S, as arq keeps it.
-- `raw`, `tries` and `record` are the job's document, try counter and record as read (each of the
-- jobs taken from one ready set read with one MGET, `read`).
local function start(id, raw, tries, record)
  if TERMINAL[status_of(raw)] then
    redis.call('DEL', RECORD_PREFIX .. id, TRIES_PREFIX .. id)
    redis.call('ZREM', LEASES, id)
    unplace(id)
    return false
  end
  tries = tonumber(tries or '0') + 1
  redis.call('SET', TRIES_PREFIX .. id, tries, 'EX', TRIES_TTL_S)
  if raw then
    local doc = running(raw, tries, started_at, ARGV[5])
    if doc then redis.call('SET', RESULT_PREFIX .. id, doc, 'KEEPTTL') end
  end
  return {record, tries}
end
-- read(prefix, ids): the values of the keys prefix .. id, in order (false for none), MGET 500 at a time.
local function read(prefix, ids)
  local values = {}
  for from = 1, #ids, 500 do
    local keys = {}
    for i = from, math.min(from + 499, #ids) do keys[#keys + 1] = prefix .. ids[i] end
    for _, v in ipairs(redis.call('MGET', unpack(keys))) do values[#values + 1] = v end
  end
  return values
end
local recovered, promoted = 0, 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, step)) do
  redis.call('ZREM', LEASES, id)
  if back_in_line(id) then recovered = recovered + 1 end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, step)) do
  redis.call('ZREM', DELAYED, id)
  redis.call('ZREM', BACKEND_WAITS, id)
  if back_in_line(id) then promoted = promoted + 1 end
end

local weights = {}
for i = 10, #ARGV, 2 do weights[ARGV[i]] = tonumber(ARGV[i + 1]) end
local out, claimed, urgent, skipped, empty = {now, recovered, promoted, 0, 0, 0, 0}, 0, 0, 0, false
while claimed < want do
  local level = redis.call('ZRANGE', LEVELS, 0, 0)[1]
  if not level then
    empty = true
    break
  end
  if level ~= '0' then
    want = math.min(want, urgent + want_ordinary)
    if claimed >= want then break end
  end
  local active = ACTIVE_PREFIX .. level
  local head = redis.call('ZRANGE', active, 0, 1, 'WITHSCORES')
  if #head == 0 then
    redis.call('ZREM', LEVELS, level)
  else
    local fkey, turn = head[1], tonumber(head[2])
    local weight = weights[fkey] or 1
    local take = want - claimed
    if head[3] then  -- the jobs served while this key's turn stays before the next key's
      take = math.min(take, math.max(1, math.ceil((tonumber(head[4]) - turn) * weight - 1e-9)))
    end
    local ready = READY_PREFIX .. level .. ':' .. fkey
    local popped = redis.call('ZPOPMIN', ready, take)
    local got = #popped / 2
    if got < take or redis.call('EXISTS', ready) == 0 then
      deactivate(level, fkey)
    else
      redis.call('ZADD', active, turn + got / weight, fkey)
    end
    local ids, leased = {}, {}
    for i = 1, #popped, 2 do
      ids[#ids + 1] = popped[i]
      leased[#leased + 1] = deadline
      leased[#leased + 1] = popped[i]
    end
    -- Leased before anything else is done with them: were this script to stop with an error past
    -- this point, the jobs taken would come back after their lease, not be lost.
    for from = 1, #leased, 1000 do
      redis.call('ZADD', LEASES, unpack(leased, from, math.min(from + 999, #leased)))
    end
    local docs, tries, records = read(RESULT_PREFIX, ids), read(TRIES_PREFIX, ids), read(RECORD_PREFIX, ids)
    for k, id in ipairs(ids) do
      local started = start(id, docs[k] or nil, tries[k] or nil, records[k])
      if started then
        out[#out + 1] = id
        out[#out + 1] = started[1]
        out[#out + 1] = started[2]
        claimed = claimed + 1
        if level == '0' then urgent = urgent + 1 end
      else
        skipped = skipped + 1
      end
    end
  end
end
out[4] = skipped
out[5] = empty and 0 or redis.call('EXISTS', LEVELS)
out[6] = urgent
free_ordinary = math.min(free - claimed, free_ordinary - (claimed - urgent))
if out[5] == 0 and free_ordinary > 0 and tonumber(ARGV[7]) > 0 then
  redis.call('HSET', PARKED, ARGV[6], (now + tonumber(ARGV[7])) .. ' ' .. free_ordinary .. ' ' .. ARGV[1] .. ' ' .. ARGV[5])
  keep_at_least({PARKED}, tonumber(ARGV[7]))  -- (gone once every worker's parking has run out)
  out[7] = free_ordinary
else
  redis.call('HDEL', PARKED, ARGV[6])
end
return out
