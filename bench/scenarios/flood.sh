# Scenarios 1, 1b and 2: floods of GitHub push webhooks, same client for everyone (wrk -t$BENCH_THREADS
# -c$BENCH_CONNS -d$BENCH_DURATION with bench/flood.lua), same payload.
#
#   flood   the signed flood: every request a new push (its own body, signed in the client), to haul, to the
#           durable ceiling (examples/ceiling.rs) and to adnanh/webhook; haul and the ceiling
#           $BENCH_FLOOD_ROUNDS times each, alternating, then the ceiling without fsync (what the client can
#           send), then the peer once.
#   replay  one body, signed once, under a fresh delivery id per request: after the first, haul answers
#           `200 duplicate` and records nothing.
#   forged  one body signed with another secret: haul and the peer refuse it.

# flood_one TARGET KIND [ROUND]: one flood, its figures left in results.tsv under KIND and TARGET (TARGET.rROUND
# with a round). TARGET: haul, ceiling, ceiling-nosync or peer. KIND: signed (a new signed body per request),
# replay (one body, valid signature) or forged (one body, wrong secret).
flood_one() {
  local target=$1 kind=$2 round=${3:-}
  local label=$target${round:+.r$round}
  local dir="$RUN_OUT/$kind/$target${round:+-r$round}"
  mkdir -p "$dir"
  local port sha body="$RUN_OUT/$kind/body.json" git="$RUN_OUT/$kind/git" pid sig secret
  port=$(free_port)

  # One repo and one payload per scenario, shared by every target: the bytes on the wire are identical (for
  # the signed flood: the same prefix, and the same nonces but for the run's tag).
  if [ ! -f "$body" ]; then
    sha=$(small_repo "$git")
    github_payload "$sha" "$body"
    result "$kind" body_bytes "$(wc -c <"$body")"
  fi

  case $target in
  haul)
    mkdir -p "$dir/haul"
    haul_config "$dir/haul/haul.toml" "$port" "$dir/haul/state" "$dir/haul/srv" "$git/repo.git" 1
    start_haul "$dir/haul/haul.toml" "$dir/daemon.log" "$port"
    pid=$HAUL_PID
    ;;
  ceiling | ceiling-nosync)
    write_secret "$dir/webhook.secret"
    local nosync=()
    [ "$target" = ceiling ] || nosync=(--no-sync)
    start_ceiling "$dir/webhook.secret" "$dir/records.txt" "$dir/ceiling.log" "$port" "${nosync[@]}"
    pid=$CEILING_PID
    ;;
  peer)
    peer_hooks "$dir/hooks.json" 1
    start_peer "$dir/hooks.json" "$dir/webhook.log" "$port"
    pid=$PEER_PID
    ;;
  *) die "flood_one: unknown target $target" ;;
  esac
  secret=$BENCH_SECRET
  [ "$kind" != forged ] || secret="a forged secret that is also long enough"
  sig="sha256=$(hmac_hex "$secret" "$body")"
  local bodies=same
  [ "$kind" != signed ] || bodies=distinct

  sleep 1
  local rss0 pid0
  rss0=$(proc_kb "$pid" VmRSS)
  pid0=$(last_pid)
  start_sampler "$pid" "$dir/rss.txt"
  local sampler=$SAMPLER_PID
  local perf_proc="" perf_sys="" client=()
  if perf_ok; then
    # Both stop at SIGINT (perf installs its own handler) and then write their counts.
    perf stat -x, -o "$dir/perf-process.csv" -p "$pid" \
      -e 'syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,task-clock,context-switches' >/dev/null 2>&1 &
    perf_proc=$!
    perf stat -x, -o "$dir/perf-system.csv" -a -e 'sched:sched_process_exec,sched:sched_process_fork' \
      >/dev/null 2>&1 &
    perf_sys=$!
    BENCH_PIDS+=("$perf_proc" "$perf_sys")
    # And the client's own CPU time.
    client=(perf stat -x, -o "$dir/perf-client.csv" -e task-clock --)
    sleep 0.5
  fi

  note "$kind flood -> $label: wrk -t$BENCH_THREADS -c$BENCH_CONNS -d$BENCH_DURATION ($bodies bodies)"
  local ticks0 ticks1 machine0 machine1
  machine0=$(machine_ticks)
  ticks0=$(cpu_ticks "$pid")
  BENCH_BODY_FILE=$body BENCH_BODIES=$bodies BENCH_SECRET=$secret BENCH_SIG=$sig BENCH_DIR=$BENCH_DIR \
    BENCH_RUN="$kind-${label//./-}-$$-$RANDOM" BENCH_OUT="$dir/wrk.json" \
    "${client[@]}" wrk -t"$BENCH_THREADS" -c"$BENCH_CONNS" -d"$BENCH_DURATION" --latency \
    -s "$BENCH_DIR/flood.lua" "http://127.0.0.1:$port/hooks/app01" >"$dir/wrk.txt" 2>&1 ||
    die "wrk failed: $(tail -n 5 "$dir/wrk.txt")"
  ticks1=$(cpu_ticks "$pid")
  machine1=$(machine_ticks)
  local rss_after_flood
  rss_after_flood=$(proc_kb "$pid" VmRSS)

  # Then wait for the work the flood caused to be over. haul: until its queue is empty (the deploys are in the
  # audit). The peer replies before it runs the command and spawns it later: until no new process has been
  # created on the machine for a second (at most 60 s). The ceiling has nothing left to do.
  local db="$dir/haul/state/haul.db" drained_ms=0 t0
  t0=$EPOCHREALTIME
  if [ "$target" = haul ]; then
    for _ in $(seq 1 1200); do
      [ "$(sqlite3 -cmd '.timeout 5000' "$db" "SELECT count(*) FROM deploys WHERE state IN ('queued','running')")" = 0 ] && break
      sleep 0.1
    done
  elif [ "$target" = peer ]; then
    local p_prev p_now
    p_prev=$(last_pid)
    for _ in $(seq 1 60); do
      sleep 1
      p_now=$(last_pid)
      [ $((p_now - p_prev)) -lt 10 ] && [ $((p_now - p_prev)) -ge 0 ] && break
      p_prev=$p_now
    done
  fi
  drained_ms=$(ms_since "$t0" "$EPOCHREALTIME")
  if [ -n "$perf_proc" ]; then
    kill -INT "$perf_proc" "$perf_sys" 2>/dev/null || true
    wait "$perf_proc" "$perf_sys" 2>/dev/null || true
  fi

  local hwm rss_end pid1
  hwm=$(proc_kb "$pid" VmHWM)
  rss_end=$(proc_kb "$pid" VmRSS)
  # Where the memory is (per mapping), to explain a change in the peak.
  cat "/proc/$pid/smaps" >"$dir/smaps.txt" 2>/dev/null || true
  pid1=$(last_pid)
  kill "$sampler" 2>/dev/null || true

  local ok_status=202 reqs dur_us good p99 p50 rps total_reqs
  [ "$target" != peer ] || ok_status=200
  reqs=$(jq -r '.requests' "$dir/wrk.json")
  dur_us=$(jq -r '.duration_us' "$dir/wrk.json")
  case $kind in
  signed) good=$(jq -r --arg s "$ok_status" '.status[$s] // 0' "$dir/wrk.json") ;;
  # Answered: any 2xx (the first request is queued, 202; the rest are duplicates, 200).
  replay) good=$(jq -r '[.status | to_entries[] | select((.key | tonumber) < 300) | .value] | add // 0' "$dir/wrk.json") ;;
  forged) good=$(jq -r '[.status | to_entries[] | select((.key | tonumber) >= 400) | .value] | add // 0' "$dir/wrk.json") ;;
  esac
  rps=$(awk -v n="$good" -v d="$dur_us" 'BEGIN { printf "%.0f", n / (d / 1e6) }')
  total_reqs=$(awk -v n="$reqs" -v d="$dur_us" 'BEGIN { printf "%.0f", n / (d / 1e6) }')
  p50=$(jq -r '.p50_us / 1000' "$dir/wrk.json")
  p99=$(jq -r '.p99_us / 1000' "$dir/wrk.json")
  local peak_sample
  peak_sample=$(awk 'BEGIN { m = 0 } $2 > m { m = $2 } END { print m }' "$dir/rss.txt" 2>/dev/null || echo 0)

  result "$kind" "$label.responses" "$reqs"
  result "$kind" "$label.statuses" "$(jq -c '.status' "$dir/wrk.json")"
  result "$kind" "$label.wrk_errors" "$(jq -c '.errors' "$dir/wrk.json")"
  result "$kind" "$label.good" "$good"
  result "$kind" "$label.good_per_s" "$rps"
  result "$kind" "$label.responses_per_s" "$total_reqs"
  result "$kind" "$label.p50_ms" "$p50"
  result "$kind" "$label.p99_ms" "$p99"
  result "$kind" "$label.rss_start_kb" "$rss0"
  result "$kind" "$label.rss_after_flood_kb" "$rss_after_flood"
  result "$kind" "$label.rss_end_kb" "$rss_end"
  result "$kind" "$label.rss_peak_sampled_kb" "$peak_sample"
  result "$kind" "$label.vmhwm_kb" "$hwm"
  result "$kind" "$label.tasks_created_system_wide" "$(pid_delta "$pid0" "$pid1")"
  result "$kind" "$label.drain_ms" "$drained_ms"
  # CPU time of the server during the flood, per response (user + system, all threads, /proc's ticks).
  result "$kind" "$label.cpu_us_per_response" \
    "$(awk -v t=$((ticks1 - ticks0)) -v hz="$(getconf CLK_TCK)" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "n/a" }')"
  if [ -n "$perf_proc" ]; then
    local fsyncs execs
    fsyncs=$(awk -F, '/sys_enter_fsync|sys_enter_fdatasync/ { s += $1 } END { print s + 0 }' "$dir/perf-process.csv")
    execs=$(awk -F, '/sched_process_exec/ { print $1 + 0 }' "$dir/perf-system.csv")
    result "$kind" "$label.fsyncs" "$fsyncs"
    result "$kind" "$label.execs_system_wide" "$execs"
    local client_ms
    client_ms=$(awk -F, '/task-clock/ { print $1 + 0 }' "$dir/perf-client.csv")
    result "$kind" "$label.client_cpu_us_per_request" \
      "$(awk -v c="$client_ms" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.1f", c * 1000 / n; else print "n/a" }')"
    # What else kept the machine's CPUs busy during the flood (other engineers' builds...): busy time of the
    # whole machine minus the server's and the client's, as a share of all CPUs. Noise shows up here.
    result "$kind" "$label.other_cpu_pct" "$(awk -v a="$machine0" -v b="$machine1" -v s=$((ticks1 - ticks0)) \
      -v c="$client_ms" -v hz="$(getconf CLK_TCK)" 'BEGIN { split(a, x, " "); split(b, y, " ");
        o = (y[1] - x[1]) - s - c * hz / 1000; if (o < 0) o = 0;
        if (y[2] > x[2]) printf "%.0f", 100 * o / (y[2] - x[2]); else print "n/a" }')"
  fi
  case $target in
  haul)
    local rows ran skipped states
    rows=$(sqlite3 "$db" "SELECT count(*) FROM deploys")
    # A deploy ran when it was started (started_at) and did not end as ignored; a request for the sha that is
    # already live is recorded "ignored ... already live; nothing fetched" (with or without started_at,
    # depending on the haul version) and did no work.
    ran=$(sqlite3 "$db" "SELECT count(*) FROM deploys WHERE started_at IS NOT NULL AND state != 'ignored'")
    skipped=$(sqlite3 "$db" "SELECT count(*) FROM deploys WHERE state = 'ignored' AND reason LIKE '%already live%'")
    result "$kind" "$label.claimed_skipped" "$skipped"
    states=$(sqlite3 "$db" "SELECT state || '=' || count(*) FROM deploys GROUP BY state" | paste -sd' ')
    result "$kind" "$label.rows_recorded" "$rows"
    result "$kind" "$label.bodies_remembered" "$(sqlite3 "$db" "SELECT count(*) FROM deploys WHERE body_digest IS NOT NULL")"
    result "$kind" "$label.deploys_run" "$ran"
    result "$kind" "$label.states" "$states"
    result "$kind" "$label.log_lines" "$(wc -l <"$dir/daemon.log")"
    sqlite3 -header "$db" "SELECT id, state, reason, started_at, finished_at FROM deploys WHERE started_at IS NOT NULL" \
      >"$dir/deploys-run.txt"
    ;;
  ceiling*)
    result "$kind" "$label.rows_recorded" "$(wc -l <"$dir/records.txt")"
    ;;
  esac
  stop_pid "$pid"
}

# flood_figures KIND METRIC TARGET ROUNDS -> the values of METRIC for TARGET.r1 .. TARGET.rROUNDS, one a line.
flood_figures() {
  local kind=$1 metric=$2 target=$3 rounds=$4 r
  for r in $(seq 1 "$rounds"); do
    get "$kind" "$target.r$r.$metric"
  done
}

# sum: values on stdin -> their sum.
sum() { awk '{ s += $1 } END { print s + 0 }'; }

# spread: values on stdin -> "min-max", or the value if there is one.
spread() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR == 0) print "n/a"; else if (lo == hi) print lo; else print lo "-" hi }'; }

scenario_flood() {
  local rounds=$BENCH_FLOOD_ROUNDS r m
  log "1. signed push flood (a new signed body per request, one app): haul and the durable ceiling $rounds times each, the ceiling without fsync, adnanh/webhook"
  for r in $(seq 1 "$rounds"); do
    # Alternating who goes first, so neither always runs on a machine the other has just warmed or dirtied.
    if [ $((r % 2)) = 1 ]; then
      flood_one haul signed "$r"
      flood_one ceiling signed "$r"
    else
      flood_one ceiling signed "$r"
      flood_one haul signed "$r"
    fi
    result signed "ratio.r$r" "$(ratio "$(get signed "haul.r$r.good_per_s")" "$(get signed "ceiling.r$r.good_per_s")")"
  done
  # The ceiling without fsync before the peer: the peer leaves a storm of processes behind it.
  flood_one ceiling-nosync signed
  flood_one peer signed

  # Medians over the rounds are what the rest of the harness reads (history compares with haul.good_per_s).
  for m in good_per_s p50_ms p99_ms vmhwm_kb cpu_us_per_response client_cpu_us_per_request other_cpu_pct fsyncs \
    good rows_recorded; do
    result signed "haul.$m" "$(flood_figures signed "$m" haul "$rounds" | median)"
    result signed "ceiling.$m" "$(flood_figures signed "$m" ceiling "$rounds" | median)"
  done
  local ratios
  ratios=$(for r in $(seq 1 "$rounds"); do get signed "ratio.r$r"; done)
  result signed ratio "$(echo "$ratios" | median)"

  local h c p hk ck pk
  h=$(get signed haul.good_per_s)
  c=$(get signed ceiling.good_per_s)
  p=$(get signed peer.good_per_s)
  row flood "accepted req/s vs the durable ceiling (median of $rounds)" "$h" "$c" "$(get signed ratio)" \
    ">= 0.85 ceiling" "$(verdict "$(get signed ratio) >= 0.85")"
  row flood "  each round: haul / ceiling / ratio" \
    "$(flood_figures signed good_per_s haul "$rounds" | paste -sd' ')" \
    "$(flood_figures signed good_per_s ceiling "$rounds" | paste -sd' ')" "$(echo "$ratios" | paste -sd' ')" "-" "-"
  row flood "accepted req/s vs the peer" "$h" "$p" "$(ratio "$h" "$p")" ">= 3x peer" "$(verdict "$h >= 3 * $p")"
  row flood "p99 latency ms vs the ceiling (median; spread)" \
    "$(get signed haul.p99_ms) ($(flood_figures signed p99_ms haul "$rounds" | spread))" \
    "$(get signed ceiling.p99_ms) ($(flood_figures signed p99_ms ceiling "$rounds" | spread))" \
    "$(ratio "$(get signed haul.p99_ms)" "$(get signed ceiling.p99_ms)")" "-" "-"
  row flood "p99 latency ms vs the peer" "$(get signed haul.p99_ms)" "$(get signed peer.p99_ms)" \
    "$(ratio "$(get signed haul.p99_ms)" "$(get signed peer.p99_ms)")" "-" "-"
  hk=$(flood_figures signed vmhwm_kb haul "$rounds" | sort -g | tail -n1)
  ck=$(flood_figures signed vmhwm_kb ceiling "$rounds" | sort -g | tail -n1)
  pk=$(get signed peer.vmhwm_kb)
  row flood "peak RSS MB (VmHWM, highest round) vs the ceiling" "$(mb "$hk")" "$(mb "$ck")" "$(ratio "$hk" "$ck")" \
    "haul < 20" "$(verdict "$hk < 20 * 1024")"
  row flood "peak RSS MB (VmHWM) vs the peer" "$(mb "$hk")" "$(mb "$pk")" "$(ratio "$hk" "$pk")" "haul < 50" \
    "$(verdict "$hk < 50 * 1024")"
  row flood "server CPU us per response (median)" "$(get signed haul.cpu_us_per_response)" \
    "$(get signed ceiling.cpu_us_per_response)" \
    "$(ratio "$(get signed haul.cpu_us_per_response)" "$(get signed ceiling.cpu_us_per_response)")" "-" "-"

  local ran execs
  ran=$(flood_figures signed deploys_run haul "$rounds" | sort -g | tail -n1)
  execs=$(get signed peer.execs_system_wide)
  [ -n "$execs" ] || execs="n/a (needs perf)"
  row flood "deploys run, most in a round (peer: processes exec'd)" "$ran" "$execs" "-" "haul <= 2" "$(verdict "$ran <= 2")"
  row flood "work done after the last reply, ms" "$(get signed haul.r1.drain_ms)" "$(get signed peer.drain_ms)" "-" "-" "-"
  # Durable: every 202 has its row (haul) or its record (the ceiling), in every round.
  local short=0 rows acc
  for r in $(seq 1 "$rounds"); do
    for m in haul ceiling; do
      rows=$(get signed "$m.r$r.rows_recorded")
      acc=$(get signed "$m.r$r.good")
      [ "${rows:-0}" -ge "${acc:-1}" ] || short=$((short + 1))
    done
  done
  row flood "audit rows / 202s, all rounds (ceiling: records)" \
    "$(flood_figures signed rows_recorded haul "$rounds" | sum) / $(flood_figures signed good haul "$rounds" | sum)" \
    "$(flood_figures signed rows_recorded ceiling "$rounds" | sum) / $(flood_figures signed good ceiling "$rounds" | sum)" \
    "-" "rows >= 202s" "$(verdict "$short == 0")"
  local hf cf
  hf=$(get signed haul.fsyncs)
  cf=$(get signed ceiling.fsyncs)
  if [ -n "$hf" ]; then
    row flood "syncs per accepted request (median round)" \
      "$hf ($(awk -v f="$hf" -v a="$(get signed haul.good)" 'BEGIN { if (f > 0) printf "1 per %.1f", a / f; else print "-" }'))" \
      "$cf ($(awk -v f="$cf" -v a="$(get signed ceiling.good)" 'BEGIN { if (f > 0) printf "1 per %.1f", a / f; else print "-" }'))" \
      "-" "group commit" "-"
  fi
  local n
  n=$(get signed ceiling-nosync.good_per_s)
  row flood "the client alone: req/s to the ceiling without fsync" "$n" "$c (with fsync)" "$(ratio "$n" "$c")" \
    "> ceiling" "$(verdict "$n > $c")"
  local cc
  cc=$(get signed ceiling-nosync.client_cpu_us_per_request)
  [ -z "$cc" ] || row flood "client CPU us per request (wrk + Lua HMAC): to haul / to the ceiling without fsync" \
    "$(get signed haul.client_cpu_us_per_request)" "$cc" "-" "-" "-"
  local oh oc
  oh=$(flood_figures signed other_cpu_pct haul "$rounds" | paste -sd' ')
  oc=$(flood_figures signed other_cpu_pct ceiling "$rounds" | paste -sd' ')
  [ -z "${oh// /}" ] || row flood "other work on the machine during each round, % of CPUs" "$oh" "$oc" "-" "-" "-"
}

scenario_replay() {
  log "1b. replay flood (one signed body, a fresh delivery id per request): haul"
  flood_one haul replay
  local a rows
  a=$(get replay haul.good)
  rows=$(get replay haul.rows_recorded)
  row replay "answered req/s (200 duplicate)" "$(get replay haul.good_per_s)" "-" "-" "-" "-"
  row replay "statuses" "$(get replay haul.statuses)" "-" "-" "-" "-"
  row replay "audit rows / answers" "$rows / $a" "-" "-" "rows <= 1" "$(verdict "$rows <= 1")"
  row replay "p99 latency ms" "$(get replay haul.p99_ms)" "-" "-" "-" "-"
  row replay "peak RSS MB (VmHWM)" "$(mb "$(get replay haul.vmhwm_kb)")" "-" "-" "-" "-"
  row replay "daemon log lines written" "$(get replay haul.log_lines)" "-" "-" "-" "-"
  local fs
  fs=$(get replay haul.fsyncs)
  [ -z "$fs" ] || row replay "fsyncs during the flood" "$fs" "-" "-" "-" "-"
}

scenario_forged() {
  log "2. forged flood (bad signatures): haul, then adnanh/webhook"
  flood_one haul forged
  flood_one peer forged
  local h p
  h=$(get forged haul.good_per_s)
  p=$(get forged peer.good_per_s)
  row forged "rejected req/s" "$h" "$p" "$(ratio "$h" "$p")" ">= 2x peer" "$(verdict "$h >= 2 * $p")"
  h=$(get forged haul.p99_ms)
  p=$(get forged peer.p99_ms)
  row forged "p99 latency ms" "$h" "$p" "$(ratio "$h" "$p")" "-" "-"
  local hs hh ps ph
  hs=$(get forged haul.rss_start_kb)
  hh=$(get forged haul.vmhwm_kb)
  ps=$(get forged peer.rss_start_kb)
  ph=$(get forged peer.vmhwm_kb)
  row forged "RSS start -> peak MB" "$(mb "$hs") -> $(mb "$hh")" "$(mb "$ps") -> $(mb "$ph")" "-" \
    "flat (< +5 MB)" "$(verdict "$hh - $hs < 5 * 1024")"
}
