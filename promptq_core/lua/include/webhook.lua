-- want_webhook(url, job_id, doc): a delivery of a job's final document to its webhook, due at once:
-- its record WEBHOOK_PREFIX .. id (a hash: url, job_id, body, tries, since_ms; kept WEBHOOK_KEEP_MS)
-- and its id in WEBHOOKS, scored by when it is due (0: now). The id (``msg_`` and 24 hex digits) is
-- the delivery's ``webhook-id``, the same on every retry. Nothing when url is empty.
local function want_webhook(url, job_id, doc)
  if url == nil or url == '' then return end
  local t = redis.call('TIME')
  local id = 'msg_' .. string.sub(redis.sha1hex(WEBHOOKS .. '|' .. job_id .. '|' .. t[1] .. '.' .. t[2]), 1, 24)
  local key = WEBHOOK_PREFIX .. id
  redis.call('HSET', key, 'url', url, 'job_id', job_id, 'body', doc, 'tries', 0,
    'since_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('PEXPIRE', key, WEBHOOK_KEEP_MS)
  redis.call('ZADD', WEBHOOKS, 0, id)
end

-- webhook_of(record): the webhook URL a job record's payload names ('' none): its own field, decoded
-- (not a "webhook_url" that its metadata or parameters might hold).
local function webhook_of(record)
  if not record then return '' end
  local ok, decoded = pcall(cjson.decode, record)
  if not ok or type(decoded) ~= 'table' or type(decoded['a']) ~= 'table' then return '' end
  local payload = decoded['a'][1]
  if type(payload) ~= 'table' or type(payload['webhook_url']) ~= 'string' then return '' end
  return payload['webhook_url']
end
