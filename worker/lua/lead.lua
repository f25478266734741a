#!lua flags=allow-oom
-- lead: take or keep the lead of a queue's provider batches (one worker at a time sends and reads
-- them): the lead is this worker's if no other holds it, and is held ttl_ms from now.
-- KEYS[1] BATCHER: the worker that leads, with a time to live
-- ARGV[1] worker: this worker's id
-- ARGV[2] ttl_ms
-- Returns LEADS, or the id of the worker that does.
local holder = redis.call('GET', BATCHER)
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', BATCHER, ARGV[1], 'PX', ARGV[2])
return LEADS
