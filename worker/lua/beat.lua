#!lua flags=allow-oom
-- beat: a worker says it is alive (its entry in WORKERS, and when, in WORKERS_SEEN); entries of
-- workers silent since forget_before are dropped.
-- KEYS[1] WORKERS: each worker's entry
-- KEYS[2] WORKERS_SEEN: when each worker last beat
-- ARGV[1] worker_id
-- ARGV[2] entry_json: {"id", "host", "pid", "slots", "busy", "started_at", "backends"}
-- ARGV[3] forget_ms: how long an entry lasts without a beat
-- Returns the time of the beat (ms, Redis time).
--!include clock
local now = now_ms()
redis.call('HSET', WORKERS, ARGV[1], ARGV[2])
redis.call('ZADD', WORKERS_SEEN, now, ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', WORKERS_SEEN, '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, 100)
for _, id in ipairs(gone) do
  redis.call('HDEL', WORKERS, id)
  redis.call('ZREM', WORKERS_SEEN, id)
end
return now
