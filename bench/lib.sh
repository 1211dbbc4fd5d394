# Helpers shared by bench/run and bench/scenarios/*.sh. Sourced, not run.
# Everything listens on 127.0.0.1 on a free port; every process started here is recorded in BENCH_PIDS and
# killed by `bench_cleanup` (on exit, whatever happens).

BENCH_PIDS=()
# Bulky scratch data (repositories, release trees) deleted when the run ends, unless BENCH_KEEP_ALL=1.
BENCH_PURGE=()

log() { printf '== %s\n' "$*" >&2; }
note() { printf '   %s\n' "$*" >&2; }
die() {
  printf 'bench: %s\n' "$*" >&2
  exit 1
}

# --- packages ---------------------------------------------------------------------------------------------

# command -> Debian package, for everything the harness runs.
BENCH_NEEDS=(
  "webhook:webhook"
  "wrk:wrk"
  "hyperfine:hyperfine"
  "/usr/sbin/sshd:openssh-server"
  "ssh-keygen:openssh-client"
  "git:git"
  "jq:jq"
  "openssl:openssl"
  "sqlite3:sqlite3"
  "curl:curl"
  "inotifywait:inotify-tools"
  "ss:iproute2"
)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ]; }

ensure_packages() {
  local need=() item cmd pkg
  for item in "${BENCH_NEEDS[@]}"; do
    cmd=${item%%:*}
    pkg=${item#*:}
    have "$cmd" || need+=("$pkg")
  done
  # perf is optional: without it the fsync/exec/wake-up counters are reported as n/a.
  local want_perf=()
  have perf || want_perf=(linux-perf)
  if [ ${#need[@]} -gt 0 ] || [ ${#want_perf[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      [ ${#need[@]} -eq 0 ] || die "missing ${need[*]}; install them (sudo apt-get install ${need[*]}) and run again"
      note "perf is not installed (linux-perf); its counters will be n/a"
      return 0
    fi
    log "installing: ${need[*]} ${want_perf[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    if [ ${#want_perf[@]} -gt 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf >/dev/null 2>&1 ||
        note "linux-perf could not be installed; its counters will be n/a"
    fi
  fi
  mkdir -p /run/sshd 2>/dev/null || true
}

# Does `perf stat` work here (tracepoints included)? Cached in PERF_OK.
perf_ok() {
  if [ -z "${PERF_OK:-}" ]; then
    if have perf && perf stat -x, -e 'sched:sched_process_exec,syscalls:sys_enter_fsync' -- true >/dev/null 2>&1; then
      PERF_OK=1
    else
      PERF_OK=0
    fi
  fi
  [ "$PERF_OK" = 1 ]
}

# --- processes --------------------------------------------------------------------------------------------

free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
      echo "$p"
      return 0
    fi
  done
  die "no free port found"
}

# start_bg LOGFILE CMD...: starts CMD in the background with stdout+stderr to LOGFILE; sets BG_PID.
start_bg() {
  local logfile=$1
  shift
  "$@" >"$logfile" 2>&1 &
  BG_PID=$!
  BENCH_PIDS+=("$BG_PID")
}

# stop_pid PID: SIGTERM, up to 15 s, then SIGKILL. Only for processes this harness started.
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 0.3
  for pid in "${BENCH_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "${BENCH_KEEP_ALL:-0}" != 1 ] && [ ${#BENCH_PURGE[@]} -gt 0 ]; then
    rm -rf "${BENCH_PURGE[@]}"
  fi
}

wait_http() { # URL [seconds]
  local url=$1 secs=${2:-30} i
  for i in $(seq 1 $((secs * 20))); do
    curl -s -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.05
  done
  return 1
}

wait_port() { # PORT [seconds]
  local port=$1 secs=${2:-30} i
  for i in $(seq 1 $((secs * 20))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# --- /proc readings (no fork: bash builtins only, so sampling does not spawn processes) -------------------

proc_kb() { # PID FIELD (VmRSS, VmHWM, Threads ...) -> value, or empty
  local pid=$1 field=$2 k v _
  while read -r k v _; do
    if [ "$k" = "$field:" ]; then
      echo "$v"
      return 0
    fi
  done <"/proc/$pid/status" 2>/dev/null
  echo ""
}

# Voluntary + involuntary context switches of every thread of PID.
ctxt_total() {
  local pid=$1 total=0 f k v _
  for f in /proc/"$pid"/task/*/status; do
    while read -r k v _; do
      case $k in
      voluntary_ctxt_switches: | nonvoluntary_ctxt_switches:) total=$((total + v)) ;;
      esac
    done <"$f" 2>/dev/null
  done
  echo "$total"
}

# utime + stime of PID (all threads), in clock ticks.
cpu_ticks() {
  local pid=$1 stat rest
  read -r stat <"/proc/$pid/stat" || {
    echo 0
    return
  }
  rest=${stat##*) }
  # shellcheck disable=SC2086
  set -- $rest
  echo $((${12} + ${13}))
}

# "busy total" clock ticks of all CPUs since boot (/proc/stat's first line; busy leaves out idle and iowait).
machine_ticks() {
  local _cpu user nice sys idle iowait irq softirq steal _
  read -r _cpu user nice sys idle iowait irq softirq steal _ </proc/stat
  echo "$((user + nice + sys + irq + softirq + steal)) $((user + nice + sys + idle + iowait + irq + softirq + steal))"
}

# The PID most recently handed out on this machine: the difference over a run counts tasks created.
last_pid() {
  local last
  read -r _ _ _ _ last </proc/loadavg
  echo "$last"
}

# Tasks created between two last_pid readings (PIDs wrap at pid_max; one wrap at most is assumed).
pid_delta() {
  local max
  max=$(cat /proc/sys/kernel/pid_max)
  echo $((($2 - $1 + max) % max))
}

# rss_sampler PID OUTFILE: every 250 ms "<unix time> <VmRSS kB>", until PID exits or the sampler is killed.
# Sleeps with `read -t` on a pipe that never delivers, so it forks nothing while it runs.
rss_sampler() {
  local pid=$1 out=$2 fd rss
  exec {fd}<> <(:)
  while [ -r "/proc/$pid/status" ]; do
    rss=$(proc_kb "$pid" VmRSS)
    [ -n "$rss" ] || break
    echo "$EPOCHREALTIME $rss" >>"$out"
    read -r -t 0.25 -u "$fd" _ || true
  done
}

start_sampler() { # PID OUTFILE -> SAMPLER_PID
  rss_sampler "$1" "$2" &
  SAMPLER_PID=$!
  BENCH_PIDS+=("$SAMPLER_PID")
}

# --- numbers ----------------------------------------------------------------------------------------------

mb() { awk -v k="${1:-0}" 'BEGIN { printf "%.1f", k / 1024 }'; }
ratio() { # A B -> A/B with 2 decimals, or n/a
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minimum() { sort -g | head -n1; }
ms_since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f\n", (b - a) * 1000 }'; }

hmac_hex() { # SECRET FILE
  openssl dgst -sha256 -hmac "$1" -r "$2" | cut -d' ' -f1
}

# --- results ----------------------------------------------------------------------------------------------

# result SCENARIO METRIC VALUE: raw figure, one per line in results.tsv.
result() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RUN_OUT/results.tsv"; }

# row SCENARIO METRIC HAUL PEER RATIO TARGET VERDICT: one line of the summary table.
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RUN_OUT/summary.tsv"; }

# verdict CONDITION-AS-AWK-EXPR -> "met" / "MISSED" / "n/a"
verdict() {
  awk "BEGIN { if ($1) print \"met\"; else print \"MISSED\" }" 2>/dev/null || echo "n/a"
}

# --- git --------------------------------------------------------------------------------------------------

bgit() {
  GIT_AUTHOR_NAME="Bench Dev" GIT_AUTHOR_EMAIL="bench@example.com" \
    GIT_COMMITTER_NAME="Bench Dev" GIT_COMMITTER_EMAIL="bench@example.com" \
    GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null git "$@"
}

# small_repo DIR -> prints the sha of main in the bare repo DIR/repo.git (a few files, one commit).
small_repo() {
  local dir=$1
  mkdir -p "$dir/work"
  bgit init -q --bare --initial-branch=main "$dir/repo.git"
  bgit -C "$dir/work" init -q --initial-branch=main
  printf '<h1>bench</h1>\n' >"$dir/work/index.html"
  printf 'body { color: black; }\n' >"$dir/work/site.css"
  bgit -C "$dir/work" add -A
  bgit -C "$dir/work" commit -q -m "bench site"
  bgit -C "$dir/work" push -q "$dir/repo.git" HEAD:refs/heads/main
  bgit -C "$dir/work" rev-parse HEAD
}

# github_payload SHA OUTFILE: GitHub's documented push example (the test fixture), compact, pointed at SHA on
# main. The same bytes are sent to haul and to the peer.
github_payload() {
  jq -cj --arg sha "$1" '.ref = "refs/heads/main" | .after = $sha | .head_commit.id = $sha' \
    "$ROOT/tests/fixtures/github/push.json" >"$2"
}

write_secret() { # FILE
  printf '%s' "$BENCH_SECRET" >"$1"
  chmod 600 "$1"
}

# haul_config FILE PORT STATE_DIR APPS_DIR REPO N [EXTRA-APP-TOML]: N apps app01..appNN, each a GitHub webhook,
# keeping KEEP_RELEASES (default 3) releases.
haul_config() {
  local file=$1 port=$2 state=$3 apps=$4 repo=$5 n=$6 extra=${7:-} i name
  write_secret "$(dirname "$file")/webhook.secret"
  {
    printf 'listen = "127.0.0.1:%s"\nstate_dir = "%s"\nrate_limit_per_minute = 0\n' "$port" "$state"
    for i in $(seq 1 "$n"); do
      name=$(printf 'app%02d' "$i")
      printf '\n[apps.%s]\nrepo = "%s"\nbranch = "main"\npath = "%s/%s"\nkeep_releases = %s\n%s\n' \
        "$name" "$repo" "$apps" "$name" "${KEEP_RELEASES:-3}" "$extra"
      printf '\n[apps.%s.webhook]\nprovider = "github"\nsecret_file = "%s"\n' \
        "$name" "$(dirname "$file")/webhook.secret"
    done
  } >"$file"
}

# peer_hooks FILE N: N hooks app01..appNN for adnanh/webhook, each HMAC-SHA256 over the body, running /bin/true.
peer_hooks() {
  local file=$1 n=$2 i
  {
    printf '['
    for i in $(seq 1 "$n"); do
      [ "$i" = 1 ] || printf ','
      printf '{"id":"app%02d","execute-command":"/bin/true","trigger-rule":{"match":{"type":"payload-hmac-sha256","secret":"%s","parameter":{"source":"header","name":"X-Hub-Signature-256"}}}}' \
        "$i" "$BENCH_SECRET"
    done
    printf ']\n'
  } >"$file"
}

start_haul() { # CONFIG LOGFILE PORT -> HAUL_PID
  start_bg "$2" env HAUL_LOG="${BENCH_HAUL_LOG:-info}" "$HAUL_BIN" --config "$1" serve
  HAUL_PID=$BG_PID
  wait_http "http://127.0.0.1:$3/healthz" 30 || {
    tail -n 20 "$2" >&2
    die "haul did not start (log: $2)"
  }
}

start_ceiling() { # SECRET-FILE RECORDS LOGFILE PORT [--no-sync] -> CEILING_PID
  start_bg "$3" "$CEILING_BIN" --listen "127.0.0.1:$4" --secret-file "$1" --out "$2" "${@:5}"
  CEILING_PID=$BG_PID
  wait_http "http://127.0.0.1:$4/healthz" 30 || {
    tail -n 20 "$3" >&2
    die "the ceiling did not start (log: $3)"
  }
}

start_peer() { # HOOKS LOGFILE PORT -> PEER_PID
  start_bg "$2" webhook -hooks "$1" -ip 127.0.0.1 -port "$3"
  PEER_PID=$BG_PID
  wait_port "$3" 30 || {
    tail -n 20 "$2" >&2
    die "webhook did not start (log: $2)"
  }
}

get() { # SCENARIO METRIC -> the last value recorded for it
  awk -F'\t' -v s="$1" -v m="$2" '$1 == s && $2 == m { v = $3 } END { print v }' "$RUN_OUT/results.tsv"
}

# Share of all CPUs busy over the next second (the whole machine, from /proc/stat), in percent.
cpu_busy_pct() {
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); if (y[2] == x[2]) print 0; else printf "%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2]) }'
}

# Before a scenario: is something else keeping the machine busy? Waits up to 30 s for it to calm down, and
# records what it saw, so a noisy run can be recognised in the results.
quiet_check() { # SCENARIO
  local busy i
  busy=$(cpu_busy_pct)
  for i in $(seq 1 30); do
    [ "$busy" -le 15 ] && break
    [ "$i" = 1 ] && note "the machine is ${busy}% busy with other work; waiting up to 30 s for it to calm down"
    busy=$(cpu_busy_pct)
  done
  [ "$busy" -le 15 ] || note "still ${busy}% busy: $1's figures will be noisy"
  result "$1" background_cpu_pct "$busy"
}
