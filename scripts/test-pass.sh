#!/usr/bin/env bash
# Runs one pass of `swift test` (the arguments) under a time limit of
# TEST_PASS_MINUTES (30): a test that hangs ends its pass there, naming the
# tests that started and never ended, instead of holding CI until CI's own
# limit with nothing to show for it.
set -uo pipefail
limit=${TEST_PASS_MINUTES:-30}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Line-buffered, so that what a killed pass printed last is not lost in a buffer.
timeout -k 30 "${limit}m" stdbuf -oL -eL "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  pkill -KILL -f 'PackageTests\.xctest' || true  # swift test does not take its test process with it
  echo "the test pass did not end within $limit minutes; tests that started and did not end:"
  names() { sed -nE "s/^$1 Test (.+) $2.*/\\1/p" "$log" | grep -v '^case ' | sed -E 's/ with [0-9]+ test cases?$//' | sort; }
  comm -23 <(names '◇' 'started\.') <(names '[✔✘➜]' '(passed|failed|skipped)') | grep -vx run | sed 's/^/  /'
fi
exit "$status"
