#!lua flags=allow-oom
-- seal: choose the jobs of one provider batch from a collection, in one step: up to max_lines of its
-- oldest jobs (claim order), no more than max_bytes of requests, leave the collection for the
-- provider batch's jobs (scored by their line), and the provider batch is recorded at its first
-- step (sealed) and due at once. Jobs that ended meanwhile (cancelled: their record gone, or their
-- document terminal) are dropped on the way. The collection leaves COLLECTING when it has no job
-- left; with jobs left over (it held more than one batch) it is due again at once.
-- KEYS[1] collect: the collection's jobs
-- KEYS[2] batch: the provider batch's record
-- KEYS[3] jobs: the provider batch's jobs
-- KEYS[4] COLLECTING: the collections with jobs, by when their oldest joined
-- KEYS[5] PROVIDER_BATCHES: provider batches not ended, by when their next step is due
-- Keys it builds from the ids it finds: job records (RECORD_PREFIX), result documents (RESULT_PREFIX).
-- ARGV[1] batch_id: promptq's id of the new provider batch
-- ARGV[2] collection: its name
-- ARGV[3] max_lines
-- ARGV[4] max_bytes: of the job records together (a line is about its record's size)
-- Returns {lines, bytes}: {0, 0} when the collection had no job left to send (nothing recorded).
--!include status
--!include clock
local max_lines, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local lines, bytes, full = 0, 0, false
while lines < max_lines and not full do
  local page = redis.call('ZRANGE', KEYS[1], 0, math.min(999, max_lines - lines - 1), 'WITHSCORES')
  if #page == 0 then break end
  for i = 1, #page, 2 do
    local id = page[i]
    local size = redis.call('STRLEN', RECORD_PREFIX .. id)
    if size > 0 and TERMINAL[status_of(redis.call('GET', RESULT_PREFIX .. id))] then size = 0 end
    if size > 0 and lines > 0 and bytes + size > max_bytes then
      full = true
      break
    end
    redis.call('ZREM', KEYS[1], id)
    if size > 0 then
      redis.call('ZADD', KEYS[3], lines, id)
      lines, bytes = lines + 1, bytes + size
    end
  end
end
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', COLLECTING, ARGV[2])
else
  redis.call('ZADD', COLLECTING, 0, ARGV[2])
end
if lines == 0 then return {0, 0} end
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'step', 'sealed', 'collection', ARGV[2], 'lines', lines, 'bytes', bytes,
  'sealed_ms', now, 'polls', 0)
redis.call('ZADD', PROVIDER_BATCHES, now, ARGV[1])
return {lines, bytes}
