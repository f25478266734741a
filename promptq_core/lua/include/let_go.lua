-- let_go(id, doc, record, tries, stored): a job that ended meanwhile (a cancel: its document terminal,
-- or its record gone) leaves every structure, its record and try counter go; returns ``stored``, or
-- else the document at ``doc`` if it is terminal, or false. (Included after status and queue.)
local function let_go(id, doc, record, tries, stored)
  if not stored then
    local current = redis.call('GET', doc)
    if TERMINAL[status_of(current)] then stored = current end
  end
  redis.call('DEL', record, tries)
  unplace(id)
  return stored
end
