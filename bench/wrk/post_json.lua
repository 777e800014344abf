-- POST one fixed JSON body (the file named by the first script argument) on every request, count responses
-- by status in each thread, and print one machine-readable line at the end:
--   SLIPWAY_BENCH_RESULT {"requests": ..., "duration_us": ..., "latency_us": {...}, "status": {...}, ...}
-- Usage: wrk -t2 -c32 -d10s --latency -s post_json.lua http://127.0.0.1:PORT/predict -- body.json

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   if path == nil then
      error("post_json.lua: pass the body file after `--`")
   end
   local file = assert(io.open(path, "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Content-Type"] = "application/json"
   -- Per thread: responses by status code, and those outside 2xx.
   statuses = {}
   non2xx = 0
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local non2xx_total = 0
   local by_status = {}
   for _, thread in ipairs(threads) do
      non2xx_total = non2xx_total + thread:get("non2xx")
      for code, count in pairs(thread:get("statuses")) do
         by_status[code] = (by_status[code] or 0) + count
      end
   end
   local status_parts = {}
   for code, count in pairs(by_status) do
      table.insert(status_parts, string.format('"%d": %d', code, count))
   end
   local percentiles = {}
   for _, p in ipairs({50, 90, 99, 99.9}) do
      table.insert(percentiles, string.format('"p%s": %d', tostring(p), latency:percentile(p)))
   end
   local errors = summary.errors
   io.write(string.format(
      'SLIPWAY_BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, '
         .. '"status": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"min": %d, "mean": %.1f, "max": %d, %s}}\n',
      summary.requests, summary.duration, summary.bytes, non2xx_total, table.concat(status_parts, ", "),
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      latency.min, latency.mean, latency.max, table.concat(percentiles, ", ")
   ))
end
