#!/usr/bin/env bash
# Runs fuzz targets under libFuzzer (with AddressSanitizer), each for a set
# time, starting from its kept inputs (Tests/Fuzz/TARGET, read only) and the
# inputs earlier runs found (.var/fuzz/TARGET). An input that crashes, hangs
# (20 s) or leaks is saved as Tests/Fuzz/TARGET/crash-…, timeout-… or leak-…,
# where FuzzCorpusTests replays it in every `make test` once committed.
# Prints executions and coverage per target; fails if any target failed.
#   fuzz.sh BIN_DIR SECONDS [TARGET...]     FUZZ_JOBS=N runs N targets at once
set -uo pipefail
BIN=$1 SECONDS_EACH=$2
shift 2
TARGETS=${*:-frames requests archive dump signed-url http}
WORK=${BACKUPD_VAR:-$(pwd)/.var}/fuzz
JOBS=${FUZZ_JOBS:-1}
mkdir -p "$WORK"

run_target() {
  local target=$1
  mkdir -p "$WORK/$target"
  BACKUP_FUZZ_TARGET=$target "$BIN/backup-fuzz" -max_total_time="$SECONDS_EACH" -timeout=20 -rss_limit_mb=3072 \
    -print_final_stats=1 -artifact_prefix="Tests/Fuzz/$target/" "$WORK/$target" "Tests/Fuzz/$target" \
    >"$WORK/$target.log" 2>&1
  echo $? >"$WORK/$target.status"
}
export -f run_target
export BIN SECONDS_EACH WORK

printf '%s\n' $TARGETS | xargs -P "$JOBS" -I{} bash -c 'run_target {}'

failed=0
printf '%-11s %8s %12s %8s %6s %8s %10s  %s\n' target seconds executions exec/s cov features corpus result
for target in $TARGETS; do
  log=$WORK/$target.log
  status=$(cat "$WORK/$target.status")
  executions=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*$')
  features=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*$')
  corpus=$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*$')
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$')
  if [ "$status" = 0 ]; then
    result=ok
  else
    failed=1
    result="FAILED: $(grep -o 'Test unit written to .*' "$log" | tail -1 | sed 's/Test unit written to //') (log: $log)"
  fi
  printf '%-11s %8s %12s %8s %6s %8s %10s  %s\n' "$target" "$SECONDS_EACH" "${executions:-?}" "${speed:-?}" \
    "${cov:-?}" "${features:-?}" "${corpus:-?}" "$result"
done
if [ "$failed" = 1 ]; then
  echo "reproduce with: .build/debug/backup-fuzz TARGET FILE (ordinary build), or the sanitized $BIN/backup-fuzz FILE"
  exit 1
fi
