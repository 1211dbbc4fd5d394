-- wrk script for the webhook floods: POSTs the same GitHub push body with the same X-Hub-Signature-256 on every
-- request, and a unique X-GitHub-Delivery per request (haul answers a repeated delivery id "duplicate" and
-- records nothing; the HMAC covers the body only, so the signature stays valid).
--
-- Environment: BENCH_BODY_FILE (the body), BENCH_SIG ("sha256=<hex>"), BENCH_RUN (a nonce that makes delivery
-- ids unique across runs), BENCH_OUT (where done() writes a JSON summary: counts per HTTP status, latency
-- percentiles in microseconds).

local threads = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
   wrk.body = f:read("*a")
   f:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"
   wrk.headers["X-GitHub-Event"] = "push"
   wrk.headers["X-Hub-Signature-256"] = os.getenv("BENCH_SIG")
   nonce = os.getenv("BENCH_RUN") or "run"
   counter = 0
   statuses = {}
end

function request()
   counter = counter + 1
   wrk.headers["X-GitHub-Delivery"] = string.format("%s-%d-%d", nonce, tid, counter)
   return wrk.format()
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local agg = {}
   for _, t in ipairs(threads) do
      local s = t:get("statuses") or {}
      for k, v in pairs(s) do
         agg[k] = (agg[k] or 0) + v
      end
   end
   local parts = {}
   for k, v in pairs(agg) do
      table.insert(parts, string.format('"%d":%d', k, v))
   end
   local e = summary.errors
   local out = string.format(
      '{"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,'
         .. '"mean_us":%.1f,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"status":{%s}}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ","))
   local path = os.getenv("BENCH_OUT")
   if path then
      local f = assert(io.open(path, "w"))
      f:write(out)
      f:close()
   end
   io.write(out)
end
