# Scenario 4: push to live. A repository of 5,000 files with about 50 MB of packed history, served by a real
# sshd (git-shell behind a forced command) on 127.0.0.1. Measured: from the webhook POST to `current` switched
# (inotify sees the rename), against the same transport driven by hand (bench/hand-deploy.sh).

LIVE_REPO_VERSION=1

# live_repo CACHE: builds (once; later runs reuse it) CACHE/server.git. 50 directories x 100 files of 2 kB of
# random base64 (5,000 files, 10 MB), then 90 commits that each rewrite 3 directories (300 files): about
# 50 MB packed, since random text neither compresses much nor deltas.
live_repo() {
  local cache=$1 d c k
  if [ -f "$cache/ready" ]; then
    return 0
  fi
  log "   generating the 5,000-file repository (once; cached in $cache)"
  rm -rf "$cache"
  mkdir -p "$cache/work"
  bgit -C "$cache/work" init -q --initial-branch=main
  for d in $(seq -w 0 49); do
    mkdir -p "$cache/work/d$d"
    openssl rand -base64 153600 | split -l 32 -d -a 3 - "$cache/work/d$d/f"
  done
  bgit -C "$cache/work" add -A
  bgit -C "$cache/work" commit -q -m "5,000 files"
  for c in $(seq 1 90); do
    for k in 0 1 2; do
      d=$(printf '%02d' $(((c * 3 + k) % 50)))
      openssl rand -base64 153600 | split -l 32 -d -a 3 - "$cache/work/d$d/f"
    done
    bgit -C "$cache/work" add -A
    bgit -C "$cache/work" commit -q -m "history $c"
  done
  bgit init -q --bare --initial-branch=main "$cache/server.git"
  bgit -C "$cache/work" push -q "$cache/server.git" main
  bgit -C "$cache/server.git" repack -a -d -q
  rm -rf "$cache/work"
  touch "$cache/ready"
}

# git_server DIR: sshd on a free port serving DIR/server.git to one read-only deploy key, as in
# tests/it/support.rs. Sets SSH_URL, SSH_KEY, SSH_KNOWN_HOSTS, SSHD_PID.
git_server() {
  local dir=$1 port user
  mkdir -p "$dir/ssh"
  ssh-keygen -q -t ed25519 -N '' -C host -f "$dir/ssh/host_key"
  ssh-keygen -q -t ed25519 -N '' -C deploy -f "$dir/ssh/deploy_key"
  printf '#!/bin/sh\nexec git-shell -c "$SSH_ORIGINAL_COMMAND"\n' >"$dir/ssh/git-wrapper.sh"
  chmod 755 "$dir/ssh/git-wrapper.sh"
  printf 'restrict,command="%s" %s\n' "$dir/ssh/git-wrapper.sh" "$(cat "$dir/ssh/deploy_key.pub")" \
    >"$dir/ssh/authorized_keys"
  port=$(free_port)
  cat >"$dir/ssh/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/ssh/host_key
PidFile $dir/ssh/sshd.pid
AuthorizedKeysFile $dir/ssh/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
LogLevel VERBOSE
EOF
  mkdir -p /run/sshd 2>/dev/null || true
  start_bg "$dir/ssh/sshd.log" /usr/sbin/sshd -D -e -f "$dir/ssh/sshd_config"
  SSHD_PID=$BG_PID
  wait_port "$port" 30 || die "sshd did not start: $(tail -n 5 "$dir/ssh/sshd.log")"
  printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1-2 "$dir/ssh/host_key.pub")" >"$dir/ssh/known_hosts"
  chmod 600 "$dir/ssh/deploy_key"
  user=$(id -un)
  SSH_URL="ssh://$user@127.0.0.1:$port$dir/server.git"
  SSH_KEY="$dir/ssh/deploy_key"
  SSH_KNOWN_HOSTS="$dir/ssh/known_hosts"
}

# haul_push_to_live APP_PATH PORT APP SHA BODYFILE: POSTs a signed push of SHA to APP and waits for `current`
# under APP_PATH to be replaced. Prints the milliseconds from just before the POST to the rename.
haul_push_to_live() {
  local path=$1 port=$2 app=$3 sha=$4 body=$5 w t0 t1 code
  mkdir -p "$path"
  w=$(mktemp -d)
  inotifywait -e moved_to,create --include '/current$' --timeout 600 "$path" >"$w/out" 2>"$w/err" &
  local ipid=$!
  BENCH_PIDS+=("$ipid")
  for _ in $(seq 1 200); do
    grep -q 'Watches established' "$w/err" && break
    sleep 0.01
  done
  github_payload "$sha" "$body"
  local sig
  sig="sha256=$(hmac_hex "$BENCH_SECRET" "$body")"
  t0=$EPOCHREALTIME
  code=$(curl -s -o "$w/reply" -w '%{http_code}' -X POST --data-binary "@$body" \
    -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \
    -H "X-GitHub-Delivery: live-$$-$RANDOM-$RANDOM" -H "X-Hub-Signature-256: $sig" \
    "http://127.0.0.1:$port/hooks/$app")
  [ "$code" = 202 ] || die "webhook to $app answered $code: $(cat "$w/reply")"
  wait "$ipid" || die "current was not switched for $app (inotifywait: $(cat "$w/err"))"
  t1=$EPOCHREALTIME
  rm -rf "$w"
  ms_since "$t0" "$t1"
}

wait_drained() { # DB
  for _ in $(seq 1 6000); do
    [ "$(sqlite3 -cmd '.timeout 5000' "$1" "SELECT count(*) FROM deploys WHERE state IN ('queued','running')")" = 0 ] && return 0
    sleep 0.05
  done
  die "deploys did not finish"
}

# timed CMD...: runs CMD, prints its wall time in ms.
timed() {
  local t0
  t0=$EPOCHREALTIME
  "$@" >/dev/null
  ms_since "$t0" "$EPOCHREALTIME"
}

scenario_live() {
  log "4. push to live: 5,000 files, ~50 MB of history, git over SSH on loopback"
  local dir="$RUN_OUT/live" cache="$ROOT/bench/out/cache/live-repo-v$LIVE_REPO_VERSION"
  mkdir -p "$dir"
  live_repo "$cache"
  cp -a "$cache/server.git" "$dir/server.git"
  local files pack_kb
  files=$(bgit --git-dir="$dir/server.git" ls-tree -r --name-only main | wc -l)
  pack_kb=$(bgit --git-dir="$dir/server.git" count-objects -v | awk '/^size-pack/ { print $2 }')
  result live files "$files"
  result live pack_mb "$(mb "$pack_kb")"
  result live commits "$(bgit --git-dir="$dir/server.git" rev-list --count main)"
  note "repository: $files files, $(mb "$pack_kb") MB packed"

  git_server "$dir"
  export BENCH_KEY=$SSH_KEY BENCH_KNOWN_HOSTS=$SSH_KNOWN_HOSTS
  local hand="$BENCH_DIR/hand-deploy.sh"
  local n=$BENCH_LIVE_RUNS port
  port=$(free_port)
  mkdir -p "$dir/haul"
  # keep_releases above the number of deploys: nothing is pruned while measuring, as the hand runs delete
  # nothing either. (On ext4, creating files within ~30 s of a mass delete is slower: the inode allocator skips
  # recently deleted inodes; a prune between deploys seconds apart made the next checkout 2-3x slower.)
  KEEP_RELEASES=$((BENCH_INC_RUNS + 5)) haul_config "$dir/haul/haul.toml" "$port" "$dir/haul/state" "$dir/haul/srv" "$SSH_URL" "$n" \
    "deploy_key = \"$SSH_KEY\"
known_hosts = \"$SSH_KNOWN_HOSTS\""
  start_haul "$dir/haul/haul.toml" "$dir/daemon.log" "$port"
  local db="$dir/haul/state/haul.db" sha i ms
  sha=$(bgit --git-dir="$dir/server.git" rev-parse main)

  # A warm-up fetch through sshd, so neither side pays for cold page cache of the server's pack.
  timed "$hand" fetch "$dir/warmup" "$SSH_URL" >/dev/null

  # Every timed operation starts with nothing dirty in the page cache (an untimed `sync` first), so none pays
  # for writing back what the one before it wrote (haul's switch runs syncfs(2); the hand runs do not).
  #
  # First deploy: a fresh mirror and an empty app path each time (haul: one app per run); by hand, as the issue
  # words it, and by hand made as durable as haul's switch.
  local app
  : >"$dir/first-haul.txt"
  : >"$dir/first-hand.txt"
  : >"$dir/first-durable.txt"
  for i in $(seq 1 "$n"); do
    app=$(printf 'app%02d' "$i")
    sync
    ms=$(haul_push_to_live "$dir/haul/srv/$app" "$port" "$app" "$sha" "$dir/body-first-$i.json")
    echo "$ms" >>"$dir/first-haul.txt"
    wait_drained "$db"
    sync
    timed "$hand" deploy "$dir/hand$i" "$SSH_URL" "$sha" first >>"$dir/first-hand.txt"
    sync
    timed "$hand" durable "$dir/durable$i" "$SSH_URL" "$sha" first >>"$dir/first-durable.txt"
    note "first deploy $i: haul $ms ms, by hand $(tail -n1 "$dir/first-hand.txt") ms, by hand + sync $(tail -n1 "$dir/first-durable.txt") ms"
    [ "$(find "$dir/hand$i/current/" -type f | wc -l)" = "$files" ] || die "hand deploy $i did not check out $files files"
    [ "$(find "$dir/haul/srv/$app/current/" -type f | wc -l)" = "$files" ] || die "haul deploy $i did not check out $files files"
  done

  # Incremental: a new commit that rewrites 10 files, pushed to the server; then haul (app01), a bare
  # `git fetch` (hand1's mirror), a hand deploy (fetch + checkout into a fresh dir + ln -sfn) and the durable
  # hand deploy, in an order that rotates, so none is always the first to ask the server for the new objects.
  cp -a "$dir/hand1" "$dir/hand2"
  bgit clone -q --shared "$dir/server.git" "$dir/work"
  : >"$dir/inc-haul.txt"
  : >"$dir/inc-fetch.txt"
  : >"$dir/inc-hand.txt"
  : >"$dir/inc-durable.txt"
  local r k
  for r in $(seq 1 "$BENCH_INC_RUNS"); do
    for k in $(seq 0 9); do
      openssl rand -base64 1536 >"$dir/work/d$(printf '%02d' $((r % 50)))/f00$k"
    done
    bgit -C "$dir/work" commit -q -a -m "incremental $r"
    bgit -C "$dir/work" push -q origin main
    sha=$(bgit -C "$dir/work" rev-parse HEAD)
    for k in 0 1 2 3; do
      sync
      case $(((r + k) % 4)) in
      0)
        haul_push_to_live "$dir/haul/srv/app01" "$port" app01 "$sha" "$dir/body-inc-$r.json" >>"$dir/inc-haul.txt"
        wait_drained "$db"
        ;;
      1) timed "$hand" fetch "$dir/hand1" "$SSH_URL" >>"$dir/inc-fetch.txt" ;;
      2) timed "$hand" deploy "$dir/hand2" "$SSH_URL" "$sha" "inc$r" >>"$dir/inc-hand.txt" ;;
      3) timed "$hand" durable "$dir/durable1" "$SSH_URL" "$sha" "inc$r" >>"$dir/inc-durable.txt" ;;
      esac
    done
    note "incremental $r: haul $(tail -n1 "$dir/inc-haul.txt") ms, git fetch $(tail -n1 "$dir/inc-fetch.txt") ms, by hand $(tail -n1 "$dir/inc-hand.txt") ms, by hand + sync $(tail -n1 "$dir/inc-durable.txt") ms"
  done
  [ "$(bgit --git-dir="$dir/haul/state/mirrors/app01.git" rev-parse main)" = "$sha" ] || die "haul's mirror is not at $sha"
  [ "$(find "$dir/hand2/current/" -type f | wc -l)" = "$files" ] || die "the incremental hand deploy did not check out $files files"

  sqlite3 -header "$db" "SELECT id, app, state, reason, started_at - requested_at AS wait_ms, finished_at - started_at AS run_ms FROM deploys ORDER BY seq" >"$dir/deploys.txt"
  cp -r "$dir/haul/state/logs" "$dir/deploy-logs"
  stop_pid "$HAUL_PID"
  stop_pid "$SSHD_PID"
  # About 1 GB of repositories and release trees: deleted at the end of the run (not now: a mass delete slows
  # the file creation of whatever runs next on ext4).
  BENCH_PURGE+=("$dir/server.git" "$dir/work" "$dir/warmup" "$dir/haul/srv" "$dir/haul/state/mirrors" "$dir/hand2")
  for i in $(seq 1 "$n"); do
    BENCH_PURGE+=("$dir/hand$i" "$dir/durable$i")
  done

  local hf hh hd fi_h fi_f fi_x fi_d
  hf=$(median <"$dir/first-haul.txt")
  hh=$(median <"$dir/first-hand.txt")
  hd=$(median <"$dir/first-durable.txt")
  result live first_haul_ms "$(paste -sd' ' "$dir/first-haul.txt")"
  result live first_hand_ms "$(paste -sd' ' "$dir/first-hand.txt")"
  result live first_durable_ms "$(paste -sd' ' "$dir/first-durable.txt")"
  row live "first deploy ms (median of $n)" "$hf" "$hh (by hand)" "$(ratio "$hf" "$hh")" "<= 1.2x hand" \
    "$(verdict "$hf <= 1.2 * $hh")"
  row live "first deploy vs durable hand run" "$hf" "$hd (by hand + sync)" "$(ratio "$hf" "$hd")" "-" "-"
  fi_h=$(median <"$dir/inc-haul.txt")
  fi_f=$(median <"$dir/inc-fetch.txt")
  fi_x=$(median <"$dir/inc-hand.txt")
  fi_d=$(median <"$dir/inc-durable.txt")
  result live inc_haul_ms "$(paste -sd' ' "$dir/inc-haul.txt")"
  result live inc_fetch_ms "$(paste -sd' ' "$dir/inc-fetch.txt")"
  result live inc_hand_ms "$(paste -sd' ' "$dir/inc-hand.txt")"
  result live inc_durable_ms "$(paste -sd' ' "$dir/inc-durable.txt")"
  row live "incremental ms (median of $BENCH_INC_RUNS)" "$fi_h" "$fi_f (git fetch)" "$(ratio "$fi_h" "$fi_f")" \
    "< 2x git fetch" "$(verdict "$fi_h < 2 * $fi_f")"
  row live "incremental vs hand run" "$fi_h" "$fi_x (by hand)" "$(ratio "$fi_h" "$fi_x")" "-" "-"
  row live "incremental vs durable hand run" "$fi_h" "$fi_d (by hand + sync)" "$(ratio "$fi_h" "$fi_d")" "-" "-"
}
