#!/usr/bin/env bash
# Checks the SHA-256 and HMAC-SHA256 that the signed flood computes in wrk's LuaJIT (bench/sha256.lua) against
# openssl, through wrk itself (bench/check-lua-hmac.lua runs when wrk loads it and exits before it connects):
#
#   - SHA-256 and HMAC-SHA256 of messages of every length where the padding changes shape (0 to 129 bytes,
#     and 1,000 and 7,676), under keys shorter than a 64-byte block, exactly one, one byte longer and much longer, and GitHub's
#     documented vector;
#   - the flood's own bodies (the push fixture, its prefix padded to whole blocks, a nonce member at the end)
#     for nonces whose tails end on every padding boundary: the signature matches openssl's over the very
#     bytes, the body is JSON, its bench_nonce is the nonce, and without it the body says what BODY says.
#
#   bench/check-lua-hmac.sh [BODY [SECRET]]     (default: the push fixture, compact; bench/run's secret)
#
# Prints one line and exits 0 when everything matches; otherwise names what did not, and exits 1.
# bench/run runs it once before the floods.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
die() {
  printf 'check-lua-hmac: %s\n' "$*" >&2
  exit 1
}
command -v wrk >/dev/null || die "wrk is not installed"
command -v openssl >/dev/null || die "openssl is not installed"
command -v jq >/dev/null || die "jq is not installed"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
body=${1:-}
if [ -z "$body" ]; then
  body=$work/fixture.json
  jq -cj . "$ROOT/tests/fixtures/github/push.json" >"$body"
fi
secret=${2:-${BENCH_SECRET:-a benchmark secret that is long enough}}
keys=$work/keys.txt
{
  printf '%s\n' "It's a Secret to Everybody" "$secret" "k"
  printf '%064d\n%065d\n' 7 7 # exactly one block, and one byte more
  printf 'a key longer than one block, which HMAC first hashes to 32 bytes: %s\n' "$secret"
} >"$keys"
mkdir "$work/out"

BENCH_DIR=$BENCH_DIR CHECK_DIR=$work/out CHECK_KEYS=$keys CHECK_BODY=$body CHECK_SECRET=$secret \
  wrk -t1 -c1 -d1s -s "$BENCH_DIR/check-lua-hmac.lua" http://127.0.0.1:9/ >"$work/wrk.txt" 2>&1 ||
  die "wrk could not run the check: $(tail -n 5 "$work/wrk.txt")"
manifest=$work/out/manifest.tsv
[ -s "$manifest" ] || die "the Lua side wrote nothing: $(tail -n 5 "$work/wrk.txt")"

fail=0
checked=0
mismatch() {
  printf 'check-lua-hmac: MISMATCH %s\n' "$*" >&2
  fail=1
}
want_github=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17
original=$(jq -cS . "$body")
while IFS=$'\t' read -r kind a b c; do
  case $kind in
  sha)
    want=$(openssl dgst -sha256 -r "$work/out/$a" | cut -d' ' -f1)
    [ "$want" = "$b" ] || mismatch "sha256 of $a: lua $b, openssl $want"
    ;;
  hmac)
    key=$(sed -n "${a}p" "$keys")
    want=$(openssl dgst -sha256 -hmac "$key" -r "$work/out/$b" | cut -d' ' -f1)
    [ "$want" = "$c" ] || mismatch "hmac of $b with key $a: lua $c, openssl $want"
    if [ "$b" = msg-github.bin ] && [ "$a" = 1 ] && [ "$c" != "$want_github" ]; then
      mismatch "GitHub's documented vector: lua $c, documented $want_github"
    fi
    ;;
  body)
    want="sha256=$(openssl dgst -sha256 -hmac "$secret" -r "$work/out/$b" | cut -d' ' -f1)"
    [ "$want" = "$c" ] || mismatch "signature of the body for nonce $a: lua $c, openssl $want"
    got=$(jq -r '.bench_nonce' "$work/out/$b" 2>/dev/null) || got="(not JSON)"
    [ "$got" = "$a" ] || mismatch "body for nonce $a: bench_nonce is $got"
    [ "$(jq -cS 'del(.bench_nonce)' "$work/out/$b" 2>/dev/null)" = "$original" ] ||
      mismatch "body for nonce $a: without its nonce it is not the original body"
    ;;
  prefix)
    [ $(((64 + a) % 64)) = 0 ] || mismatch "the prefix ($a bytes) does not end on a block boundary"
    continue
    ;;
  *) mismatch "unexpected manifest line: $kind" ;;
  esac
  checked=$((checked + 1))
done <"$manifest"

[ "$checked" -gt 100 ] || mismatch "only $checked values were checked"
if [ "$fail" != 0 ]; then
  trap - EXIT
  die "bench/sha256.lua disagrees with openssl (its files are kept in $work/out)"
fi
printf 'check-lua-hmac: %d SHA-256 / HMAC-SHA256 values and signed bodies match openssl\n' "$checked"
