#!/usr/bin/env bash
# Times backups of the demo app through backupd against what a user would
# otherwise run (pg_dump -Fc plus tar czf of the file store), measured in the
# same run on the same data, and prints the ratios.
#   bench.sh BIN_DIR [RUNS]
set -euo pipefail
BIN=${1:-.build/release}
RUNS=${2:-5}
VAR=${BACKUPD_VAR:-$(pwd)/.var}
PORT=${BACKUPD_PGPORT:-55432}
psql="psql -X -q -h 127.0.0.1 -p $PORT -U postgres"
work=$(mktemp -d)
catalog=bench_$(date +%s)
cleanup() {
  [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  $psql -d postgres -c "DROP DATABASE IF EXISTS $catalog WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

$psql -d postgres -c "CREATE DATABASE $catalog" >/dev/null
export BACKUPD_CATALOG="host=127.0.0.1 port=$PORT user=postgres dbname=$catalog"
export BACKUPD_BLOB_DIR=$work/blobs BACKUPD_TLS_CERT=$(pwd)/certs/dev/server.crt BACKUPD_TLS_KEY=$(pwd)/certs/dev/server.key
token=$("$BIN/backupd" token create --namespace bench --role admin --name bench)
"$BIN/backupd" serve --listen 127.0.0.1:0 --ready-file "$work/ready" --log-level warning &
pid=$!
for _ in $(seq 1 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
export BACKUPCTL_ADDR=$(cat "$work/ready") BACKUPCTL_TOKEN=$token BACKUPCTL_CA=$(pwd)/certs/dev/ca.crt
"$BIN/backupctl" env register bench/demo --app shop --database-url "host=127.0.0.1 port=$PORT user=postgres dbname=demo_app" \
  --file-store "$VAR/demo/files" --json >/dev/null

files_bytes=$(du -sb "$VAR/demo/files" | cut -f1)
echo "demo app: database demo_app, $(find "$VAR/demo/files" -type f | wc -l) files, $files_bytes bytes in the file store; $RUNS runs each"

backupd_times=()
for run in $(seq 1 "$RUNS"); do
  start=$(now)
  "$BIN/backupctl" create --env bench/demo --wait --json > "$work/backup.json"
  backupd_times+=("$(echo "$(now) - $start" | bc)")
  grep -q BACKUP_STATUS_FINISHED "$work/backup.json" || { cat "$work/backup.json"; exit 1; }
done
baseline_times=()
for run in $(seq 1 "$RUNS"); do
  start=$(now)
  pg_dump --format=custom --no-owner --no-privileges --file="$work/dump.backup" \
    --dbname="host=127.0.0.1 port=$PORT user=postgres dbname=demo_app"
  tar czf "$work/files.tar.gz" -C "$VAR/demo/files" .
  sync -f "$work/files.tar.gz"
  baseline_times+=("$(echo "$(now) - $start" | bc)")
done

first=${backupd_times[0]}
later=$(printf '%s\n' "${backupd_times[@]:1}" | median)
baseline=$(printf '%s\n' "${baseline_times[@]}" | median)
printf '%-52s %8.3f s\n' "backupd, first backup (every blob new)" "$first"
printf '%-52s %8.3f s\n' "backupd, later backups, median (blobs deduplicated)" "$later"
printf '%-52s %8.3f s\n' "pg_dump -Fc + tar czf of the file store, median" "$baseline"
printf '%-52s %8.2f\n' "ratio first backup / pg_dump+tar" "$(echo "$first / $baseline" | bc -l)"
printf '%-52s %8.2f\n' "ratio later backup / pg_dump+tar" "$(echo "$later / $baseline" | bc -l)"
echo "blob store after $RUNS backups: $(du -sb "$work/blobs/sha256" | cut -f1) bytes (pg_dump+tar output: $(( $(stat -c %s "$work/dump.backup") + $(stat -c %s "$work/files.tar.gz") )) bytes per copy)"
