-- now_ms(): Redis's own time in milliseconds (the same clock for every worker and producer).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
