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
