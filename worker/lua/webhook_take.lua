#!lua flags=allow-oom
-- webhook_take: the webhook deliveries due now, up to `want`, each moved on by send_ms first (so that
-- no other worker sends it while this one does; one that dies sending it leaves it due again then).
-- KEYS[1] WEBHOOKS: webhook deliveries, by when they are due
-- ARGV[1] send_ms: how long a delivery is this worker's to send
-- ARGV[2] want: deliveries wanted at most
-- Returns their ids.
--!include clock
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', WEBHOOKS, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do redis.call('ZADD', WEBHOOKS, now + tonumber(ARGV[1]), id) end
return ids
