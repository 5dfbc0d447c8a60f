#!/usr/bin/env bash
# Measures backupd against what a user would otherwise run, in the same run,
# on the same data, and prints the ratios:
#   backup:  backupctl create --wait      vs  pg_dump -Fc + tar czf of the file store
#   restore: backupctl restore --wait     vs  createdb + pg_restore --jobs=2 + tar xzf
#   download archive preparation          vs  tar czf of the same dump and files
#   download over HTTPS (curl)            vs  nginx serving the same file over HTTPS (curl)
#   upload with validation (backupctl)    vs  the download of the same archive
# on a copy of the demo app, the downloads also on an app with BULK_MB MiB of
# documents that do not compress (default 512), and with LARGE_ROWS=N also on
# a database of N rows (6000000 is about 1 GiB). Works on copies; the demo app
# is not touched. Installs nginx from Debian's packages if it is missing.
#   bench.sh BIN_DIR [RUNS]
set -euo pipefail
BIN=${1:-.build/release}
RUNS=${2:-5}
LARGE_ROWS=${LARGE_ROWS:-0}
BULK_MB=${BULK_MB:-512}
VAR=${BACKUPD_VAR:-$(pwd)/.var}
PORT=${BACKUPD_PGPORT:-55432}
psql="psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $PORT -U postgres"
url() { echo "host=127.0.0.1 port=$PORT user=postgres dbname=$1"; }
work=$(mktemp -d)
tag=bench_$(date +%s)
cleanup() {
  [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  [ -n "${nginx_pid:-}" ] && kill -TERM "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null || true
  for db in $($psql -d postgres -tAc "SELECT datname FROM pg_database WHERE datname LIKE '${tag}%'"); do
    $psql -d postgres -c "DROP DATABASE \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# Every row and section also goes to the report that ends up in docs/benchmarks.md.
report=$VAR/bench-report.txt
: > "$report"
row() { printf '%-58s %10s\n' "$1" "$2" | tee -a "$report"; }
section() { echo "== $1" | tee -a "$report"; }
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

$psql -d postgres -c "CREATE DATABASE ${tag}_catalog" -c "CREATE DATABASE ${tag}_demo TEMPLATE demo_app" >/dev/null
cp -a "$VAR/demo/files" "$work/files"
export BACKUPD_CATALOG=$(url "${tag}_catalog")
export BACKUPD_BLOB_DIR=$work/blobs BACKUPD_TLS_CERT=$(pwd)/certs/dev/server.crt BACKUPD_TLS_KEY=$(pwd)/certs/dev/server.key
token=$("$BIN/backupd" token create --namespace bench --role admin --name bench)
platform=$("$BIN/backupd" token create --platform --name bench-platform)
"$BIN/backupd" serve --listen 127.0.0.1:0 --ready-file "$work/ready" --log-level warning --file-store-root "$work" \
  --download-keys "$(pwd)/certs/dev/download-keys" &
pid=$!
for _ in $(seq 1 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
export BACKUPCTL_ADDR=$(cat "$work/ready") BACKUPCTL_TOKEN=$token BACKUPCTL_CA=$(pwd)/certs/dev/ca.crt
ctl() { "$BIN/backupctl" "$@"; }
ctl env register bench/demo --token "$platform" --app shop --database-url "$(url "${tag}_demo")" --file-store "$work/files" --json >/dev/null

section "backup of the demo app: $(find "$work/files" -type f | wc -l) files, $(du -sb "$work/files" | cut -f1) bytes; $RUNS runs each"
times=()
for run in $(seq 1 "$RUNS"); do
  start=$(now)
  ctl create --env bench/demo --wait --json > "$work/backup.json"
  times+=("$(since "$start")")
  grep -q BACKUP_STATUS_FINISHED "$work/backup.json" || { cat "$work/backup.json"; exit 1; }
done
baseline=()
for run in $(seq 1 "$RUNS"); do
  start=$(now)
  pg_dump --format=custom --no-owner --no-privileges --file="$work/dump.backup" --dbname="$(url "${tag}_demo")"
  tar czf "$work/files.tar.gz" -C "$work/files" .
  sync -f "$work/files.tar.gz"
  baseline+=("$(since "$start")")
done
first=${times[0]}
later=$(printf '%s\n' "${times[@]:1}" | median)
base=$(printf '%s\n' "${baseline[@]}" | median)
row "backupd, first backup (every blob new)" "$(printf '%.3f s' "$first")"
row "backupd, later backups, median (blobs deduplicated)" "$(printf '%.3f s' "$later")"
row "pg_dump -Fc + tar czf, median" "$(printf '%.3f s' "$base")"
row "ratio first backup / pg_dump+tar" "$(ratio "$first" "$base")"
row "ratio later backup / pg_dump+tar" "$(ratio "$later" "$base")"
row "blob store after $RUNS backups (bytes)" "$(du -sb "$work/blobs/sha256" | cut -f1)"
row "one pg_dump+tar copy (bytes)" "$(( $(stat -c %s "$work/dump.backup") + $(stat -c %s "$work/files.tar.gz") ))"

section "restore of the demo app; $RUNS runs each"
backup_id=$(json '["id"]' < "$work/backup.json")
ctl env stop bench/demo >/dev/null
times=()
for run in $(seq 1 "$RUNS"); do
  start=$(now)
  ctl restore "$backup_id" --to demo --wait --json > "$work/restore.json"
  times+=("$(since "$start")")
  grep -q JOB_STATUS_FINISHED "$work/restore.json" || { cat "$work/restore.json"; exit 1; }
done
baseline=()
for run in $(seq 1 "$RUNS"); do
  rm -rf "$work/untarred"; mkdir "$work/untarred"
  start=$(now)
  $psql -d postgres -c "CREATE DATABASE ${tag}_plain_$run" >/dev/null
  pg_restore --no-owner --no-privileges --exit-on-error --jobs=2 --dbname="$(url "${tag}_plain_$run")" "$work/dump.backup"
  tar xzf "$work/files.tar.gz" -C "$work/untarred"
  sync -f "$work/untarred"
  baseline+=("$(since "$start")")
done
restore=$(printf '%s\n' "${times[@]}" | median)
base=$(printf '%s\n' "${baseline[@]}" | median)
row "backupd restore (database and files), median" "$(printf '%.3f s' "$restore")"
row "createdb + pg_restore --jobs=2 + tar xzf, median" "$(printf '%.3f s' "$base")"
row "ratio backupd / pg_restore+tar" "$(ratio "$restore" "$base")"

if [ "$LARGE_ROWS" -gt 0 ]; then
  large=${tag}_large
  section "a large database: $LARGE_ROWS rows in two tables with indexes"
  $psql -d postgres -c "CREATE DATABASE $large" >/dev/null
  half=$(( LARGE_ROWS / 2 ))
  $psql -d "$large" <<SQL >/dev/null
CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL, payload text NOT NULL, at timestamptz NOT NULL);
CREATE TABLE readings (id bigint PRIMARY KEY, sensor int NOT NULL, value double precision NOT NULL, note text NOT NULL);
INSERT INTO events SELECT i, 'kind-' || (i % 17), md5(i::text) || md5((i * 7)::text), timestamptz '2026-01-01' + i * interval '1 second'
  FROM generate_series(1, $half) AS i;
INSERT INTO readings SELECT i, i % 1000, random() * 100, md5((i * 3)::text) || md5((i * 5)::text)
  FROM generate_series(1, $half) AS i;
CREATE INDEX events_kind ON events (kind, at);
CREATE INDEX readings_sensor ON readings (sensor, value);
CREATE TABLE documents (id text);
SQL
  row "database size (bytes)" "$($psql -d "$large" -tAc "SELECT pg_database_size(current_database())")"
  mkdir -p "$work/large-files"
  ctl env register bench/large --token "$platform" --app big --database-url "$(url "$large")" --file-store "$work/large-files" \
    --file-query "SELECT id FROM documents" --json >/dev/null
  stored_before=$(du -sb "$work/blobs/sha256" | cut -f1)
  start=$(now)
  ctl create --env bench/large --wait --json > "$work/large.json"
  backup=$(since "$start")
  stored_first=$(( $(du -sb "$work/blobs/sha256" | cut -f1) - stored_before ))
  start=$(now)
  pg_dump --format=custom --no-owner --no-privileges --file="$work/large-plain.backup" --dbname="$(url "$large")"
  base=$(since "$start")
  row "backupd backup" "$(printf '%.1f s' "$backup")"
  row "pg_dump -Fc" "$(printf '%.1f s' "$base")"
  row "ratio backupd / pg_dump" "$(ratio "$backup" "$base")"
  row "pg_dump -Fc file (bytes)" "$(stat -c %s "$work/large-plain.backup")"
  row "backupd stored: compressed dump chunks (bytes)" "$stored_first"
  # The next night: 1 % of the rows changed.
  $psql -d "$large" -c "UPDATE events SET payload = upper(payload) WHERE id % 100 = 0" >/dev/null
  stored_before=$(du -sb "$work/blobs/sha256" | cut -f1)
  start=$(now)
  ctl create --env bench/large --wait --json >/dev/null
  next=$(since "$start")
  stored_next=$(( $(du -sb "$work/blobs/sha256" | cut -f1) - stored_before ))
  row "next backup, 1 % of rows changed" "$(printf '%.1f s' "$next")"
  row "next backup stored (bytes)" "$stored_next"
  row "ratio next stored / first stored" "$(ratio "$stored_next" "$stored_first")"
  large_id=$(json '["id"]' < "$work/large.json")
  ctl env stop bench/large >/dev/null
  start=$(now)
  ctl restore "$large_id" --to large --wait --json > "$work/large-restore.json"
  restore=$(since "$start")
  grep -q JOB_STATUS_FINISHED "$work/large-restore.json" || { cat "$work/large-restore.json"; exit 1; }
  start=$(now)
  $psql -d postgres -c "CREATE DATABASE ${tag}_large_plain" >/dev/null
  pg_restore --no-owner --no-privileges --exit-on-error --jobs=2 --dbname="$(url "${tag}_large_plain")" "$work/large-plain.backup"
  base=$(since "$start")
  row "backupd restore" "$(printf '%.1f s' "$restore")"
  row "createdb + pg_restore --jobs=2 into a fresh database" "$(printf '%.1f s' "$base")"
  row "ratio backupd / pg_restore" "$(ratio "$restore" "$base")"
fi

section "downloads: archive preparation and HTTPS transfer; $RUNS runs each"
command -v nginx >/dev/null || { SUDO=$([ "$(id -u)" = 0 ] || echo sudo); $SUDO apt-get install -y -qq nginx >/dev/null; }
# An app whose documents do not compress (like the PDFs and images of real apps): BULK_MB MiB in 2 MiB files.
$psql -d postgres -c "CREATE DATABASE ${tag}_bulk TEMPLATE demo_app" >/dev/null
$psql -d "${tag}_bulk" -c "DELETE FROM \"shop\$invoice\"" -c "DELETE FROM \"system\$filedocument\"" \
  -c "INSERT INTO \"system\$filedocument\" SELECT i, md5('bulk ' || i)::uuid::text, 'scan-' || i || '.pdf', 2097152, true, false, now()
      FROM generate_series(1, $(( BULK_MB / 2 ))) AS i" >/dev/null
mkdir -p "$work/bulk"
$psql -d "${tag}_bulk" -tA -c 'SELECT "__uuid__" FROM "system$filedocument"' | while read -r key; do
  mkdir -p "$work/bulk/${key:0:2}/${key:2:2}"
  head -c 2097152 < <(openssl enc -aes-128-ctr -nosalt -K "${key//-/}" -iv 00000000000000000000000000000000 < /dev/zero 2>/dev/null) \
    > "$work/bulk/${key:0:2}/${key:2:2}/$key"
done
ctl env register bench/bulk --token "$platform" --app bulk --database-url "$(url "${tag}_bulk")" --file-store "$work/bulk" --json >/dev/null
for env in demo bulk; do
  # Each backup's archive is prepared once (later requests share it), so every run downloads a backup of its own.
  [ "$env" = demo ] && ctl env start bench/demo >/dev/null
  ids=()
  for run in $(seq 1 "$RUNS"); do ids+=("$(ctl create --env "bench/$env" --wait --json | json '["id"]')"); done
  times=()
  for id in "${ids[@]}"; do
    start=$(now)
    ctl download "$id" --url --json > "$work/download.json"
    times+=("$(since "$start")")
  done
  # The same content as a user would pack it: the dump and the documents, with tar czf.
  archive="$work/blobs/archives/$(ls -t "$work/blobs/archives" | head -1)"
  rm -rf "$work/packed" && mkdir -p "$work/packed"
  tar xzf "$archive" -C "$work/packed" db/db.backup
  cp -a "$work/$([ "$env" = demo ] && echo files || echo bulk)" "$work/packed/tree"
  baseline=()
  for run in $(seq 1 "$RUNS"); do
    start=$(now)
    tar czf "$work/packed.tar.gz" -C "$work/packed" .
    sync -f "$work/packed.tar.gz"
    baseline+=("$(since "$start")")
  done
  prepare=$(printf '%s\n' "${times[@]}" | median)
  base=$(printf '%s\n' "${baseline[@]}" | median)
  row "$env: archive of $(stat -c %s "$archive") bytes, preparation, median" "$(printf '%.3f s' "$prepare")"
  row "$env: tar czf of the same dump and files (tree $(du -sb "$work/packed" | cut -f1) bytes)" "$(printf '%.3f s' "$base")"
  row "$env: ratio preparation / tar czf" "$(ratio "$prepare" "$base")"
done

# The last archive, fetched by curl from backupd's signed URL and from nginx over HTTPS on loopback.
url=$(json '["url"]' < "$work/download.json")
mkdir -p "$work/www" && cp "$archive" "$work/www/archive.tar.gz"
nginx_port=$(( 20000 + RANDOM % 20000 ))
cat > "$work/nginx.conf" <<NGINX
daemon off; worker_processes 1; user root; pid $work/nginx.pid; error_log $work/nginx-error.log;
events {}
http {
  access_log off; sendfile on;
  server {
    listen 127.0.0.1:$nginx_port ssl;
    ssl_certificate $(pwd)/certs/dev/server.crt; ssl_certificate_key $(pwd)/certs/dev/server.key;
    root $work/www;
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
for _ in $(seq 1 50); do curl -s --cacert certs/dev/ca.crt -o /dev/null "https://127.0.0.1:$nginx_port/archive.tar.gz" && break; sleep 0.1; done
fetch_time() { curl -sS --cacert certs/dev/ca.crt -o /dev/null -w '%{time_total}\n' "$1"; }
ours=(); theirs=()
for run in $(seq 1 "$RUNS"); do
  ours+=("$(fetch_time "$url")")
  theirs+=("$(fetch_time "https://127.0.0.1:$nginx_port/archive.tar.gz")")
done
size=$(stat -c %s "$archive")
ours=$(printf '%s\n' "${ours[@]}" | median)
theirs=$(printf '%s\n' "${theirs[@]}" | median)
row "download of $size bytes from backupd (curl), median" "$(printf '%.3f s' "$ours")"
row "the same file from nginx over HTTPS (curl), median" "$(printf '%.3f s' "$theirs")"
row "throughput backupd / nginx" "$(ratio "$theirs" "$ours")"

section "uploads: the same archive sent back with backupctl upload (hash, send, validate); $RUNS runs"
# Stored anew each run: the bulk backups, and each run's upload, are deleted first, and garbage collection frees their blobs.
for id in $(ctl list --env bench/bulk --json | python3 -c "import json,sys; print(' '.join(b['id'] for b in json.load(sys.stdin).get('backups', [])))"); do
  ctl delete "$id" >/dev/null
done
uploads=()
for run in $(seq 1 "$RUNS"); do
  sleep 2
  start=$(now)
  uploaded=$(ctl upload "$work/www/archive.tar.gz" --env bench/bulk --json | json '["backup_id"]')
  uploads+=("$(since "$start")")
  ctl delete "$uploaded" >/dev/null
done
upload=$(printf '%s\n' "${uploads[@]}" | median)
row "upload of $size bytes with validation (backupctl), median" "$(printf '%.3f s' "$upload")"
row "throughput upload / download of the same archive" "$(ratio "$ours" "$upload")"

# The table, with when and where it was measured, for docs/benchmarks.md.
{
  echo "# Benchmarks"
  echo
  echo "Measured by \`make bench\` (RUNS=$RUNS, LARGE_ROWS=$LARGE_ROWS, BULK_MB=$BULK_MB) on $(date -u +%Y-%m-%d),"
  echo "$(nproc) cores, release build, loopback only; each figure beside its baseline in the same run, medians where"
  echo "there are several runs. Regenerate with \`make bench\`; see the README for what each row compares."
  echo
  echo '```'
  cat "$report"
  echo '```'
} > docs/benchmarks.md
