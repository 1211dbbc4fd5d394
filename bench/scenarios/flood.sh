# Scenarios 1 and 2: a flood of signed (or forged) GitHub push webhooks, haul vs adnanh/webhook, same body, same
# client (wrk -t$BENCH_THREADS -c$BENCH_CONNS -d$BENCH_DURATION with bench/flood.lua).

# flood_one TARGET(haul|peer) KIND(valid|forged): runs one flood and leaves its figures in results.tsv.
flood_one() {
  local target=$1 kind=$2
  local dir="$RUN_OUT/$kind/$target"
  mkdir -p "$dir"
  local port sha body="$RUN_OUT/$kind/body.json" git="$RUN_OUT/$kind/git" pid sig secret
  port=$(free_port)

  # One repo and one payload per scenario, shared by haul and the peer: the bytes on the wire are identical.
  if [ ! -f "$body" ]; then
    sha=$(small_repo "$git")
    github_payload "$sha" "$body"
    result "$kind" body_bytes "$(wc -c <"$body")"
  fi

  if [ "$target" = haul ]; then
    mkdir -p "$dir/haul"
    haul_config "$dir/haul/haul.toml" "$port" "$dir/haul/state" "$dir/haul/srv" "$git/repo.git" 1
    start_haul "$dir/haul/haul.toml" "$dir/daemon.log" "$port"
    pid=$HAUL_PID
  else
    peer_hooks "$dir/hooks.json" 1
    start_peer "$dir/hooks.json" "$dir/webhook.log" "$port"
    pid=$PEER_PID
  fi
  secret=$BENCH_SECRET
  [ "$kind" = valid ] || secret="a forged secret that is also long enough"
  sig="sha256=$(hmac_hex "$secret" "$body")"

  sleep 1
  local rss0 pid0
  rss0=$(proc_kb "$pid" VmRSS)
  pid0=$(last_pid)
  start_sampler "$pid" "$dir/rss.txt"
  local sampler=$SAMPLER_PID
  local perf_proc="" perf_sys=""
  if perf_ok; then
    # Both stop at SIGINT (perf installs its own handler) and then write their counts.
    perf stat -x, -o "$dir/perf-process.csv" -p "$pid" \
      -e 'syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,task-clock,context-switches' >/dev/null 2>&1 &
    perf_proc=$!
    perf stat -x, -o "$dir/perf-system.csv" -a -e 'sched:sched_process_exec,sched:sched_process_fork' \
      >/dev/null 2>&1 &
    perf_sys=$!
    BENCH_PIDS+=("$perf_proc" "$perf_sys")
    sleep 0.5
  fi

  note "$kind flood -> $target: wrk -t$BENCH_THREADS -c$BENCH_CONNS -d$BENCH_DURATION"
  BENCH_BODY_FILE=$body BENCH_SIG=$sig BENCH_RUN="$kind-$target-$$-$RANDOM" BENCH_OUT="$dir/wrk.json" \
    wrk -t"$BENCH_THREADS" -c"$BENCH_CONNS" -d"$BENCH_DURATION" --latency -s "$BENCH_DIR/flood.lua" \
    "http://127.0.0.1:$port/hooks/app01" >"$dir/wrk.txt" 2>&1 || die "wrk failed: $(tail -n 5 "$dir/wrk.txt")"
  local rss_after_flood
  rss_after_flood=$(proc_kb "$pid" VmRSS)

  # Then wait for the work the flood caused to be over. haul: until its queue is empty (the deploys are in the
  # audit). The peer replies before it runs the command and spawns it later: until no new process has been
  # created on the machine for a second (at most 60 s).
  local db="$dir/haul/state/haul.db" drained_ms=0 t0
  t0=$EPOCHREALTIME
  if [ "$target" = haul ]; then
    for _ in $(seq 1 1200); do
      [ "$(sqlite3 -cmd '.timeout 5000' "$db" "SELECT count(*) FROM deploys WHERE state IN ('queued','running')")" = 0 ] && break
      sleep 0.1
    done
  else
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
  pid1=$(last_pid)
  kill "$sampler" 2>/dev/null || true

  local ok_status=202 reqs dur_us good p99 p50 rps total_reqs
  [ "$target" = haul ] || ok_status=200
  reqs=$(jq -r '.requests' "$dir/wrk.json")
  dur_us=$(jq -r '.duration_us' "$dir/wrk.json")
  if [ "$kind" = valid ]; then
    good=$(jq -r --arg s "$ok_status" '.status[$s] // 0' "$dir/wrk.json")
  else
    good=$(jq -r '[.status | to_entries[] | select((.key | tonumber) >= 400) | .value] | add // 0' "$dir/wrk.json")
  fi
  rps=$(awk -v n="$good" -v d="$dur_us" 'BEGIN { printf "%.0f", n / (d / 1e6) }')
  total_reqs=$(awk -v n="$reqs" -v d="$dur_us" 'BEGIN { printf "%.0f", n / (d / 1e6) }')
  p50=$(jq -r '.p50_us / 1000' "$dir/wrk.json")
  p99=$(jq -r '.p99_us / 1000' "$dir/wrk.json")
  local peak_sample
  peak_sample=$(awk 'BEGIN { m = 0 } $2 > m { m = $2 } END { print m }' "$dir/rss.txt" 2>/dev/null || echo 0)

  result "$kind" "$target.responses" "$reqs"
  result "$kind" "$target.statuses" "$(jq -c '.status' "$dir/wrk.json")"
  result "$kind" "$target.wrk_errors" "$(jq -c '.errors' "$dir/wrk.json")"
  result "$kind" "$target.good" "$good"
  result "$kind" "$target.good_per_s" "$rps"
  result "$kind" "$target.responses_per_s" "$total_reqs"
  result "$kind" "$target.p50_ms" "$p50"
  result "$kind" "$target.p99_ms" "$p99"
  result "$kind" "$target.rss_start_kb" "$rss0"
  result "$kind" "$target.rss_after_flood_kb" "$rss_after_flood"
  result "$kind" "$target.rss_end_kb" "$rss_end"
  result "$kind" "$target.rss_peak_sampled_kb" "$peak_sample"
  result "$kind" "$target.vmhwm_kb" "$hwm"
  result "$kind" "$target.tasks_created_system_wide" "$(pid_delta "$pid0" "$pid1")"
  result "$kind" "$target.drain_ms" "$drained_ms"
  if [ -n "$perf_proc" ]; then
    local fsyncs execs
    fsyncs=$(awk -F, '/sys_enter_fsync|sys_enter_fdatasync/ { s += $1 } END { print s + 0 }' "$dir/perf-process.csv")
    execs=$(awk -F, '/sched_process_exec/ { print $1 + 0 }' "$dir/perf-system.csv")
    result "$kind" "$target.fsyncs" "$fsyncs"
    result "$kind" "$target.execs_system_wide" "$execs"
  fi
  if [ "$target" = haul ]; then
    local rows ran skipped states
    rows=$(sqlite3 "$db" "SELECT count(*) FROM deploys")
    # A deploy ran when it was started (started_at) and did not end as ignored; a request for the sha that is
    # already live is recorded "ignored ... already live; nothing fetched" (with or without started_at,
    # depending on the haul version) and did no work.
    ran=$(sqlite3 "$db" "SELECT count(*) FROM deploys WHERE started_at IS NOT NULL AND state != 'ignored'")
    skipped=$(sqlite3 "$db" "SELECT count(*) FROM deploys WHERE state = 'ignored' AND reason LIKE '%already live%'")
    result "$kind" haul.claimed_skipped "$skipped"
    states=$(sqlite3 "$db" "SELECT state || '=' || count(*) FROM deploys GROUP BY state" | paste -sd' ')
    result "$kind" haul.rows_recorded "$rows"
    result "$kind" haul.deploys_run "$ran"
    result "$kind" haul.states "$states"
    sqlite3 -header "$db" "SELECT id, state, reason, started_at, finished_at FROM deploys WHERE started_at IS NOT NULL" \
      >"$dir/deploys-run.txt"
  fi
  stop_pid "$pid"
}

scenario_flood() {
  log "1. signed push flood (valid signatures, one app): haul, then adnanh/webhook"
  flood_one haul valid
  flood_one peer valid
  local h p
  h=$(get valid haul.good_per_s)
  p=$(get valid peer.good_per_s)
  row flood "accepted req/s" "$h" "$p" "$(ratio "$h" "$p")" ">= 3x peer" "$(verdict "$h >= 3 * $p")"
  h=$(get valid haul.p99_ms)
  p=$(get valid peer.p99_ms)
  row flood "p99 latency ms" "$h" "$p" "$(ratio "$h" "$p")" "-" "-"
  local hk pk
  hk=$(get valid haul.vmhwm_kb)
  pk=$(get valid peer.vmhwm_kb)
  row flood "peak RSS MB (VmHWM)" "$(mb "$hk")" "$(mb "$pk")" "$(ratio "$hk" "$pk")" "haul < 50" "$(verdict "$hk < 50 * 1024")"
  local ran execs
  ran=$(get valid haul.deploys_run)
  execs=$(get valid peer.execs_system_wide)
  [ -n "$execs" ] || execs="n/a (needs perf)"
  row flood "deploys run (peer: processes exec'd)" "$ran" "$execs" "-" "haul <= 2" "$(verdict "$ran <= 2")"
  row flood "recorded, skipped as already live" "$(get valid haul.claimed_skipped)" "-" "-" "-" "-"
  row flood "work done after the last reply, ms" "$(get valid haul.drain_ms)" "$(get valid peer.drain_ms)" "-" "-" "-"
  local rows acc
  rows=$(get valid haul.rows_recorded)
  acc=$(get valid haul.good)
  row flood "audit rows / 202s answered" "$rows / $acc" "no record" "-" "rows >= 202s" "$(verdict "$rows >= $acc")"
  local fs
  fs=$(get valid haul.fsyncs)
  if [ -n "$fs" ]; then
    row flood "fsyncs during the flood" \
      "$fs ($(awk -v f="$fs" -v a="$acc" 'BEGIN { if (f > 0) printf "1 per %.1f 202s", a / f; else print "-" }'))" \
      "$(get valid peer.fsyncs)" "-" "group commit" "-"
  fi
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
