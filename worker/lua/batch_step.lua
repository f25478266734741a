#!lua flags=allow-oom
-- batch_step: record a provider batch's next step (and what it learnt: a file id, the provider's batch
-- id, its status...) before the step after it is taken, if the batch is still at the step the
-- caller read, in the same attempt at it (else nothing: another worker moved it on). Its next step is due due_in_ms from now;
-- an ended batch leaves PROVIDER_BATCHES for PROVIDER_BATCHES_ENDED (the newest kept), its jobs'
-- set goes (each job has its answer), and its record is kept keep_ms.
-- KEYS[1] batch: the provider batch's record
-- KEYS[2] jobs: its jobs whose answer is not read yet
-- KEYS[3] PROVIDER_BATCHES: provider batches not ended, by when their next step is due
-- KEYS[4] PROVIDER_BATCHES_ENDED: ended provider batches, by when they ended
-- ARGV[1] batch_id: promptq's id of the provider batch
-- ARGV[2] at_step: the step it must be at
-- ARGV[3] due_in_ms: when its next step is due, from now; -1: it ended
-- ARGV[4] keep_ms: an ended batch's record is kept this long
-- ARGV[5] check_field: a field that must hold check_value too ('' none): the attempt a step belongs to
-- ARGV[6] check_value
-- ARGV[7..] fields: name, value, name, value... (``step`` among them when it moves on)
-- Returns STEP_RECORDED, or STEP_MOVED when the batch was not at at_step.
--!include clock
if redis.call('HGET', KEYS[1], 'step') ~= ARGV[2] then return STEP_MOVED end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], ARGV[5]) ~= ARGV[6] then return STEP_MOVED end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
local now = now_ms()
local due_in = tonumber(ARGV[3])
if due_in >= 0 then
  redis.call('ZADD', PROVIDER_BATCHES, now + due_in, ARGV[1])
else
  redis.call('HSET', KEYS[1], 'ended_ms', now)
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', PROVIDER_BATCHES, ARGV[1])
  redis.call('ZADD', PROVIDER_BATCHES_ENDED, now, ARGV[1])
  redis.call('ZREMRANGEBYRANK', PROVIDER_BATCHES_ENDED, 0, -(PROVIDER_BATCHES_KEPT + 1))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return STEP_RECORDED
