-- The queue's structures, as every script changes them.
--   READY_PREFIX .. priority .. ':' .. fairness key  sorted set: job ids by place in line
--   ACTIVE_PREFIX .. priority                          sorted set: fairness keys with ready jobs, by turn
--   LEVELS                                             sorted set: priorities with ready jobs
--   ROUTES                                             hash: job id -> 'priority place fairness-key'
-- A job is in at most one of: its ready set, LEASES (running), DELAYED (waiting for a retry).

local function route_of(id)
  local route = redis.call('HGET', ROUTES, id)
  if not route then return nil end
  return string.match(route, '^(%d) (%S+) (.*)$')
end

local function set_route(id, priority, place, fkey)
  redis.call('HSET', ROUTES, id, priority .. ' ' .. place .. ' ' .. fkey)
end

-- A fairness key starting to have ready jobs takes its turn just after the key served next (no
-- credit for the time it had none; among keys whose turns are equal, the one waiting longer first).
local function activate(priority, fkey)
  local active = ACTIVE_PREFIX .. priority
  if redis.call('ZSCORE', active, fkey) then return end
  local head = redis.call('ZRANGE', active, 0, 0, 'WITHSCORES')
  redis.call('ZADD', active, head[2] and tonumber(head[2]) + 0.000001 or 0, fkey)
  redis.call('ZADD', LEVELS, priority, priority)
end

local function deactivate(priority, fkey)
  local active = ACTIVE_PREFIX .. priority
  redis.call('ZREM', active, fkey)
  if redis.call('EXISTS', active) == 0 then redis.call('ZREM', LEVELS, priority) end
end

local function make_ready(id, priority, place, fkey)
  redis.call('ZADD', READY_PREFIX .. priority .. ':' .. fkey, place, id)
  activate(priority, fkey)
end

-- Back in line at its own place (a lease that ran out, a retry that is due, an interrupted call).
-- A job whose record is gone (cancelled meanwhile) is forgotten instead.
local function back_in_line(id)
  if redis.call('EXISTS', RECORD_PREFIX .. id) == 0 then
    redis.call('HDEL', ROUTES, id)
    return false
  end
  local priority, place, fkey = route_of(id)
  if not priority then
    priority, place, fkey = DEFAULT_PRIORITY, '0', DEFAULT_FAIRNESS_KEY
    set_route(id, priority, place, fkey)
  end
  make_ready(id, priority, place, fkey)
  return true
end

-- Out of every structure that holds it, route included. A job is in one at most, so a job found
-- leased (the common case: it ends) or deferred is nowhere else.
local function unplace(id)
  if redis.call('ZREM', LEASES, id) == 1 or redis.call('ZREM', DELAYED, id) == 1 then
    redis.call('HDEL', ROUTES, id)
    return
  end
  local priority, _, fkey = route_of(id)
  if priority then
    local ready = READY_PREFIX .. priority .. ':' .. fkey
    if redis.call('ZREM', ready, id) == 1 and redis.call('EXISTS', ready) == 0 then deactivate(priority, fkey) end
    redis.call('HDEL', ROUTES, id)
  end
end

