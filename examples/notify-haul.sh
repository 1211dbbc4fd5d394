#!/usr/bin/env bash
# Tell a haul server "there is something new" from CI or a script, signed with Standard Webhooks.
# Usage: notify-haul.sh URL SECRET_FILE [SHA] [REF]
#   URL          https://deploy.example.com/hooks/APP (an app with `provider = "standard"`)
#   SECRET_FILE  the same secret as the app's secret_file (a plain secret, e.g. from `openssl rand -hex 32`)
#   SHA          the commit to deploy (default: the branch tip); it must be on the app's branch
#   REF          default refs/heads/<the app's branch>
# Needs bash, openssl, curl. Exits non-zero unless haul accepted the request.
set -euo pipefail
url=$1 secret=$(cat "$2") sha=${3:-} ref=${4:-}
body=$(printf '{"type":"push"%s%s,"actor":"%s"}' "${sha:+,\"sha\":\"$sha\"}" "${ref:+,\"ref\":\"$ref\"}" "${USER:-ci}")
id="msg_$(date +%s%N)" ts=$(date +%s)
sig=$(printf '%s' "$id.$ts.$body" | openssl dgst -sha256 -hmac "$secret" -binary | base64)
curl -fsS -H "webhook-id: $id" -H "webhook-timestamp: $ts" -H "webhook-signature: v1,$sig" \
  -H 'content-type: application/json' -d "$body" "$url"
echo
