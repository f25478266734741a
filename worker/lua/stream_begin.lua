#!lua flags=allow-oom
-- stream_begin: a new attempt of a streamed job begins. When an earlier attempt wrote to the stream,
-- a restart entry tells readers to drop the text they have.
-- KEYS[1] stream
-- ARGV[1] attempt
-- ARGV[2] ttl_ms
-- Returns 1.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', STREAM_MAXLEN, '*', 'type', 'restart', 'attempt', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
