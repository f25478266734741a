-- status_of(raw): the status of a stored result document, nil when there is none. promptq writes
-- documents that open {"job_id":"...","status":"..." (ids hold no quote): read there without
-- decoding the rest; anything else is decoded.
local function status_of(raw)
  if not raw then return nil end
  local status = string.match(raw, '^{"job_id":"[^"]*","status":"(%a+)"')
  if status then return status end
  local ok, doc = pcall(cjson.decode, raw)
  if ok and type(doc) == 'table' and type(doc['status']) == 'string' then return doc['status'] end
  return nil
end

local TERMINAL = {succeeded = true, failed = true, cancelled = true}

-- write_unless_terminal(key, doc, ttl_ms): the stored document if it is terminal (nothing written);
-- else the new document is written (keeping the current time to live, or ttl_ms if there is none)
-- and false is returned.
local function write_unless_terminal(key, doc, ttl_ms)
  local current = redis.call('GET', key)
  if TERMINAL[status_of(current)] then return current end
  if current then
    redis.call('SET', key, doc, 'KEEPTTL')
  else
    redis.call('SET', key, doc, 'PX', ttl_ms)
  end
  return false
end

-- keep_at_least(keys, ms): each key lives at least ms from now (a longer time to live is kept).
local function keep_at_least(keys, ms)
  for _, key in ipairs(keys) do
    if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
  end
end
