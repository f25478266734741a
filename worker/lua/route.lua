#!lua flags=allow-oom
-- route: choose the backend a call goes to, among those serving the job's model, and reserve one
-- request (and an estimate of its tokens) in that backend's budget for the model, in one step.
-- A backend whose circuit is open is skipped until its cool-down ends; then one call, the probe, may
-- go (it holds the probe until probe_ms from now). Among the others, those whose budget lets the
-- call go now are picked at random in proportion to their share (their limit times their weight),
-- else the one whose budget lets it go soonest. Each budget is a GCRA over Redis time: its
-- theoretical arrival time (TAT, ms) moves on by the request's cost (60000 / rpm, or tokens *
-- 60000 / tpm), and a request may go once now has reached it: no burst, not even after an idle
-- spell. A 429's cool-down on a backend holds its calls back until it ends.
-- When every backend is down, the first job told so for a given end of cool-down is the scout
-- (it comes back then, to carry the probe); the others wait for a circuit to close.
-- KEYS[1] BACKEND_RECOVERIES: how many circuits have closed after being open
-- KEYS[2..] backend_keys: per backend, in order: its circuit, the model's requests' TAT, tokens' TAT
--  and cool-down
-- ARGV[1] max_wait_ms: reserve nothing when the call could go only later than this
-- ARGV[2] probe_ms: how long a probe may take (another may go after that)
-- ARGV[3] pick: a random number from 0 to 1
-- ARGV[4] falls_back_ms: the job moves to another model once every backend has been down this long
--  (it is then no scout here)
-- ARGV[5..] budgets: per backend, in the same order: rpm and tpm to space for (0: no limit), the
--  call's tokens (0: not counted), its share
-- Returns {RESERVED, wait ms, backend index, probe 0/1, clean 0/1, now ms} (go after wait ms; clean:
-- its circuit has no failure on record; now: when it was routed, for circuit.lua), {NOT_RESERVED, wait ms, backend index} (the soonest budget is
-- past max_wait_ms), or {ALL_DOWN, wait ms until a probe may go, 0, scout 0/1, ms every backend has
-- been down, the BACKEND_RECOVERIES count now (for defer: a recovery since then means no wait)}.
--!include clock
local now = now_ms()
-- The n-th key (1 circuit, 2 requests' TAT, 3 tokens' TAT, 4 cool-down) of the i-th backend.
local function key(i, n) return KEYS[1 + 4 * (i - 1) + n] end
local max_wait, probe_ms, pick = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local falls_back_ms = tonumber(ARGV[4])
local ready, total, soonest = {}, 0, nil
local reopen, reopen_circuit, down_since = nil, nil, 0
for i = 1, (#KEYS - 1) / 4 do
  local circuit, cooldown = key(i, 1), key(i, 4)
  local rpm, tpm = tonumber(ARGV[4 * i + 1]), tonumber(ARGV[4 * i + 2])
  local tokens, share = tonumber(ARGV[4 * i + 3]), tonumber(ARGV[4 * i + 4])
  local c = redis.call('HMGET', circuit, 'fails', 'open_until', 'probe_until', 'opened_at')
  local open_until = tonumber(c[2] or '0')
  local back = math.max(open_until, tonumber(c[3] or '0'))
  if open_until > 0 and back > now then
    if not reopen or back < reopen then reopen, reopen_circuit = back, circuit end
    down_since = math.max(down_since, tonumber(c[4] or now))
  else
    local at = now
    local cool = redis.call('PTTL', cooldown)
    if cool > 0 then at = now + cool end
    local tat_r, tat_t = nil, nil
    if rpm > 0 then
      tat_r = math.max(tonumber(redis.call('GET', key(i, 2)) or '0'), now)
      at = math.max(at, tat_r)
    end
    if tpm > 0 and tokens > 0 then
      tat_t = math.max(tonumber(redis.call('GET', key(i, 3)) or '0'), now)
      at = math.max(at, tat_t)
    end
    local candidate = {i = i, at = at, rpm = rpm, tpm = tpm, tokens = tokens, tat_r = tat_r, tat_t = tat_t,
      probe = open_until > 0, clean = not c[1] and open_until == 0, share = share}
    if at <= now then
      ready[#ready + 1] = candidate
      total = total + share
    end
    if not soonest or at < soonest.at or (at == soonest.at and share > soonest.share) then soonest = candidate end
  end
end
if not soonest then
  local scout = 0
  local due = string.format('%d', reopen)
  if now - down_since < falls_back_ms and redis.call('HGET', reopen_circuit, 'scout') ~= due then
    redis.call('HSET', reopen_circuit, 'scout', due)
    scout = 1
  end
  return {ALL_DOWN, reopen - now, 0, scout, now - down_since, tonumber(redis.call('GET', BACKEND_RECOVERIES) or '0')}
end
local chosen = soonest
local point = pick * total
for _, candidate in ipairs(ready) do
  chosen = candidate
  point = point - candidate.share
  if point < 0 then break end
end
local wait = math.ceil(chosen.at - now)
if wait > max_wait then return {NOT_RESERVED, wait, chosen.i} end
if chosen.tat_r then
  local new = math.max(chosen.tat_r, chosen.at) + 60000 / chosen.rpm
  redis.call('SET', key(chosen.i, 2), tostring(new), 'PX', math.ceil(new - now) + 60000)
end
if chosen.tat_t then
  local new = math.max(chosen.tat_t, chosen.at) + chosen.tokens * 60000 / chosen.tpm
  redis.call('SET', key(chosen.i, 3), tostring(new), 'PX', math.ceil(new - now) + 60000)
end
if chosen.probe then
  redis.call('HSET', key(chosen.i, 1), 'probe_until', string.format('%d', now + wait + probe_ms))
end
return {RESERVED, wait, chosen.i, chosen.probe and 1 or 0, chosen.clean and 1 or 0, now}
