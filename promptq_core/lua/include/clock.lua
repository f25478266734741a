-- now_ms(): Redis's own time in milliseconds (the same clock for every worker and producer).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- seconds_text(ms): a time in ms as the documents write it, Unix seconds with three decimals.
local function seconds_text(ms)
  return string.format('%d.%03d', math.floor(ms / 1000), ms % 1000)
end
