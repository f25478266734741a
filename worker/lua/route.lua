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
-- A tenant's job is held to its tenant's budgets too (requests' and tokens' TAT, calls in flight):
-- the call goes when both its backend's and its tenant's budgets let it; with the tenant's calls in
-- flight at their limit, nothing is reserved (NOT_RESERVED, to look again IN_FLIGHT_RETRY_MS later).
-- KEYS[1] BACKEND_RECOVERIES: how many circuits have closed after being open
-- KEYS[2] tenant_requests: the tenant's requests' TAT (read only with tenant_rpm)
-- KEYS[3] tenant_tokens: the tenant's tokens' TAT (read only with tenant_tpm)
-- KEYS[4] tenant_running: the tenant's calls in flight, by when their hold runs out (ms)
-- KEYS[5..] backend_keys: per backend, in order: its circuit, the model's requests' TAT, tokens' TAT
--  and cool-down
-- ARGV[1] max_wait_ms: reserve nothing when the call could go only later than this
-- ARGV[2] probe_ms: how long a probe may take (another may go after that)
-- ARGV[3] pick: a random number from 0 to 1
-- ARGV[4] falls_back_ms: the job moves to another model once every backend has been down this long
--  (it is then no scout here)
-- ARGV[5] tenant_rpm: the tenant's requests a minute (0: no limit, or no tenant)
-- ARGV[6] tenant_tpm: its tokens a minute (0: no limit)
-- ARGV[7] tenant_cost: the call's tokens, as the tenant's budget counts them
-- ARGV[8] tenant_in_flight: its calls in flight at most (0: no limit)
-- ARGV[9] hold_ms: how long a call holds its place in tenant_running at most (it leaves it when it ends)
-- ARGV[10] member: the call's member of tenant_running
-- ARGV[11..] budgets: per backend, in the same order: rpm and tpm to space for (0: no limit), the
--  call's tokens (0: not counted), its share
-- Returns {RESERVED, wait ms, backend index, probe 0/1, clean 0/1, now ms} (go after wait ms; clean:
-- its circuit has no failure on record; now: when it was routed, for circuit.lua), {NOT_RESERVED, wait ms, backend index} (the soonest budget is
-- past max_wait_ms), or {ALL_DOWN, wait ms until a probe may go, 0, scout 0/1, ms every backend has
-- been down, the BACKEND_RECOVERIES count now (for defer: a recovery since then means no wait)}.
--!include clock
local now = now_ms()
-- The n-th key (1 circuit, 2 requests' TAT, 3 tokens' TAT, 4 cool-down) of the i-th backend.
local function key(i, n) return KEYS[4 + 4 * (i - 1) + n] end
local max_wait, probe_ms, pick = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local falls_back_ms = tonumber(ARGV[4])
local t_rpm, t_tpm, t_cost = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local t_flight = tonumber(ARGV[8])
-- The tenant's own budget: the soonest its next call may go (now, without one).
local t_at, t_tat_r, t_tat_t = now, nil, nil
if t_rpm > 0 then
  t_tat_r = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  t_at = math.max(t_at, t_tat_r)
end
if t_tpm > 0 and t_cost > 0 then
  t_tat_t = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now)
  t_at = math.max(t_at, t_tat_t)
end
if t_flight > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  -- Full: nothing is reserved (a place cannot be held ahead); the job looks again a little later.
  if redis.call('ZCARD', KEYS[4]) >= t_flight then return {NOT_RESERVED, IN_FLIGHT_RETRY_MS, 0} end
end
local ready, total, soonest = {}, 0, nil
local reopen, reopen_circuit, down_since = nil, nil, 0
for i = 1, (#KEYS - 4) / 4 do
  local circuit, cooldown = key(i, 1), key(i, 4)
  local rpm, tpm = tonumber(ARGV[4 * i + 7]), tonumber(ARGV[4 * i + 8])
  local tokens, share = tonumber(ARGV[4 * i + 9]), tonumber(ARGV[4 * i + 10])
  local c = redis.call('HMGET', circuit, 'fails', 'open_until', 'probe_until', 'opened_at')
  local open_until = tonumber(c[2] or '0')
  local back = math.max(open_until, tonumber(c[3] or '0'))
  if open_until > 0 and back > now then
    if not reopen or back < reopen then reopen, reopen_circuit = back, circuit end
    down_since = math.max(down_since, tonumber(c[4] or now))
  else
    local at = t_at
    local cool = redis.call('PTTL', cooldown)
    if cool > 0 then at = math.max(at, now + cool) end
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
if t_tat_r then
  local new = math.max(t_tat_r, chosen.at) + 60000 / t_rpm
  redis.call('SET', KEYS[2], tostring(new), 'PX', math.ceil(new - now) + 60000)
end
if t_tat_t then
  local new = math.max(t_tat_t, chosen.at) + t_cost * 60000 / t_tpm
  redis.call('SET', KEYS[3], tostring(new), 'PX', math.ceil(new - now) + 60000)
end
if t_flight > 0 then
  local hold = tonumber(ARGV[9])
  redis.call('ZADD', KEYS[4], now + wait + hold, ARGV[10])
  redis.call('PEXPIRE', KEYS[4], wait + hold + 60000)
end
return {RESERVED, wait, chosen.i, chosen.probe and 1 or 0, chosen.clean and 1 or 0, now}
