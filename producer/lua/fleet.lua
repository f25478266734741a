#!lua flags=no-writes
-- fleet: the workers' entries, read in one step (the fleet's keys, in a slot of their own).
-- KEYS[1] WORKERS: each worker's entry
-- KEYS[2] WORKERS_SEEN: when each worker last beat
-- Returns flat {id, seen_ms, entry_json, ...}, the longest silent first.
local workers = {}
local seen = redis.call('ZRANGE', WORKERS_SEEN, 0, -1, 'WITHSCORES')
for i = 1, #seen, 2 do
  local entry = redis.call('HGET', WORKERS, seen[i])
  if entry then
    workers[#workers + 1] = seen[i]
    workers[#workers + 1] = seen[i + 1]
    workers[#workers + 1] = entry
  end
end
return workers
