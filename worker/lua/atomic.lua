-- atomic: the commands of one arq transaction (MULTI ... EXEC), run in one step on a Redis Cluster,
-- where redis-py's cluster client runs no MULTI. Their keys share one slot (arq's keys of one job
-- carry its queue's tag), so the step is as atomic as the transaction, and as refused by a full Redis.
-- KEYS[1..] keys: each command's key, in order
-- ARGV[1..] commands: per command its name, how many arguments follow its key, then those
-- Returns the commands' replies, in order.
local out, at = {}, 1
for k = 1, #KEYS do
  local call, n = {ARGV[at], KEYS[k]}, tonumber(ARGV[at + 1])
  for i = 1, n do call[#call + 1] = ARGV[at + 1 + i] end
  at = at + 2 + n
  out[k] = redis.call(unpack(call))
end
return out
