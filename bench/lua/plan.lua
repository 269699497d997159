-- Replays a request plan, round-robin, and reports the run as one JSON line (parsed by bench/wrk.py).
--
-- Usage: wrk ... -s bench/lua/plan.lua URL -- PLAN_FILE [track_status]
-- PLAN_FILE: one request per line, tab-separated: METHOD, PATH, TOKEN ("-" for none), BODY (JSON, optional).
-- Every request is formatted once in init(), so request() is a table lookup (wrk's advice for fast servers).
-- With track_status = "1" (the default) response() counts status codes; wrk then hands it each response's
-- headers and body, which costs some client CPU (measured and reported by the runner).

local requests = {}
local count = 0
local index = 0
statuses = {}

local function split_tabs(line)
  local fields = {}
  local start = 1
  while true do
    local tab = string.find(line, "\t", start, true)
    if not tab then
      table.insert(fields, string.sub(line, start))
      return fields
    end
    table.insert(fields, string.sub(line, start, tab - 1))
    start = tab + 1
  end
end

function init(args)
  local plan = args[1]
  local file = assert(io.open(plan, "r"), "cannot open plan file " .. tostring(plan))
  for line in file:lines() do
    if #line > 0 then
      local f = split_tabs(line)
      local headers = {}
      if f[3] and f[3] ~= "-" then
        headers["Authorization"] = "Bearer " .. f[3]
      end
      local body = f[4]
      if body == "" then
        body = nil
      end
      if body then
        headers["Content-Type"] = "application/json"
      end
      count = count + 1
      requests[count] = wrk.format(f[1], f[2], headers, body)
    end
  end
  file:close()
  assert(count > 0, "empty plan " .. plan)
  -- each thread starts at a different place in the plan
  index = (tonumber(id or 0) * 7919) % count
  math.randomseed(os.time() + (tonumber(id) or 0))
  if args[2] == "0" then
    response = nil
  end
end

-- Paced mode (WRK_PACE_MS set): each connection waits that long before each request, so the server runs
-- below saturation (the event-loop lag then shows blocking, not queueing). Only defined when asked for:
-- wrk adds a timer per request whenever delay() exists.
local pace = tonumber(os.getenv("WRK_PACE_MS") or "")
if pace and pace > 0 then
  function delay()
    -- jittered (0.5x .. 1.5x), so connections that started together drift apart instead of arriving in bursts
    return math.floor(pace * (0.5 + math.random()))
  end
end

function request()
  index = index + 1
  if index > count then
    index = 1
  end
  return requests[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function done(summary, latency, _requests)
  local codes = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    if counts then
      for code, n in pairs(counts) do
        codes[code] = (codes[code] or 0) + n
      end
    end
  end
  local parts = {}
  for code, n in pairs(codes) do
    table.insert(parts, string.format('"%d": %d', code, n))
  end
  local pct = {}
  for _, p in ipairs({50, 75, 90, 95, 99, 99.9}) do
    table.insert(pct, string.format('"%s": %d', tostring(p), latency:percentile(p)))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f, "percentiles": {%s}}, ' ..
    '"statuses": {%s}, "threads": %d}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(pct, ", "),
    table.concat(parts, ", "), #threads))
end
