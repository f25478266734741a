-- tally(now, status, model, total_bucket, call_bucket, input, output, cost, batch): count a job that
-- ended (succeeded, failed or cancelled) in the roll-up of the minute `now` (ms) falls in
-- (STATS_PREFIX .. minute; the fields are listed in producer/contract.py) and, when `batch` names a
-- batch that has a tally, in that batch's. Empty strings stand for what is not known; a model new to
-- a full minute's hash counts as STATS_OTHER.
local function tally(now, status, model, total_bucket, call_bucket, input, output, cost, batch)
  local key = STATS_PREFIX .. math.floor(now / 60000)
  redis.call('HINCRBY', key, 's:' .. status, 1)
  if total_bucket ~= '' then redis.call('HINCRBY', key, 't:' .. total_bucket, 1) end
  if call_bucket ~= '' then redis.call('HINCRBY', key, 'c:' .. call_bucket, 1) end
  if model ~= '' then
    if redis.call('HEXISTS', key, 'j:' .. model) == 0 and redis.call('HLEN', key) >= STATS_FIELDS_MAX then
      model = STATS_OTHER
    end
    redis.call('HINCRBY', key, 'j:' .. model, 1)
    if input ~= '0' then redis.call('HINCRBY', key, 'i:' .. model, input) end
    if output ~= '0' then redis.call('HINCRBY', key, 'o:' .. model, output) end
    if cost ~= '' then redis.call('HINCRBYFLOAT', key, '$:' .. model, cost) end
  end
  redis.call('EXPIRE', key, STATS_KEEP_S)
  if batch ~= '' then
    local bkey = BATCH_TALLY_PREFIX .. batch
    if redis.call('EXISTS', bkey) == 1 then
      redis.call('HINCRBY', bkey, status, 1)
      local tokens = tonumber(input) + tonumber(output)
      if tokens > 0 then redis.call('HINCRBY', bkey, 'tokens', tokens) end
      if cost ~= '' then redis.call('HINCRBYFLOAT', bkey, 'cost_usd', cost) end
      redis.call('HSETNX', bkey, 'first_ms', now)
      redis.call('HSET', bkey, 'last_ms', now)
    end
  end
end
