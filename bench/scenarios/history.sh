# Scenario 5: scale of history. The audit DB is created by the daemon (schema + migrations), then filled with
# BENCH_HISTORY_ROWS rows over 10 apps (a year of deploys, 5 minutes apart) with sqlite3, and `haul status` /
# `haul history` are timed with hyperfine, on the empty DB and on the full one. Then the same webhook flood
# as scenario 1, shortened, against the full DB: what a year of audit does to intake.

fill_history() { # DB ROWS
  local db=$1 rows=$2
  sqlite3 "$db" >/dev/null <<EOF
PRAGMA journal_mode = WAL;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $rows),
r AS (
  SELECT i,
         printf('app%02d', (i % 10) + 1) AS app,
         (CAST(strftime('%s', 'now') AS INTEGER) - ($rows - i) * 300) * 1000 AS t,
         lower(hex(randomblob(20))) AS sha,
         CASE WHEN i % 20 < 14 THEN 'succeeded' WHEN i % 20 < 16 THEN 'failed'
              WHEN i % 20 < 19 THEN 'ignored' ELSE 'superseded' END AS state
  FROM n
)
INSERT INTO deploys (id, app, trigger, provider, delivery_id, git_ref, sha, actor, state, reason, release_id,
                     previous_sha, superseded_by, requested_at, started_at, finished_at)
SELECT strftime('%Y%m%dT%H%M%S', t / 1000, 'unixepoch') || printf('-h%05d', i % 100000),
       app, 'webhook', 'github', printf('hist-%d', i),
       CASE WHEN state = 'ignored' THEN 'refs/heads/feature' ELSE 'refs/heads/main' END,
       sha, 'Codertocat', state,
       CASE state WHEN 'succeeded' THEN substr(sha, 1, 7) || ' is live'
                  WHEN 'failed' THEN 'build step 1/1 \`npm run build\` exited with status 1; current still points at the previous release'
                  WHEN 'ignored' THEN 'push to refs/heads/feature: this app deploys branch main'
                  ELSE 'superseded before it started' END,
       CASE WHEN state IN ('succeeded', 'failed') THEN strftime('%Y%m%dT%H%M%S', t / 1000, 'unixepoch') || '-' || substr(sha, 1, 7) END,
       NULL, NULL, t,
       CASE WHEN state IN ('succeeded', 'failed') THEN t + 50 END,
       t + 20000
FROM r;
COMMIT;
EOF
}

scenario_history() {
  local rows=$BENCH_HISTORY_ROWS
  log "5. scale of history: haul status / history with $rows audit rows"
  local dir="$RUN_OUT/history" port
  mkdir -p "$dir"
  port=$(free_port)
  local sha
  sha=$(small_repo "$dir/git")
  haul_config "$dir/haul.toml" "$port" "$dir/state" "$dir/srv" "$dir/git/repo.git" 10
  local db="$dir/state/haul.db" cfg="$dir/haul.toml"
  start_haul "$cfg" "$dir/daemon-0.log" "$port" # creates the schema
  stop_pid "$HAUL_PID"

  local cmds=(
    "$HAUL_BIN --config $cfg status"
    "$HAUL_BIN --config $cfg history --limit 20"
    "$HAUL_BIN --config $cfg history app03 --limit 20"
    "$HAUL_BIN --config $cfg status --json"
  )
  hyperfine -N --style basic --warmup 3 --min-runs 20 --export-json "$dir/empty.json" "${cmds[@]}" \
    >"$dir/hyperfine-empty.txt" 2>&1 || die "hyperfine failed: $(tail -n 5 "$dir/hyperfine-empty.txt")"

  local t0
  t0=$EPOCHREALTIME
  fill_history "$db" "$rows"
  result history fill_ms "$(ms_since "$t0" "$EPOCHREALTIME")"
  result history rows "$(sqlite3 "$db" 'SELECT count(*) FROM deploys')"
  result history db_mb "$(mb $(($(stat -c %s "$db") / 1024)))"

  # With the daemon running, as on a server.
  t0=$EPOCHREALTIME
  start_haul "$cfg" "$dir/daemon-1.log" "$port"
  result history daemon_start_ms "$(ms_since "$t0" "$EPOCHREALTIME")"
  hyperfine -N --style basic --warmup 3 --min-runs 20 --export-json "$dir/full.json" "${cmds[@]}" \
    >"$dir/hyperfine-full.txt" 2>&1 || die "hyperfine failed: $(tail -n 5 "$dir/hyperfine-full.txt")"
  "$HAUL_BIN" --config "$cfg" status >"$dir/status.txt" 2>&1 || true
  "$HAUL_BIN" --config "$cfg" history --limit 20 >"$dir/history.txt" 2>&1 || true
  local names=("status" "history --limit 20" "history APP --limit 20" "status --json") i e f
  for i in 0 1 2 3; do
    e=$(jq -r ".results[$i].mean * 1000" "$dir/empty.json")
    f=$(jq -r ".results[$i].mean * 1000" "$dir/full.json")
    result history "empty.${names[$i]// /_}_ms" "$e"
    result history "full.${names[$i]// /_}_ms" "$f"
    result history "full.${names[$i]// /_}_max_ms" "$(jq -r ".results[$i].max * 1000" "$dir/full.json")"
    row history "${names[$i]} ms (mean)" "$(printf '%.1f' "$f")" "$(printf '%.1f' "$e") (0 rows)" \
      "$(ratio "$f" "$e")" "< 50" "$(verdict "$f < 50")"
  done

  # What the supersede step's SQL does with a year of audit: the plan SQLite picks (evidence for the report).
  sqlite3 "$db" "EXPLAIN QUERY PLAN UPDATE deploys SET state = 'superseded' WHERE app = 'app01' AND state = 'queued' AND id != 'x'" \
    >"$dir/plan-supersede.txt"
  for q in "state IN ('succeeded','failed','rolled_back','interrupted')" "state = 'succeeded'" "state = 'running'"; do
    echo "-- $q"
    sqlite3 "$db" "EXPLAIN QUERY PLAN SELECT * FROM deploys WHERE app = 'app01' AND $q ORDER BY seq DESC LIMIT 1"
  done >"$dir/plan-status.txt"

  # The signed flood again (a new signed body per request), shorter, against the full audit (app01 holds
  # rows/10 rows).
  local body="$dir/body.json" dur
  github_payload "$sha" "$body"
  dur=$(((${BENCH_DURATION%s} + 1) / 2))s
  note "signed flood with $rows audit rows: wrk -t$BENCH_THREADS -c$BENCH_CONNS -d$dur"
  BENCH_BODY_FILE=$body BENCH_BODIES=distinct BENCH_SECRET=$BENCH_SECRET BENCH_DIR=$BENCH_DIR \
    BENCH_RUN="hist-$$-$RANDOM" BENCH_OUT="$dir/wrk.json" \
    wrk -t"$BENCH_THREADS" -c"$BENCH_CONNS" -d"$dur" --latency -s "$BENCH_DIR/flood.lua" \
    "http://127.0.0.1:$port/hooks/app01" >"$dir/wrk.txt" 2>&1 || die "wrk failed"
  local acc d_us
  acc=$(jq -r '.status["202"] // 0' "$dir/wrk.json")
  d_us=$(jq -r '.duration_us' "$dir/wrk.json")
  result history flood_accepted_per_s "$(awk -v n="$acc" -v d="$d_us" 'BEGIN { printf "%.0f", n / (d / 1e6) }')"
  result history flood_p99_ms "$(jq -r '.p99_us / 1000' "$dir/wrk.json")"
  result history flood_statuses "$(jq -c '.status' "$dir/wrk.json")"
  wait_drained "$db"
  stop_pid "$HAUL_PID"
  local fresh
  fresh=$(get signed haul.good_per_s)
  row history "signed flood accepted req/s" "$(get history flood_accepted_per_s)" \
    "${fresh:-n/a} (empty DB, scenario 1)" "$(ratio "$(get history flood_accepted_per_s)" "${fresh:-n/a}")" "-" "-"
}
