#!lua flags=allow-oom
-- upgrade: move what promptq before named queues left in Redis into the default queue, in bounded
-- steps (a worker calls it until it says nothing is left; only on a Redis that is not a Cluster,
-- where those keys, in no slot of a queue's, could be). The older layout's keys are the queue's
-- names without a tag (OLD_*), and arq's records had the job id alone after their prefix.
-- Jobs in line keep their order, ahead of every job submitted to the queue (their place less
-- LEGACY_PLACE_OFFSET), deferred and leased jobs their time; jobs in promptq 0.1's single queue
-- (`legacy`) move as before (after those), unless an older worker holds them (its in-progress marker). With each
-- job go its record, try counter, document, stream and kept request, under the queue's tag; an id
-- the queue knows already keeps the queue's. Then the ended jobs a worker found (their documents),
-- the failed set and the batches (manifest and tally) move the same way.
-- KEYS[1] LEVELS: the priorities with ready jobs
-- KEYS[2] LEASES: running jobs, by when their lease runs out
-- KEYS[3] DELAYED: deferred jobs, by when they are due
-- KEYS[4] ROUTES: each queued job's priority, place and fairness key
-- KEYS[5] FAILED: failed job ids, by when they failed
-- KEYS[6] BATCHES: batch names, by submit time
-- KEYS[7] old_levels
-- KEYS[8] old_leases
-- KEYS[9] old_delayed
-- KEYS[10] old_routes
-- KEYS[11] old_sequence
-- KEYS[12] old_failed
-- KEYS[13] old_batches
-- KEYS[14] legacy: promptq 0.1's queue
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX, OLD_READY_PREFIX),
--  active sets (ACTIVE_PREFIX, OLD_ACTIVE_PREFIX), job records (RECORD_PREFIX, OLD_RECORD_PREFIX),
--  try counters (TRIES_PREFIX, OLD_TRIES_PREFIX), arq's in-progress markers (OLD_IN_PROGRESS_PREFIX),
--  result documents (RESULT_PREFIX, OLD_RESULT_PREFIX), streams (STREAM_PREFIX, OLD_STREAM_PREFIX),
--  kept requests (FAILED_JOB_PREFIX, OLD_FAILED_JOB_PREFIX), batch manifests and tallies
--  (BATCH_PREFIX, BATCH_TALLY_PREFIX, OLD_BATCH_PREFIX, OLD_BATCH_TALLY_PREFIX).
-- ARGV[1] step: jobs moved at most of each kind
-- ARGV[2..] ended: ids of jobs whose document is in the older layout (those ended are moved)
-- Returns {jobs moved, more: 1 while the older layout still holds jobs in line, leased or deferred}.
--!include status
--!include queue
--!include clock
local step, moved = tonumber(ARGV[1]), 0
local old_levels, old_leases, old_delayed, old_routes = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local old_sequence, old_failed, old_batches, legacy = KEYS[11], KEYS[12], KEYS[13], KEYS[14]

local function rename(from, to)
  if redis.call('EXISTS', from) == 0 then return end
  if redis.call('EXISTS', to) == 0 then redis.call('RENAME', from, to) else redis.call('DEL', from) end
end

-- A job's own keys, under the queue's tag.
local function carry(id)
  rename(OLD_RECORD_PREFIX .. id, RECORD_PREFIX .. id)
  rename(OLD_TRIES_PREFIX .. id, TRIES_PREFIX .. id)
  rename(OLD_RESULT_PREFIX .. id, RESULT_PREFIX .. id)
  rename(OLD_STREAM_PREFIX .. id, STREAM_PREFIX .. id)
  rename(OLD_FAILED_JOB_PREFIX .. id, FAILED_JOB_PREFIX .. id)
  moved = moved + 1
end

-- Its route (priority, place, fairness key), or the default one.
local function old_route(id)
  local route = redis.call('HGET', old_routes, id)
  redis.call('HDEL', old_routes, id)
  if route then
    local priority, place, fkey = string.match(route, '^(%d) (%S+) (.*)$')
    if priority then return priority, place, fkey end
  end
  return DEFAULT_PRIORITY, '0', DEFAULT_FAIRNESS_KEY
end

-- Leased and deferred jobs keep their time (a lease an older worker renews no more runs out).
for _, pair in ipairs({{old_leases, LEASES}, {old_delayed, DELAYED}}) do
  local entries = redis.call('ZRANGE', pair[1], 0, step - 1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local id = entries[i]
    redis.call('ZREM', pair[1], id)
    if redis.call('EXISTS', RECORD_PREFIX .. id) == 0 then
      local priority, place, fkey = old_route(id)
      place = string.format('%d', tonumber(place) - LEGACY_PLACE_OFFSET)
      carry(id)
      set_route(id, priority, place, fkey)
      redis.call('ZADD', pair[2], entries[i + 1], id)
    end
  end
end

-- Jobs in line, each priority and fairness key in turn, at their place.
local budget = step
for _, level in ipairs(redis.call('ZRANGE', old_levels, 0, -1)) do
  local active = OLD_ACTIVE_PREFIX .. level
  for _, fkey in ipairs(redis.call('ZRANGE', active, 0, -1)) do
    if budget <= 0 then break end
    local ready = OLD_READY_PREFIX .. level .. ':' .. fkey
    local popped = redis.call('ZPOPMIN', ready, budget)
    for i = 1, #popped, 2 do
      local id = popped[i]
      redis.call('HDEL', old_routes, id)
      if redis.call('EXISTS', RECORD_PREFIX .. id) == 0 then
        local place = string.format('%d', tonumber(popped[i + 1]) - LEGACY_PLACE_OFFSET)
        carry(id)
        set_route(id, level, place, fkey)
        make_ready(id, level, place, fkey)
      end
    end
    budget = budget - #popped / 2
    if redis.call('EXISTS', ready) == 0 then redis.call('ZREM', active, fkey) end
  end
  if redis.call('EXISTS', active) == 0 then redis.call('ZREM', old_levels, level) end
end

-- promptq 0.1's queue: jobs not held by an older worker, ahead of every job submitted since.
-- (jobs an older worker holds stay at the front: looked past, up to a few steps' worth)
local entries = redis.call('ZRANGE', legacy, 0, 4 * step - 1, 'WITHSCORES')
local now, legacy_moved = now_ms(), 0
for i = 1, #entries, 2 do
  local id, score = entries[i], tonumber(entries[i + 1])
  if legacy_moved >= step then break end
  if redis.call('EXISTS', OLD_IN_PROGRESS_PREFIX .. id) == 0 then
    legacy_moved = legacy_moved + 1
    redis.call('ZREM', legacy, id)
    if redis.call('EXISTS', OLD_RECORD_PREFIX .. id) == 1 and redis.call('EXISTS', RECORD_PREFIX .. id) == 0 then
      carry(id)
      local place = string.format('%d', score - LEGACY_PLACE_OFFSET)
      set_route(id, DEFAULT_PRIORITY, place, DEFAULT_FAIRNESS_KEY)
      if score > now then
        redis.call('ZADD', DELAYED, score, id)
      else
        make_ready(id, DEFAULT_PRIORITY, place, DEFAULT_FAIRNESS_KEY)
      end
    end
  end
end

-- Ended jobs the worker found, the failed set and the batches.
for i = 2, #ARGV do  -- (a job not ended is moved with its place, above)
  if TERMINAL[status_of(redis.call('GET', OLD_RESULT_PREFIX .. ARGV[i]))] then carry(ARGV[i]) end
end
local failed = redis.call('ZRANGE', old_failed, 0, step - 1, 'WITHSCORES')
for i = 1, #failed, 2 do
  redis.call('ZADD', FAILED, 'NX', failed[i + 1], failed[i])
  redis.call('ZREM', old_failed, failed[i])
end
local batches = redis.call('ZRANGE', old_batches, 0, step - 1, 'WITHSCORES')
for i = 1, #batches, 2 do
  local name = batches[i]
  rename(OLD_BATCH_PREFIX .. name, BATCH_PREFIX .. name)
  rename(OLD_BATCH_TALLY_PREFIX .. name, BATCH_TALLY_PREFIX .. name)
  redis.call('ZADD', BATCHES, 'NX', batches[i + 1], name)
  redis.call('ZREM', old_batches, name)
end
local more = redis.call('EXISTS', old_levels, old_leases, old_delayed, old_failed, old_batches)
if legacy_moved >= step then more = more + 1 end  -- more of promptq 0.1's queue to look at
if more == 0 and redis.call('ZCARD', legacy) == 0 then redis.call('DEL', old_sequence, old_routes) end
return {moved, more > 0 and 1 or 0}
