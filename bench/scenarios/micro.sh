# Micro-benchmarks: criterion, benches/intake.rs. `intake::evaluate` (verify + parse + validate + filter) on
# each provider's documented push payload, and the refusal of a forged signature.

scenario_micro() {
  log "micro: cargo bench --bench intake (criterion)"
  local dir="$RUN_OUT/micro"
  mkdir -p "$dir"
  (cd "$ROOT" && cargo bench --quiet --bench intake) >"$dir/criterion.txt" 2>"$dir/cargo.err" ||
    die "cargo bench failed: $(tail -n 20 "$dir/cargo.err")"
  # "accept/verify+parse/github (7676 B)" then "time:   [lo mid hi]": keep the middle estimate.
  awk '
    /^(accept|reject)\// { name = $0; sub(/ +time:.*/, "", name); sub(/ +$/, "", name) }
    /time:/ && name != "" {
      line = $0; sub(/.*time: *\[/, "", line); split(line, a, " ")
      printf "%s\t%s %s\n", name, a[3], a[4]; name = ""
    }' "$dir/criterion.txt" >"$dir/summary.tsv"
  local name t
  while IFS=$'\t' read -r name t; do
    result micro "$name" "$t"
    row micro "$name" "$t" "-" "-" "-" "-"
  done <"$dir/summary.tsv"
}
