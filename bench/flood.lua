-- wrk script for the webhook floods. Every request carries a unique X-GitHub-Delivery. Its body is one of:
--
--   BENCH_BODIES=distinct (the signed flood): a new push per request. The GitHub push body with one more
--     member at its end, "bench_nonce" (the delivery id), and its own X-Hub-Signature-256, computed here in
--     LuaJIT (bench/sha256.lua: the HMAC's inner and outer states are computed once at init, after the ipad
--     and opad blocks and the body's prefix, so each request hashes only its last block or two). bench/run
--     checks that code against openssl first (bench/check-lua-hmac.sh).
--   BENCH_BODIES=same (the replay and forged floods): the same body with the same BENCH_SIG on every request.
--     haul remembers each verified body: after the first, such a request is a replay (`200 duplicate`).
--
-- Environment: BENCH_BODY_FILE (the body), BENCH_BODIES (distinct or same; default same), BENCH_SECRET (the
-- secret, for distinct), BENCH_SIG ("sha256=<hex>", for same), BENCH_DIR (where sha256.lua is), BENCH_RUN (a
-- nonce that makes delivery ids unique across runs), BENCH_OUT (where done() writes a JSON summary: counts
-- per HTTP status, latency percentiles in microseconds).

local threads = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
   local body = f:read("*a")
   f:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"
   wrk.headers["X-GitHub-Event"] = "push"
   if os.getenv("BENCH_BODIES") == "distinct" then
      local sha = dofile(assert(os.getenv("BENCH_DIR"), "BENCH_DIR") .. "/sha256.lua")
      signer = sha.signer(assert(os.getenv("BENCH_SECRET"), "BENCH_SECRET"), body)
      body = signer.prefix
   else
      sig = assert(os.getenv("BENCH_SIG"), "BENCH_SIG")
   end
   -- Each request is built with one concat: the fixed head (request line, the headers set above and wrk's
   -- Host), its length, delivery id and signature, then the body (for distinct, the shared prefix and its tail).
   local head = { string.format("%s %s HTTP/1.1", wrk.method, wrk.path) }
   for name, value in pairs(wrk.headers) do
      head[#head + 1] = name .. ": " .. value
   end
   parts = { table.concat(head, "\r\n") .. "\r\nContent-Length: ", "", "\r\nX-GitHub-Delivery: ", "",
      "\r\nX-Hub-Signature-256: ", "", "\r\n\r\n", body, "" }
   nonce = os.getenv("BENCH_RUN") or "run"
   counter = 0
   statuses = {}
end

function request()
   counter = counter + 1
   local id = string.format("%s-%d-%d", nonce, tid, counter)
   local tail, s = "", sig
   if signer then
      tail, s = signer:tail(id)
   end
   parts[2] = #parts[8] + #tail
   parts[4] = id
   parts[6] = s
   parts[9] = tail
   return table.concat(parts)
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
