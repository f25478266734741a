-- renew: extend the leases of a worker's running jobs to now + lease_ms (Redis time). A job no longer
-- leased (it ended, or its lease ran out and it went back in line) is left as it is.
-- ARGV[1] lease_ms
-- ARGV[2..] job_ids
-- Returns how many leases were extended.
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  if redis.call('ZADD', LEASES, 'XX', 'CH', deadline, ARGV[i]) == 1 then renewed = renewed + 1 end
end
return renewed
