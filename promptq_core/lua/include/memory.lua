-- memory(): this Redis node's used_memory and maxmemory in bytes (maxmemory 0: none set), from INFO.
local function memory()
  local info = redis.call('INFO', 'memory')
  return tonumber(string.match(info, '^.-used_memory:(%d+)')) or 0, tonumber(string.match(info, '\nmaxmemory:(%d+)')) or 0
end

-- full(adding): true when Redis, with about `adding` bytes more, would hold SUBMIT_MEMORY_PERCENT % of
-- its maxmemory (none set: never). New jobs are refused from there on, so the last part stays for the
-- workers to run and finish the queued ones, which frees memory: a Redis filled to the brim by
-- queued jobs could not start any of them (a claim counts each job's try, a write it would refuse).
local function full(adding)
  local used, max = memory()
  if max == 0 then return false end
  return (used + 2 * adding) * 100 >= max * SUBMIT_MEMORY_PERCENT  -- stored, a job takes about twice its text
end

local FULL = 'OOM Redis would hold over ' .. SUBMIT_MEMORY_PERCENT .. '% of its maxmemory: new jobs are ' ..
  'refused so that the queued ones can run and finish'
