# Scenario 3: idle footprint. haul with 10 apps configured (each with a GitHub webhook) vs adnanh/webhook with
# 10 hooks: resident memory after start-up, and what each does over 10 s of doing nothing (context switches of
# all threads, CPU time; perf's counters too when perf works).

# "tid comm switches" for every thread of PID.
thread_snapshot() {
  local f
  for f in /proc/"$1"/task/*; do
    printf '%s %s %s\n' "${f##*/}" "$(tr ' ' _ <"$f/comm")" \
      "$(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' "$f/status" 2>/dev/null)"
  done
}

# Context switches between two snapshots: threads in both count their difference; a thread that exited in
# between is not in the second one (its last switches are lost: see snapshot_exited, and perf's counter).
snapshot_delta() {
  awk 'NR == FNR { b[$1] = $3; next } ($1 in b) { s += $3 - b[$1]; next } { s += $3 } END { print s + 0 }' "$1" "$2"
}
snapshot_exited() {
  awk 'NR == FNR { a[$1] = 1; next } !($1 in a) { n++ } END { print n + 0 }' "$2" "$1"
}

perf_value() { # CSV EVENT-SUBSTRING
  awk -F, -v e="$2" 'index($3, e) { v = ($1 ~ /not counted/) ? 0 : $1 } END { print v }' "$1"
}

idle_one() {
  local target=$1 dir="$RUN_OUT/idle/$1" port pid
  mkdir -p "$dir"
  port=$(free_port)
  if [ "$target" = haul ]; then
    [ -d "$RUN_OUT/idle/git/repo.git" ] || small_repo "$RUN_OUT/idle/git" >/dev/null
    haul_config "$dir/haul.toml" "$port" "$dir/state" "$dir/srv" "$RUN_OUT/idle/git/repo.git" 10
    start_haul "$dir/haul.toml" "$dir/daemon.log" "$port"
    pid=$HAUL_PID
  else
    peer_hooks "$dir/hooks.json" 10
    start_peer "$dir/hooks.json" "$dir/webhook.log" "$port"
    pid=$PEER_PID
  fi
  # Start-up is over once it answers; give it 2 s more to settle, then look.
  sleep 2
  result idle "$target.rss_kb" "$(proc_kb "$pid" VmRSS)"
  result idle "$target.threads" "$(proc_kb "$pid" Threads)"
  # Two windows of 10 s: right after start-up, then steady state.
  local w
  for w in 1 2; do
    local t0 t1
    thread_snapshot "$pid" >"$dir/threads-$w-before.txt"
    t0=$(cpu_ticks "$pid")
    if perf_ok; then
      perf stat -x, -o "$dir/perf-$w.csv" -p "$pid" \
        -e 'context-switches,task-clock,syscalls:sys_enter_futex,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync' \
        -- sleep 10 >/dev/null 2>&1 || sleep 10
    else
      sleep 10
    fi
    t1=$(cpu_ticks "$pid")
    thread_snapshot "$pid" >"$dir/threads-$w-after.txt"
    result idle "$target.w$w.ctxt_switches" "$(snapshot_delta "$dir/threads-$w-before.txt" "$dir/threads-$w-after.txt")"
    result idle "$target.w$w.threads_exited" "$(snapshot_exited "$dir/threads-$w-before.txt" "$dir/threads-$w-after.txt")"
    result idle "$target.w$w.cpu_ticks" "$((t1 - t0))"
    if [ -f "$dir/perf-$w.csv" ]; then
      # "<not counted>": the counter was never enabled because no thread of the process ran at all.
      result idle "$target.w$w.perf_context_switches" "$(perf_value "$dir/perf-$w.csv" context-switches)"
      result idle "$target.w$w.perf_task_clock_ms" "$(perf_value "$dir/perf-$w.csv" task-clock)"
      result idle "$target.w$w.perf_fsyncs" "$(($(perf_value "$dir/perf-$w.csv" sys_enter_fsync) + $(perf_value "$dir/perf-$w.csv" fdatasync)))"
      result idle "$target.w$w.perf_futex" "$(perf_value "$dir/perf-$w.csv" futex)"
    fi
  done
  stop_pid "$pid"
}

scenario_idle() {
  log "3. idle footprint: 10 apps configured, 10 s of nothing"
  idle_one haul
  idle_one peer
  local h p
  h=$(get idle haul.rss_kb)
  p=$(get idle peer.rss_kb)
  row idle "RSS after start-up MB (10 apps)" "$(mb "$h")" "$(mb "$p")" "$(ratio "$h" "$p")" "haul < 15" \
    "$(verdict "$h < 15 * 1024")"
  local src=perf_context_switches
  perf_ok || src=ctxt_switches
  h=$(get idle haul.w1.$src)
  p=$(get idle peer.w1.$src)
  row idle "wake-ups, 2-12 s after start" "$h" "$p" "-" "-" \
    "$(get idle haul.w1.threads_exited) haul threads exited"
  h=$(get idle haul.w2.$src)
  p=$(get idle peer.w2.$src)
  row idle "wake-ups, 12-22 s after start" "$h" "$p" "-" "haul 0" "$(verdict "$h == 0")"
  h=$(get idle haul.w2.cpu_ticks)
  p=$(get idle peer.w2.cpu_ticks)
  row idle "CPU ticks (1/$(getconf CLK_TCK) s), 12-22 s" "$h" "$p" "-" "-" "-"
  row idle "threads" "$(get idle haul.threads)" "$(get idle peer.threads)" "-" "-" "-"
}
