-- Run by bench/check-lua-hmac.sh through wrk (`wrk -s bench/check-lua-hmac.lua URL`), so the check uses wrk's
-- own LuaJIT. It runs at load, before wrk connects anywhere, and exits: nothing is sent.
--
-- Environment: BENCH_DIR (where sha256.lua is), CHECK_DIR (where to write), CHECK_KEYS (a file of keys, one
-- a line), CHECK_BODY (the flood's body), CHECK_SECRET (the flood's secret). Writes CHECK_DIR/manifest.tsv:
--   sha    <message file>  <hex digest>
--   hmac   <key line>      <message file>  <hex HMAC>
--   body   <nonce>         <body file>     <X-Hub-Signature-256>
-- and the files it names, for the shell to recompute with openssl.

local sha = dofile(os.getenv("BENCH_DIR") .. "/sha256.lua")
local dir = assert(os.getenv("CHECK_DIR"), "CHECK_DIR")

local function slurp(path)
   local f = assert(io.open(path, "rb"))
   local s = f:read("*a")
   f:close()
   return s
end

local function write(name, bytes)
   local f = assert(io.open(dir .. "/" .. name, "wb"))
   f:write(bytes)
   f:close()
   return name
end

local manifest = assert(io.open(dir .. "/manifest.tsv", "w"))

-- Messages of the lengths where padding changes shape: around 55/56 bytes, one block, two blocks, and long.
local lengths = { 0, 1, 3, 55, 56, 57, 63, 64, 65, 111, 119, 120, 127, 128, 129, 1000, 7676 }
local messages = {}
for _, n in ipairs(lengths) do
   local parts, i = {}, 0
   while #table.concat(parts) < n do
      i = i + 1
      parts[#parts + 1] = string.format("%d:haul{\"k\":%d}", i, (i * 7919) % 1000)
   end
   local m = string.sub(table.concat(parts), 1, n)
   messages[#messages + 1] = write(string.format("msg-%d.bin", n), m)
end
messages[#messages + 1] = write("msg-abc.bin", "abc")
messages[#messages + 1] = write("msg-github.bin", "Hello, World!")

for _, name in ipairs(messages) do
   manifest:write(string.format("sha\t%s\t%s\n", name, sha.sha256_hex(slurp(dir .. "/" .. name))))
end

local keyno = 0
for key in io.lines(os.getenv("CHECK_KEYS")) do
   keyno = keyno + 1
   for _, name in ipairs(messages) do
      manifest:write(string.format("hmac\t%d\t%s\t%s\n", keyno, name, sha.hmac_hex(key, slurp(dir .. "/" .. name))))
   end
end

-- The flood's own bodies: the tail (,"bench_nonce":"<nonce>"} = 18 bytes + the nonce) ending at each
-- padding boundary, and nonces as flood.lua makes them.
local signer = sha.signer(os.getenv("CHECK_SECRET"), slurp(os.getenv("CHECK_BODY")))
local nonces = { "x", "valid-haul-123456-7890-1-1", "valid-haul-123456-7890-2-1234567" }
for _, n in ipairs({ 37, 38, 39, 45, 46, 47, 48, 60, 100, 110 }) do
   nonces[#nonces + 1] = string.rep("n", n - 6) .. string.format("%06d", n)
end
for i, nonce in ipairs(nonces) do
   local body, sig = signer:sign(nonce)
   manifest:write(string.format("body\t%s\t%s\t%s\n", nonce, write(string.format("body-%d.json", i), body), sig))
end
manifest:write(string.format("prefix\t%d\n", #signer.prefix))
manifest:close()
os.exit(0)
