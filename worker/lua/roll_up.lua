#!lua flags=allow-oom
-- roll_up: a worker's counts of the jobs of one queue it ended since its last roll-up (include/tally.lua), added
-- to the minutes' roll-ups and the batches' tallies in one step. The worker counts a job when its
-- finish script says the job ended there (not for a document terminal already), so each job counts
-- once; counts a worker had not rolled up when it died are lost (the figures, not the jobs).
-- Keys it builds from the ids it is given or finds: minute roll-ups (STATS_PREFIX), batch tallies
--  (BATCH_TALLY_PREFIX).
-- KEYS[1] minute: the roll-up of one of the minutes counted (it puts the script in the queue's slot)
-- ARGV[1] counts_json: {"minutes": {minute: counts, ...}, "batches": {name: row, ...}}
-- Returns the time of the roll-up (ms, Redis time).
--!include clock
--!include tally
local counts = cjson.decode(ARGV[1])
for minute, per_minute in pairs(counts.minutes or {}) do roll_up(minute, per_minute) end
local now = now_ms()
for name, row in pairs(counts.batches or {}) do batch_up(name, row, now) end
return now
