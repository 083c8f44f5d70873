-- wrk script for bench/ingress.py: POST /v1/payments with a unique Idempotency-Key.
--
-- Usage: wrk ... -s bench/ingress.lua URL -- TOKEN KEY_PREFIX BODY_FILE
--   TOKEN       the API key, sent as "Authorization: Bearer TOKEN"
--   KEY_PREFIX  unique per run and per phase (warm-up, measure), so no key repeats
--   BODY_FILE   the JSON body to send with every request
-- Each request's key is KEY_PREFIX-<thread>-<counter>. Responses other than
-- 202 are counted by status; a 202 marked Idempotent-Replayed is counted
-- apart (it is not a new intent). done() prints one "BENCH-RESULT" line that
-- bench/ingress.py parses.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  token = args[1]
  prefix = args[2]
  local file = assert(io.open(args[3], "rb"))
  body = file:read("*a")
  file:close()
  counter = 0
  non202 = 0
  replayed = 0
  statuses = {}
end

function request()
  counter = counter + 1
  return wrk.format("POST", nil, {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. "-" .. id .. "-" .. counter,
  }, body)
end

function response(status, headers, body)
  if status ~= 202 then
    non202 = non202 + 1
    statuses[status] = (statuses[status] or 0) + 1
  elseif headers["idempotent-replayed"] or headers["Idempotent-Replayed"] then
    replayed = replayed + 1
  end
end

function done(summary, latency, requests)
  local non, rep, merged = 0, 0, {}
  for _, thread in ipairs(threads) do
    non = non + thread:get("non202")
    rep = rep + thread:get("replayed")
    for status, count in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(merged) do
    table.insert(parts, status .. ":" .. count)
  end
  local errors = summary.errors
  io.write(string.format(
    "BENCH-RESULT requests=%d duration_us=%d non202=%d replayed=%d"
      .. " p50_us=%d p90_us=%d p99_us=%d max_us=%d"
      .. " connect_errors=%d read_errors=%d write_errors=%d timeouts=%d statuses=%s\n",
    summary.requests, summary.duration, non, rep,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    errors.connect, errors.read, errors.write, errors.timeout,
    table.concat(parts, ",")))
end
