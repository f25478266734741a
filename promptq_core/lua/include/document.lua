-- The result document is JSON that promptq writes with its fields in one order (job_id, status,
-- attempts, model first; enqueued_at, started_at, finished_at, latency_ms last), which the scripts
-- read fast. A document in any other order (another client's, or a later promptq's) is read by
-- these helpers instead: slower, never wrong.

-- string_end(raw, q): the index of the quote closing the JSON string that opens at q.
local function string_end(raw, q)
  local i = q + 1
  while true do
    local j = string.find(raw, '[\\"]', i)
    if not j then return #raw end
    if string.byte(raw, j) == 34 then return j end  -- '"'
    i = j + 2  -- an escape: skip the escaped character
  end
end

-- value_end(raw, v): the index of the last character of the JSON value that starts at v.
local function value_end(raw, v)
  local c = string.sub(raw, v, v)
  if c == '"' then return string_end(raw, v) end
  if c ~= '{' and c ~= '[' then
    local j = string.find(raw, '[,}%]%s]', v)
    return (j or #raw + 1) - 1
  end
  local depth, i = 0, v
  while true do
    local j = string.find(raw, '[%[%]{}"]', i)
    if not j then return #raw end
    local d = string.sub(raw, j, j)
    if d == '"' then
      j = string_end(raw, j)
    elseif d == '{' or d == '[' then
      depth = depth + 1
    else
      depth = depth - 1
      if depth == 0 then return j end
    end
    i = j + 1
  end
end

-- field_spans(raw): the top-level fields of a JSON object: name -> {first, last}, the span of its
-- value; nil when raw is not an object. Names are taken as written (promptq's hold no escapes).
local function field_spans(raw)
  local i = string.find(raw, '^%s*{')
  if not i then return nil end
  i = string.find(raw, '{', i, true) + 1
  local spans = {}
  while true do
    local k = string.find(raw, '["}]', i)
    if not k or string.byte(raw, k) == 125 then return spans end  -- '}'
    local k_end = string_end(raw, k)
    local colon = string.find(raw, ':', k_end + 1, true)
    if not colon then return spans end
    local v = string.find(raw, '%S', colon + 1)
    if not v then return spans end
    local v_end = value_end(raw, v)
    spans[string.sub(raw, k + 1, k_end - 1)] = {v, v_end}
    i = v_end + 1
  end
end

-- with_fields(raw, values): raw with the values of the named top-level fields replaced (each value
-- already JSON); nil when one of them is not there.
local function with_fields(raw, values)
  local spans = field_spans(raw)
  if not spans then return nil end
  local edits = {}
  for name, value in pairs(values) do
    local span = spans[name]
    if not span then return nil end
    edits[#edits + 1] = {span[1], span[2], value}
  end
  table.sort(edits, function(a, b) return a[1] > b[1] end)
  for _, e in ipairs(edits) do
    raw = string.sub(raw, 1, e[1] - 1) .. e[3] .. string.sub(raw, e[2] + 1)
  end
  return raw
end

-- running(raw, tries, started_at, model_json): the document rewritten for its job's try `tries`,
-- begun at `started_at` (status running; a null model filled in with `model_json`), or nil when it
-- cannot be read. Fast where the fields sit in promptq's own layout, else through with_fields.
local function running(raw, tries, started_at, model_json)
  local head, model, middle = string.match(raw, '^({"job_id":"[^"]*","status":)"%a+","attempts":%d+,"model":([^,]*)(,.*)$')
  local body, tail
  if head then
    body, tail = string.match(middle, '^(.*,"started_at":)[^,]*(,"finished_at":[^,]*,"latency_ms":[^,]*})$')
  end
  if body then
    if model == 'null' then model = model_json end
    return head .. '"running","attempts":' .. tries .. ',"model":' .. model .. body .. started_at .. tail
  end
  local values = {status = '"running"', attempts = tostring(tries), started_at = started_at}
  local spans = field_spans(raw)
  if spans and spans.model and string.sub(raw, spans.model[1], spans.model[2]) == 'null' then values.model = model_json end
  return with_fields(raw, values)
end
