#!lua flags=allow-oom
-- requeue: write a job's document queued again (a retry waits), unless the stored one is terminal:
-- that one is returned and nothing is written.
-- KEYS[1] doc: the result document
-- ARGV[1] doc_json: the new document
-- ARGV[2] ttl_ms: its time to live, if the document has none yet (else the current one is kept)
-- Returns the stored terminal document, or false.
--!include status
return write_unless_terminal(KEYS[1], ARGV[1], ARGV[2])
