-- same_request(doc, digest): whether a job's document was submitted with the request whose digest
-- is given. The digest is the document's last "request" field (promptq writes it after every field
-- a caller or an API fills, so a value inside metadata or output cannot pass for it); a document
-- without one (older promptq), a missing document or an empty digest count as the same.
local function same_request(doc, digest)
  if not doc or digest == '' then return true end
  local found, at = nil, 1
  while true do
    local first, last, value = string.find(doc, '"request":"(%x*)"', at)
    if not first then break end
    found, at = value, last + 1
  end
  return found == nil or found == digest
end
