#!lua flags=no-writes
-- health: the backends' circuits and cool-downs as they are now, read together, for the routing's
-- quick path (``worker.routing``): a call to a model whose backends have no limits to space calls
-- by goes, without route.lua, to a backend whose circuit has no failure on record and that is not
-- cooling down, as this read found them (each worker reads again at most HEALTH_FRESH_S later).
-- KEYS[1..] keys: the circuits (as many as ARGV[1] says), then the cool-downs
-- ARGV[1] circuits: how many of the keys are circuits
-- Returns {now ms, then per circuit 1 (clean: no failure on record, not open) or 0, then per
-- cool-down the ms it has left (0: none)}.
--!include clock
local out = {now_ms()}
local circuits = tonumber(ARGV[1])
for i = 1, #KEYS do
  if i <= circuits then
    local c = redis.call('HMGET', KEYS[i], 'fails', 'open_until')
    out[#out + 1] = (tonumber(c[1] or '0') == 0 and tonumber(c[2] or '0') == 0) and 1 or 0
  else
    out[#out + 1] = math.max(redis.call('PTTL', KEYS[i]), 0)
  end
end
return out
