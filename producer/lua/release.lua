#!lua flags=allow-oom
-- release: a shutdown interrupted the call: the document goes back to queued (unless terminal) and
-- arq's try for the attempt is given back.
-- KEYS[1] doc: the result document
-- KEYS[2] tries: arq's try counter, which arq raised when it started the job
-- ARGV[1] doc_json: the queued document
-- ARGV[2] ttl_ms
-- Returns the stored terminal document, or false.
--!include status
local stored = write_unless_terminal(KEYS[1], ARGV[1], ARGV[2])
if stored then return stored end
local tries = tonumber(redis.call('GET', KEYS[2]) or '0')
if tries > 0 then redis.call('DECR', KEYS[2]) end
return false
