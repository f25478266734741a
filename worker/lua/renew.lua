#!lua flags=allow-oom
-- renew: extend the leases of a worker's running jobs to now + lease_ms (Redis time). A job no longer
-- leased (it ended, or its lease ran out and it went back in line) is left as it is.
-- KEYS[1] LEASES: running jobs, by when their lease runs out
-- ARGV[1] lease_ms
-- ARGV[2..] job_ids: a thousand at most (one ZADD takes them all)
-- Returns how many leases were extended.
--!include clock
local deadline = now_ms() + tonumber(ARGV[1])
local args = {'XX', 'CH'}
for i = 2, #ARGV do
  args[#args + 1] = deadline
  args[#args + 1] = ARGV[i]
end
if #args == 2 then return 0 end
return redis.call('ZADD', LEASES, unpack(args))
