-- SHA-256 and HMAC-SHA256 in LuaJIT (its `bit` library), for wrk scripts: wrk's LuaJIT cannot call OpenSSL.
-- Checked against `openssl dgst -sha256 -hmac` by bench/check-lua-hmac.sh, which bench/run runs before a flood.
--
-- A flood signs a new body per request. The bodies share a long prefix (GitHub's push example) and differ in
-- their last bytes, so the HMAC's inner state is computed once, after the ipad block and the prefix (padded
-- with JSON whitespace to end on a 64-byte boundary), and so is the outer state after the opad block: each
-- request hashes only its tail (one or two blocks) and one outer block.
--
--   local sha = dofile(dir .. "/sha256.lua")
--   local s = sha.signer(secret, body)       -- body: a JSON object; s.prefix is its padded opening
--   local body, sig = s:sign(nonce)          -- body ends ,"bench_nonce":"<nonce>"}; sig is "sha256=<hex>"
--   local tail, sig = s:tail(nonce)          -- the same, without copying the prefix: body = s.prefix .. tail
--   sha.hmac_hex(secret, message)            -- the plain HMAC, for the check

local bit = require("bit")
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local lshift, rshift, ror, tobit, tohex = bit.lshift, bit.rshift, bit.ror, bit.tobit, bit.tohex
local byte, char, rep, sub = string.byte, string.char, string.rep, string.sub

local K = {
   0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
   0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
   0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
   0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
   0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
   0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
   0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
   0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}
for i = 1, 64 do
   K[i] = tobit(K[i])
end

local H0 = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
for i = 1, 8 do
   H0[i] = tobit(H0[i])
end

-- The message schedule, 1-based (W[1..16] is the block being compressed).
local W = {}
for i = 1, 64 do
   W[i] = 0
end

-- Loads the 64-byte block of s that starts at index i into W[1..16].
local function load(s, i)
   for j = 1, 16 do
      local b1, b2, b3, b4 = byte(s, i, i + 3)
      W[j] = bor(lshift(b1, 24), lshift(b2, 16), lshift(b3, 8), b4)
      i = i + 4
   end
end

-- Compresses the block in W[1..16] into the state h (8 int32s), in place.
local function compress(h)
   for j = 17, 64 do
      local w15, w2 = W[j - 15], W[j - 2]
      local s0 = bxor(ror(w15, 7), ror(w15, 18), rshift(w15, 3))
      local s1 = bxor(ror(w2, 17), ror(w2, 19), rshift(w2, 10))
      W[j] = tobit(W[j - 16] + s0 + W[j - 7] + s1)
   end
   local a, b, c, d, e, f, g, hh = h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
   for j = 1, 64 do
      local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
      local ch = bxor(band(e, f), band(bnot(e), g))
      local t1 = hh + S1 + ch + K[j] + W[j]
      local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
      local maj = bxor(band(a, b), band(a, c), band(b, c))
      hh, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + S0 + maj)
   end
   h[1], h[2], h[3], h[4] = tobit(h[1] + a), tobit(h[2] + b), tobit(h[3] + c), tobit(h[4] + d)
   h[5], h[6], h[7], h[8] = tobit(h[5] + e), tobit(h[6] + f), tobit(h[7] + g), tobit(h[8] + hh)
end

local function copy(h)
   return { h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8] }
end

local function be32(x)
   return char(band(rshift(x, 24), 255), band(rshift(x, 16), 255), band(rshift(x, 8), 255), band(x, 255))
end

-- The state after the initial state h has absorbed s, whose length must be a multiple of 64.
local function absorb(h, s)
   assert(#s % 64 == 0, "absorb: not whole blocks")
   h = copy(h)
   for i = 1, #s, 64 do
      load(s, i)
      compress(h)
   end
   return h
end

-- Finishes a hash whose state h has absorbed `done` bytes (a multiple of 64), with the remaining bytes
-- `tail`: padding, the length in bits, the last block(s). Returns the final state (8 int32s).
local function finish(h, done, tail)
   h = copy(h)
   local n = #tail
   local whole = n - n % 64
   for i = 1, whole, 64 do
      load(tail, i)
      compress(h)
   end
   local bits = (done + n) * 8
   local hi = math.floor(bits / 4294967296)
   local last = sub(tail, whole + 1) .. "\128" .. rep("\0", (55 - n % 64) % 64) .. be32(hi) .. be32(bits % 4294967296)
   for i = 1, #last, 64 do
      load(last, i)
      compress(h)
   end
   return h
end

local function to_hex(h)
   return tohex(h[1], 8) .. tohex(h[2], 8) .. tohex(h[3], 8) .. tohex(h[4], 8)
      .. tohex(h[5], 8) .. tohex(h[6], 8) .. tohex(h[7], 8) .. tohex(h[8], 8)
end

local function to_bytes(h)
   return be32(h[1]) .. be32(h[2]) .. be32(h[3]) .. be32(h[4]) .. be32(h[5]) .. be32(h[6]) .. be32(h[7]) .. be32(h[8])
end

-- The outer hash of an HMAC: the opad state, then one block made of the inner digest (8 words) and the
-- padding for 64 + 32 bytes, loaded as words without building a string.
local function outer_of(outer, inner)
   local h = copy(outer)
   for j = 1, 8 do
      W[j] = inner[j]
   end
   W[9] = tobit(0x80000000)
   for j = 10, 15 do
      W[j] = 0
   end
   W[16] = (64 + 32) * 8
   compress(h)
   return h
end

local M = {}

function M.sha256(s)
   return to_bytes(finish(H0, 0, s))
end

function M.sha256_hex(s)
   return to_hex(finish(H0, 0, s))
end

-- HMAC-SHA256 states for `key`, with the inner hash advanced over `prefix` (a multiple of 64 bytes).
local function hmac_states(key, prefix)
   if #key > 64 then
      key = M.sha256(key)
   end
   key = key .. rep("\0", 64 - #key)
   local ipad, opad = {}, {}
   for i = 1, 64 do
      local k = byte(key, i)
      ipad[i] = char(bxor(k, 0x36))
      opad[i] = char(bxor(k, 0x5c))
   end
   local inner = absorb(H0, table.concat(ipad) .. prefix)
   local outer = absorb(H0, table.concat(opad))
   return inner, outer, 64 + #prefix
end

-- The HMAC of prefix .. tail, given the states from hmac_states.
local function hmac_tail(inner, outer, done, tail)
   return to_hex(outer_of(outer, finish(inner, done, tail)))
end

function M.hmac_hex(key, msg)
   local inner, outer, done = hmac_states(key, "")
   return hmac_tail(inner, outer, done, msg)
end

-- A signer of bodies that are `body` (a JSON object) with one more member at its end, "bench_nonce". The
-- object's closing brace is dropped and spaces are added before the new member so that the prefix is whole
-- 64-byte blocks after the 64-byte ipad block.
function M.signer(key, body)
   local open = body:gsub("%s+$", "")
   assert(sub(open, -1) == "}", "the body is not a JSON object")
   open = sub(open, 1, -2)
   assert(not open:find("^%s*{%s*$"), "the body is an empty JSON object")
   local prefix = open .. rep(" ", (64 - #open % 64) % 64)
   local inner, outer, done = hmac_states(key, prefix)
   local s = { prefix = prefix }
   -- The end of the body for this nonce (which must need no JSON escaping; the body is prefix .. tail), and
   -- the body's X-Hub-Signature-256.
   function s.tail(_, nonce)
      local tail = ',"bench_nonce":"' .. nonce .. '"}'
      return tail, "sha256=" .. hmac_tail(inner, outer, done, tail)
   end
   -- The whole body for this nonce, and its signature.
   function s.sign(self, nonce)
      local tail, sig = self:tail(nonce)
      return prefix .. tail, sig
   end
   return s
end

return M
