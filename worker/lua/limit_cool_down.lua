#!lua flags=allow-oom
-- limit_cool_down: pause every worker's calls to a model until ms from now; a longer pause already
-- running is kept.
-- KEYS[1] cooldown
-- ARGV[1] ms
-- Returns 1.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return 1
