-- requeue: write a job's document queued again (a retry waits), unless the stored one is terminal:
-- that one is returned and nothing is written.
-- KEYS[1] doc: the result document
-- ARGV[1] doc_json: the new document
-- ARGV[2] ttl_ms: its time to live, if the document has none yet (else the current one is kept)
-- Returns the stored terminal document, or false.
--!include status
local current = redis.call('GET', KEYS[1])
if TERMINAL[status_of(current)] then return current end
if current then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return false
