#!lua flags=no-writes
-- overview: what the dashboard shows, read in one step (nothing is scanned but the structures named
-- here, each bounded). Jobs ready per priority and fairness key (at most keys_max keys a level),
-- running (LEASES) and deferred (DELAYED) ones per priority and fairness key (their routes; at most
-- scan_max of each looked at), the workers, the last `minutes` minutes' roll-ups, and the newest
-- `batches` batches whose manifest is saved, with their tallies and their jobs running and deferred.
-- KEYS[1] LEVELS: the priorities with ready jobs
-- KEYS[2] LEASES: running jobs, by when their lease runs out
-- KEYS[3] DELAYED: deferred jobs, by when they are due
-- KEYS[4] ROUTES: each queued job's priority, place and fairness key
-- KEYS[5] LEGACY_QUEUE: promptq 0.1's queue
-- KEYS[6] FAILED: failed job ids, by when they failed
-- KEYS[7] BATCHES: batch names, by submit time
-- KEYS[8] WORKERS: each worker's entry
-- KEYS[9] WORKERS_SEEN: when each worker last beat
-- KEYS[10] BACKEND_WAITS: jobs waiting for a backend
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), minute roll-ups (STATS_PREFIX), batch manifests (BATCH_PREFIX), batch tallies
--  (BATCH_TALLY_PREFIX), the circuits of the backends the workers name (CIRCUIT_PREFIX).
-- ARGV[1] keys_max
-- ARGV[2] scan_max
-- ARGV[3] minutes
-- ARGV[4] batches
-- Returns {now_ms, {leased, delayed, legacy, failed, waiting for a backend}, ready, running, deferred,
-- workers, minutes, batches, circuits}: ready/running/deferred flat {priority, key, n, ...}; workers
-- flat {id, seen_ms, entry_json, ...}; minutes a list of {minute, field, value, ...}; batches a
-- list of {name, running, deferred, field, value, ...} (the tally's fields); circuits flat {backend,
-- open_until ms (0: closed), opened_at ms, failures in a row, ...} for the backends the workers'
-- entries name.
--!include clock
local now = now_ms()
local keys_max, scan_max = tonumber(ARGV[1]), tonumber(ARGV[2])
local totals = {redis.call('ZCARD', LEASES), redis.call('ZCARD', DELAYED), redis.call('ZCARD', LEGACY_QUEUE),
                redis.call('ZCARD', FAILED)}

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

local workers, named, circuits = {}, {}, {}
local seen = redis.call('ZRANGE', WORKERS_SEEN, 0, -1, 'WITHSCORES')
for i = 1, #seen, 2 do
  local entry = redis.call('HGET', WORKERS, seen[i])
  if entry then
    workers[#workers + 1] = seen[i]
    workers[#workers + 1] = seen[i + 1]
    workers[#workers + 1] = entry
    local ok, doc = pcall(cjson.decode, entry)
    if ok and type(doc) == 'table' and type(doc.backends) == 'table' then
      for name, _ in pairs(doc.backends) do
        if type(name) == 'string' and not named[name] and #circuits < 4 * keys_max then
          named[name] = true
          local c = redis.call('HMGET', CIRCUIT_PREFIX .. name, 'open_until', 'opened_at', 'fails')
          circuits[#circuits + 1] = name
          circuits[#circuits + 1] = c[1] or '0'
          circuits[#circuits + 1] = c[2] or '0'
          circuits[#circuits + 1] = c[3] or '0'
        end
      end
    end
  end
end
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
return {now, totals, ready, running, deferred, workers, minutes, batches, circuits}
