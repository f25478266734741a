-- Counting jobs that ended, for the dashboard (the fields are listed in producer/contract.py).
--
-- roll_up(minute, counts): add `counts` to the roll-up of that minute (STATS_PREFIX .. minute):
--   counts.s: {status = n}; counts.t, counts.c: {bucket = n} (time from submit to end, last
--   attempt); counts.m: {model = {jobs, input_tokens, output_tokens, cost or false}}.
-- A model new to a hash holding STATS_FIELDS_MAX fields counts as STATS_OTHER. The hash's time to
-- live is set when a status first appears in it.
-- batch_up(name, row, now): add row = {succeeded, failed, cancelled, tokens, cost or false} to the
-- batch's tally, if it has one (a name no batch has counts nowhere), and note `now` as its last end.
local function roll_up(minute, counts)
  local key = STATS_PREFIX .. minute
  for status, n in pairs(counts.s or {}) do
    if redis.call('HINCRBY', key, 's:' .. status, n) == n then redis.call('EXPIRE', key, STATS_KEEP_S) end
  end
  for bucket, n in pairs(counts.t or {}) do redis.call('HINCRBY', key, 't:' .. bucket, n) end
  for bucket, n in pairs(counts.c or {}) do redis.call('HINCRBY', key, 'c:' .. bucket, n) end
  for model, row in pairs(counts.m or {}) do
    if redis.call('HINCRBY', key, 'j:' .. model, row[1]) == row[1] and redis.call('HLEN', key) > STATS_FIELDS_MAX then
      redis.call('HDEL', key, 'j:' .. model)
      model = STATS_OTHER
      redis.call('HINCRBY', key, 'j:' .. model, row[1])
    end
    if row[2] > 0 then redis.call('HINCRBY', key, 'i:' .. model, row[2]) end
    if row[3] > 0 then redis.call('HINCRBY', key, 'o:' .. model, row[3]) end
    if row[4] then redis.call('HINCRBYFLOAT', key, '$:' .. model, row[4]) end
  end
end

local function batch_up(name, row, now)
  local key = BATCH_TALLY_PREFIX .. name
  if redis.call('EXISTS', key) == 0 then return end
  if row[1] > 0 then redis.call('HINCRBY', key, 'succeeded', row[1]) end
  if row[2] > 0 then redis.call('HINCRBY', key, 'failed', row[2]) end
  if row[3] > 0 then redis.call('HINCRBY', key, 'cancelled', row[3]) end
  if row[4] > 0 then redis.call('HINCRBY', key, 'tokens', row[4]) end
  if row[5] then redis.call('HINCRBYFLOAT', key, 'cost_usd', row[5]) end
  redis.call('HSET', key, 'last_ms', now)
end
