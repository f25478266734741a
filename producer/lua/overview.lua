#!lua flags=no-writes
-- overview: what the dashboard shows, read in one step (nothing is scanned but the structures named
-- here, each bounded), of one queue. Jobs ready per priority and fairness key (at most keys_max keys
-- a level), running (LEASES) and deferred (DELAYED) ones per priority and fairness key (their routes;
-- at most scan_max of each looked at), the last `minutes` minutes' roll-ups, and the newest `batches`
-- batches whose manifest is saved, with their tallies and their jobs running and deferred. (The
-- workers and the backends' circuits are the fleet's, read apart: ``fleet.lua``.)
-- KEYS[1] LEVELS: the priorities with ready jobs
-- KEYS[2] LEASES: running jobs, by when their lease runs out
-- KEYS[3] DELAYED: deferred jobs, by when they are due
-- KEYS[4] ROUTES: each queued job's priority, place and fairness key
-- KEYS[5] FAILED: failed job ids, by when they failed
-- KEYS[6] BATCHES: batch names, by submit time
-- KEYS[7] BACKEND_WAITS: jobs waiting for a backend
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), minute roll-ups (STATS_PREFIX), batch manifests (BATCH_PREFIX), batch tallies
--  (BATCH_TALLY_PREFIX).
-- ARGV[1] keys_max
-- ARGV[2] scan_max
-- ARGV[3] minutes
-- ARGV[4] batches
-- Returns {now_ms, {leased, delayed, failed, waiting for a backend}, ready, running, deferred,
-- minutes, batches}: ready/running/deferred flat {priority, key, n, ...}; minutes a list of
-- {minute, field, value, ...}; batches a list of {name, running, deferred, field, value, ...} (the
-- tally's fields).
--!include clock
local now = now_ms()
local keys_max, scan_max = tonumber(ARGV[1]), tonumber(ARGV[2])
local totals = {redis.call('ZCARD', LEASES), redis.call('ZCARD', DELAYED), redis.call('ZCARD', FAILED)}

local ready = {}
for _, level in ipairs(redis.call('ZRANGE', LEVELS, 0, -1)) do
  for _, fkey in ipairs(redis.call('ZRANGE', ACTIVE_PREFIX .. level, 0, keys_max - 1)) do
    ready[#ready + 1] = level
    ready[#ready + 1] = fkey
    ready[#ready + 1] = redis.call('ZCARD', READY_PREFIX .. level .. ':' .. fkey)
  end
end

-- The jobs of a set counted per priority and fairness key (from their routes) and per batch.
local function by_route(set, per_batch)
  local counts, order, flat = {}, {}, {}
  for _, id in ipairs(redis.call('ZRANGE', set, 0, scan_max - 1)) do
    local route = redis.call('HGET', ROUTES, id)
    local priority, fkey = DEFAULT_PRIORITY, DEFAULT_FAIRNESS_KEY
    if route then priority, fkey = string.match(route, '^(%d) %S+ (.*)$') end
    local slot = priority .. ' ' .. fkey
    if not counts[slot] then
      counts[slot] = {priority, fkey, 0}
      order[#order + 1] = slot
    end
    counts[slot][3] = counts[slot][3] + 1
    local batch = string.match(id, '^([^:]+):')
    if batch then per_batch[batch] = (per_batch[batch] or 0) + 1 end
  end
  for _, slot in ipairs(order) do
    for _, v in ipairs(counts[slot]) do flat[#flat + 1] = v end
  end
  return flat
end
local running_batches, deferred_batches = {}, {}
local running = by_route(LEASES, running_batches)
local deferred = by_route(DELAYED, deferred_batches)

local waiting = 0
for _, id in ipairs(redis.call('ZRANGE', BACKEND_WAITS, 0, scan_max - 1)) do
  if redis.call('ZSCORE', DELAYED, id) then waiting = waiting + 1 end
end
totals[#totals + 1] = waiting

local minutes = {}
local minute = math.floor(now / 60000)
for m = minute - tonumber(ARGV[3]) + 1, minute do
  local row = {tostring(m)}
  for _, v in ipairs(redis.call('HGETALL', STATS_PREFIX .. m)) do row[#row + 1] = v end
  minutes[#minutes + 1] = row
end

local batches = {}
for _, name in ipairs(redis.call('ZREVRANGE', BATCHES, 0, tonumber(ARGV[4]) - 1)) do
  if redis.call('EXISTS', BATCH_PREFIX .. name) == 1 then
    local row = {name, running_batches[name] or 0, deferred_batches[name] or 0}
    for _, v in ipairs(redis.call('HGETALL', BATCH_TALLY_PREFIX .. name)) do row[#row + 1] = v end
    batches[#batches + 1] = row
  end
end
return {now, totals, ready, running, deferred, minutes, batches}
