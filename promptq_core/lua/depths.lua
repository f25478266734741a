#!lua flags=no-writes
-- depths: how many jobs wait where, how long the oldest has waited, and how full Redis is. For each
-- priority with ready jobs: its number, the jobs ready at it, and its fairness keys with their ready
-- jobs (at most keys_max keys a level are looked at).
-- KEYS[1] LEVELS: the priorities with ready jobs
-- KEYS[2] LEASES: running jobs, by when their lease runs out
-- KEYS[3] DELAYED: deferred jobs, by when they are due
-- KEYS[4] FAILED: failed job ids, by when they failed
-- Keys it builds from the ids it is given or finds: ready sets (READY_PREFIX), active sets
--  (ACTIVE_PREFIX), the oldest ready job's result document (RESULT_PREFIX).
-- ARGV[1] keys_max
-- Returns {leased, delayed, failed, {oldest_enqueued_at, used_memory, maxmemory, now_ms},
--  {priority, ready, truncated, key, n, key, n, ...}, ...}: oldest_enqueued_at is the submit time
--  (Unix s, as text) of the ready job first in line among the keys looked at ('' when none is
--  ready); the memory figures are this node's (maxmemory 0: none set); now_ms is Redis time, so
--  that the age is not made of two hosts' clocks but one's.
--!include clock
--!include memory
local keys_max = tonumber(ARGV[1])
local out = {redis.call('ZCARD', LEASES), redis.call('ZCARD', DELAYED), redis.call('ZCARD', FAILED), false}
local oldest_id, oldest_place
for _, level in ipairs(redis.call('ZRANGE', LEVELS, 0, -1)) do
  local active = ACTIVE_PREFIX .. level
  local row, total = {level, 0, redis.call('ZCARD', active) > keys_max and 1 or 0}, 0
  for _, fkey in ipairs(redis.call('ZRANGE', active, 0, keys_max - 1)) do
    local ready = READY_PREFIX .. level .. ':' .. fkey
    local n = redis.call('ZCARD', ready)
    local head = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
    if head[1] and (not oldest_place or tonumber(head[2]) < oldest_place) then
      oldest_id, oldest_place = head[1], tonumber(head[2])
    end
    total = total + n
    row[#row + 1] = fkey
    row[#row + 1] = n
  end
  row[2] = total
  out[#out + 1] = row
end
local oldest = ''
if oldest_id then
  local doc = redis.call('GET', RESULT_PREFIX .. oldest_id)
  if doc then
    local ok, decoded = pcall(cjson.decode, doc)
    if ok and type(decoded) == 'table' and type(decoded.enqueued_at) == 'number' then
      oldest = string.format('%.3f', decoded.enqueued_at)
    end
  end
end
local used, max = memory()
out[4] = {oldest, used, max, now_ms()}
return out
