#!lua flags=no-writes
-- depths: how many jobs wait where. For each priority with ready jobs: its number, the jobs ready at
-- it, and its fairness keys with their ready jobs (at most keys_max keys a level are looked at).
-- KEYS[1] LEVELS: the priorities with ready jobs
-- KEYS[2] LEASES: running jobs, by when their lease runs out
-- KEYS[3] DELAYED: deferred jobs, by when they are due
-- KEYS[4] FAILED: failed job ids, by when they failed
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX).
-- ARGV[1] keys_max
-- Returns {leased, delayed, failed, {priority, ready, truncated, key, n, key, n, ...}, ...}.
local keys_max = tonumber(ARGV[1])
local out = {redis.call('ZCARD', LEASES), redis.call('ZCARD', DELAYED), redis.call('ZCARD', FAILED)}
for _, level in ipairs(redis.call('ZRANGE', LEVELS, 0, -1)) do
  local active = ACTIVE_PREFIX .. level
  local row, total = {level, 0, redis.call('ZCARD', active) > keys_max and 1 or 0}, 0
  for _, fkey in ipairs(redis.call('ZRANGE', active, 0, keys_max - 1)) do
    local n = redis.call('ZCARD', READY_PREFIX .. level .. ':' .. fkey)
    total = total + n
    row[#row + 1] = fkey
    row[#row + 1] = n
  end
  row[2] = total
  out[#out + 1] = row
end
return out
