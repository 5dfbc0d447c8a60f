#!/usr/bin/env bash
# Measures backupd against what a user would otherwise run, in the same run,
# on the same data, and prints each figure beside its baseline as a ratio:
#   full backup (database + files)      vs  pg_dump -Fc, then tar czf of the file store
#   full backup, database only          vs  pg_dump -Fc (pg_dump -Fd -j2 -Z1 shown too)
#   next backup after a night's changes:    new bytes stored vs the first backup's;
#                                           its file phase vs restic's second `restic backup`
#   NIGHTS nightly backups              vs  one pg_dump -Fc + tar czf copy (bytes)
#   restore (database + files)          vs  createdb + pg_restore --jobs=2 + tar xzf
#   full backup, next backup, restore   encrypted (--storage-keys) vs the same unencrypted
#   download archive preparation        vs  tar czf of the same dump and files
#   signed-URL download (curl)          vs  nginx serving the same file over HTTPS (curl)
#   upload with validation (backupctl)  vs  the download of the same archive
#   GetBackup round trip                vs  a TLS ping-pong of the same sizes on one connection
#   ListBackups among 100,000 backups, WatchJob's delay, and the server's
#   memory during a BIG_GB GiB upload and download.
#   full backup, restore, archive preparation and download on an S3 store
#                                       beside the same on the local folder (moto on loopback: a
#                                       test server, not a performance reference)
# The data set comes from scripts/bench-data.py: an app database of DB_MB MiB
# and a file store of FILES_MB MiB (default 1024 each), changed by 1 % a night.
# Every server has its own catalog and blob store on the private cluster,
# listens on loopback, and is gone at the end. Installs nginx and restic from
# Debian's packages if they are missing.
#   bench.sh BIN_DIR [RUNS]
set -euo pipefail
BIN=${1:-.build/release}
RUNS=${2:-3}
DB_MB=${DB_MB:-1024}
FILES_MB=${FILES_MB:-1024}
NIGHTS=${NIGHTS:-14}
BIG_GB=${BIG_GB:-4}
# moto reads a whole object for each ranged GET (a 4 GiB archive came down at 0.5 MB/s in 1 MiB ranges, a 1 GiB one
# at 17 MB/s in 8 MiB ranges), so the S3 memory rows use an environment of S3_BIG_GB GiB, a part of the big one.
S3_BIG_GB=${S3_BIG_GB:-1}
VAR=${BACKUPD_VAR:-$(pwd)/.var}
source "$(dirname "$0")/private-cluster.sh"
work=$(mktemp -d)
tag=bench_$(date +%s)
servers=0
stop_server() {
  [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  pid=
}
cleanup() {
  stop_server
  [ -n "${nginx_pid:-}" ] && kill -TERM "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null || true
  [ -n "${moto_pid:-}" ] && kill -TERM "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null || true
  drop_tagged_databases
  rm -rf "$work"
}
trap cleanup EXIT
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
for tool in nginx restic; do
  command -v "$tool" >/dev/null || $SUDO apt-get install -y -qq "$tool" >/dev/null
done

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# Every row and section also goes to the report that ends up in docs/benchmarks.md.
report=$VAR/bench-report.txt
: > "$report"
row() { printf '%-66s %12s\n' "$1" "$2" | tee -a "$report"; }
section() { echo "== $1" | tee -a "$report"; }
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
# A ratio row with its target: "ratio NAME" VALUE "<= 0.3"
verdict() {
  local met
  met=$(echo "$2 $3" | awk '{ print (($2 == "<=") ? ($1 <= $3) : ($1 >= $3)) ? "met" : "MISSED" }')
  row "$1 (target $3)" "$2 $met"
}
seconds() { printf '%.2f s' "$1"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
stored() { du -sb "$blobs/sha256" | cut -f1; }
timed() { local start; start=$(now); "$@" >/dev/null; since "$start"; }

# The data set, and a copy of its file documents (their table alone, the files hard-linked) for timing a backup's
# file phase: an environment's file store is its own.
section "data set: scripts/bench-data.py with DB_MB=$DB_MB FILES_MB=$FILES_MB"
python3 scripts/bench-data.py create --db "${tag}_app" --files "$work/app" --db-mb "$DB_MB" --files-mb "$FILES_MB" | tee -a "$report"
app_url=$(url "${tag}_app")
sync_files_db() {
  $psql -d postgres -c "DROP DATABASE IF EXISTS ${tag}_files" -c "CREATE DATABASE ${tag}_files" >/dev/null
  pg_dump --table='"system$filedocument"' --dbname="$app_url" | $psql -d "${tag}_files" >/dev/null
  rm -rf "$work/app-linked" && cp -al "$work/app" "$work/app-linked"
}
mkdir -p "$work/none"
sync_files_db

# A server of its own each time: a fresh catalog and an empty blob store, with the environments registered.
serve() {
  stop_server
  [ -n "${blobs:-}" ] && rm -rf "$blobs"
  servers=$((servers + 1))
  blobs=$work/blobs-$servers
  $psql -d postgres -c "CREATE DATABASE ${tag}_catalog_$servers" >/dev/null
  export BACKUPD_CATALOG=$(url "${tag}_catalog_$servers")
  export BACKUPD_BLOB_DIR=$blobs BACKUPD_TLS_CERT=$(pwd)/certs/dev/server.crt BACKUPD_TLS_KEY=$(pwd)/certs/dev/server.key
  local token platform
  token=$("$BIN/backupd" token create --namespace bench --role admin --name bench)
  platform=$("$BIN/backupd" token create --platform --name bench-platform)
  rm -f "$work/ready"
  "$BIN/backupd" serve --listen 127.0.0.1:0 --admin-listen off --ready-file "$work/ready" --log-level warning --file-store-root "$work" \
    --download-keys "$(pwd)/certs/dev/download-keys" "$@" &
  pid=$!
  for _ in $(seq 1 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
  export BACKUPCTL_ADDR=$(cat "$work/ready") BACKUPCTL_TOKEN=$token BACKUPCTL_CA=$(pwd)/certs/dev/ca.crt
  register() { "$BIN/backupctl" env register "bench/$1" --token "$platform" --app "$1" --database-url "$2" --file-store "$3" "${@:4}" --json >/dev/null; }
  register app "$app_url" "$work/app"
  register appdb "$app_url" "$work/none" --file-query 'SELECT "__uuid__" FROM "system$filedocument" WHERE id IS NULL'
  register files "$(url "${tag}_files")" "$work/app-linked"
}
ctl() { "$BIN/backupctl" "$@"; }
backup() { ctl create --env "bench/$1" --wait --json | tee "$work/last-backup.json" | json '["id"]'; }

section "full backups into an empty blob store; $RUNS runs each, medians"
ours=(); ours_db=(); dumps=(); tars=(); dirs=()
for run in $(seq 1 "$RUNS"); do
  serve
  ours_db+=("$(timed backup appdb)")
  serve
  ours+=("$(timed backup app)")
  first_id=$(json '["id"]' < "$work/last-backup.json")
  start=$(now)
  pg_dump --format=custom --no-owner --no-privileges --file="$work/dump.backup" --dbname="$app_url"
  sync -f "$work/dump.backup"
  dumps+=("$(since "$start")")
  start=$(now)
  tar czf "$work/files.tar.gz" -C "$work/app" .
  sync -f "$work/files.tar.gz"
  tars+=("$(since "$start")")
  rm -rf "$work/dump.d"
  start=$(now)
  pg_dump --format=directory --jobs=2 --compress=1 --no-owner --no-privileges --file="$work/dump.d" --dbname="$app_url"
  sync -f "$work/dump.d/toc.dat"
  dirs+=("$(since "$start")")
done
first_stored=$(stored)
ours=$(printf '%s\n' "${ours[@]}" | median); ours_db=$(printf '%s\n' "${ours_db[@]}" | median)
backup_local=$ours
dump=$(printf '%s\n' "${dumps[@]}" | median); tar=$(printf '%s\n' "${tars[@]}" | median); dir=$(printf '%s\n' "${dirs[@]}" | median)
copy_bytes=$(( $(stat -c %s "$work/dump.backup") + $(stat -c %s "$work/files.tar.gz") ))
row "backupd backup, database and files" "$(seconds "$ours")"
row "pg_dump -Fc, then tar czf of the file store" "$(seconds "$(echo "$dump + $tar" | bc)")"
verdict "ratio" "$(ratio "$ours" "$(echo "$dump + $tar" | bc)")" "<= 0.3"
row "backupd backup, database only" "$(seconds "$ours_db")"
row "pg_dump -Fc" "$(seconds "$dump")"
verdict "ratio" "$(ratio "$ours_db" "$dump")" "<= 0.3"
row "pg_dump -Fd -j2 -Z1 (shown)" "$(seconds "$dir")"
row "ratio backupd database only / pg_dump -Fd -j2 -Z1 (shown)" "$(ratio "$ours_db" "$dir")"
row "stored by the first backup (bytes)" "$first_stored"
row "pg_dump -Fc file + tar czf file (bytes)" "$copy_bytes"

section "$NIGHTS nights, each changing 1 % of the rows and of the documents (bench-data.py change)"
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$work/restic RESTIC_CACHE_DIR=$work/restic-cache
restic init --quiet >/dev/null
restic backup --quiet "$work/app" >/dev/null
backup files >/dev/null
restics=(); file_phases=(); night_ids=()
for night in $(seq 1 "$NIGHTS"); do
  python3 scripts/bench-data.py change --db "${tag}_app" --files "$work/app" --night "$night" >/dev/null
  sync_files_db
  if [ "$night" -le "$RUNS" ]; then
    restics+=("$(timed restic backup --quiet "$work/app")")
    file_phases+=("$(timed backup files)")
  fi
  before=$(stored)
  took=$(timed backup app)
  night_ids+=("$(json '["id"]' < "$work/last-backup.json")")
  if [ "$night" = 1 ]; then
    next_stored=$(( $(stored) - before ))
    row "next backup (night 1), database and files" "$(seconds "$took")"
    row "new bytes stored by it" "$next_stored"
    verdict "ratio to the first backup's" "$(ratio "$next_stored" "$first_stored")" "<= 0.05"
  fi
done
restic=$(printf '%s\n' "${restics[@]}" | median); file_phase=$(printf '%s\n' "${file_phases[@]}" | median)
row "file phase: backup of the file store alone, median of $RUNS nights" "$(seconds "$file_phase")"
row "restic backup of the file store, second and later runs, median" "$(seconds "$restic")"
verdict "ratio" "$(ratio "$file_phase" "$restic")" "<= 1"
row "blob store after the first backup and $NIGHTS nights (bytes)" "$(stored)"
verdict "ratio to one pg_dump -Fc + tar czf copy" "$(ratio "$(stored)" "$copy_bytes")" "<= 2"
before=$(stored)
python3 scripts/bench-data.py change --db "${tag}_app" --files "$work/app" --night 99 --uniform >/dev/null
backup app >/dev/null
row "worst case: 1 % of rows changed uniformly at random, new bytes (shown)" "$(( $(stored) - before ))"
row "ratio to the first backup's (shown)" "$(ratio "$(( $(stored) - before ))" "$first_stored")"

section "restore of the first backup (database and files); $RUNS runs each, medians"
ctl env stop bench/app >/dev/null
ours=(); theirs=()
for run in $(seq 1 "$RUNS"); do
  ours+=("$(timed ctl restore "$first_id" --to app --wait --json)")
  rm -rf "$work/untarred"; mkdir "$work/untarred"
  start=$(now)
  $psql -d postgres -c "CREATE DATABASE ${tag}_plain_$run" >/dev/null
  pg_restore --no-owner --no-privileges --exit-on-error --jobs=2 --dbname="$(url "${tag}_plain_$run")" "$work/dump.backup"
  tar xzf "$work/files.tar.gz" -C "$work/untarred"
  sync -f "$work/untarred"
  theirs+=("$(since "$start")")
done
ctl env start bench/app >/dev/null
ours=$(printf '%s\n' "${ours[@]}" | median); theirs=$(printf '%s\n' "${theirs[@]}" | median)
restore_local=$ours
row "backupd restore" "$(seconds "$ours")"
row "createdb + pg_restore --jobs=2 + tar xzf" "$(seconds "$theirs")"
verdict "ratio" "$(ratio "$ours" "$theirs")" "<= 0.85"

section "download archive preparation; $RUNS backups, medians"
ours=(); theirs=()
for run in $(seq 1 "$RUNS"); do
  ours+=("$(timed ctl download "${night_ids[$run]}" --url --json)")
done
# The archive as a client gets it (a prepared archive is a blob of the store, served through its link).
archive=$work/archive.tar.gz
curl -sS --cacert certs/dev/ca.crt -o "$archive" "$(ctl download "${night_ids[$RUNS]}" --url --json | json '["url"]')"
# The same content as a user would pack it: the dump and the documents, with tar czf.
rm -rf "$work/packed" && mkdir -p "$work/packed" && tar xzf "$archive" -C "$work/packed"
for run in $(seq 1 "$RUNS"); do
  theirs+=("$(timed bash -c "tar czf '$work/packed.tar.gz' -C '$work/packed' . && sync -f '$work/packed.tar.gz'")")
done
ours=$(printf '%s\n' "${ours[@]}" | median); theirs=$(printf '%s\n' "${theirs[@]}" | median)
prepare_local=$ours
row "preparation of an archive of $(stat -c %s "$archive") bytes" "$(seconds "$ours")"
row "tar czf of the same dump and files ($(du -sb "$work/packed" | cut -f1) bytes)" "$(seconds "$theirs")"
verdict "ratio" "$(ratio "$ours" "$theirs")" "<= 0.5"

section "signed-URL download and upload of that archive; $RUNS runs each, medians"
download_url=$(ctl download "${night_ids[$RUNS]}" --url --json | json '["url"]')
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
nginx_url=https://127.0.0.1:$nginx_port/archive.tar.gz
for _ in $(seq 1 50); do curl -s --cacert certs/dev/ca.crt -o /dev/null "$nginx_url" && break; sleep 0.1; done
fetch_time() { curl -sS --cacert certs/dev/ca.crt -o /dev/null -w '%{time_total}\n' "$1"; }
ours=(); theirs=()
for run in $(seq 1 "$RUNS"); do
  ours+=("$(fetch_time "$download_url")")
  theirs+=("$(fetch_time "$nginx_url")")
done
download=$(printf '%s\n' "${ours[@]}" | median); theirs=$(printf '%s\n' "${theirs[@]}" | median)
row "download of $(stat -c %s "$archive") bytes from backupd (curl)" "$(printf '%.3f s' "$download")"
row "the same file from nginx over HTTPS (curl)" "$(printf '%.3f s' "$theirs")"
verdict "throughput backupd / nginx" "$(ratio "$theirs" "$download")" ">= 0.9"
# Each upload goes to a server of its own, so its documents and dump chunks are stored anew.
uploads=()
for run in $(seq 1 "$RUNS"); do
  serve
  uploads+=("$(timed ctl upload "$work/www/archive.tar.gz" --env bench/app --json)")
done
upload=$(printf '%s\n' "${uploads[@]}" | median)
row "upload with validation (backupctl upload)" "$(printf '%.3f s' "$upload")"
verdict "throughput upload / download" "$(ratio "$download" "$upload")" ">= 0.8"

section "latencies (backup-bench, one connection each, after a warm-up)"
bench_tool() { "$BIN/backup-bench" "$1" --addr "$BACKUPCTL_ADDR" --token "$BACKUPCTL_TOKEN" --ca "$BACKUPCTL_CA" "${@:2}"; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }
uploaded=$(ctl list --env bench/app --json | python3 -c "import json,sys; print(json.load(sys.stdin)['backups'][0]['id'])")
rpc=$(bench_tool rpc-latency --backup-id "$uploaded" --count 2000 --cert certs/dev/server.crt --key certs/dev/server.key)
row "GetBackup round trip, p50 / p99" "$(field "$rpc" rpc_p50) / $(field "$rpc" rpc_p99) ms"
row "TLS ping-pong of the same sizes, p50 / p99" "$(field "$rpc" pingpong_p50) / $(field "$rpc" pingpong_p99) ms"
verdict "ratio of the p50s" "$(ratio "$(field "$rpc" rpc_p50)" "$(field "$rpc" pingpong_p50)")" "<= 2"
# 100,000 finished backups in the app environment's catalog rows (no blobs: they list like real ones).
$psql -d "${tag}_catalog_$servers" <<'SQL' >/dev/null
INSERT INTO snapshots (id, environment_id, status, kind, comment, package_version, created_at, finished_at, expires_at,
                       dump_sha256, database_bytes, files_bytes, file_count, postgres_version, job_id, source_database_bytes)
SELECT gen_random_uuid(), e.id, 'finished', 'on-demand', 'bulk ' || i, e.package_version, t.at, t.at + interval '1 second',
       t.at + interval '14 days', encode(sha256(convert_to('bulk ' || i, 'UTF8')), 'hex'), 408280, 9351837, 302,
       current_setting('server_version'), gen_random_uuid(), 8748391
FROM environments e CROSS JOIN generate_series(1, 100000) AS i
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => 2 * (100001 - i) + 1) AS at) AS t
WHERE e.namespace = 'bench' AND e.name = 'app';
ANALYZE snapshots;
SQL
for env in app appdb; do
  list=$(bench_tool list-latency --namespace bench --environment "$env" --count 1000)
  row "ListBackups of bench/$env, 100,000 backups in the catalog, p50" "$(field "$list" p50) ms"
  verdict "p99 (ms)" "$(field "$list" p99)" "<= 5"
done
# WatchJob: backups of a small environment; when the watcher hears of the end after the job's finishing time.
$psql -d postgres -c "CREATE DATABASE ${tag}_small TEMPLATE demo_app" >/dev/null
mkdir -p "$work/small"
"$BIN/backupctl" env register bench/small --token "$("$BIN/backupd" token create --platform --name bench-small)" --app small \
  --database-url "$(url "${tag}_small")" --file-store "$work/small" \
  --file-query 'SELECT "__uuid__" FROM "system$filedocument" WHERE id IS NULL' --json >/dev/null
watch=$(bench_tool watch-latency --env bench/small --count 20)
row "WatchJob: a job's end reaches its watcher, max of 20" "$(field "$watch" max) ms"
verdict "p50 (ms)" "$(field "$watch" p50)" "<= 20"

section "server memory during a $BIG_GB GiB download and a $BIG_GB GiB upload"
# BIG_GB GiB of documents that do not compress, 128 MiB each.
$psql -d postgres -c "CREATE DATABASE ${tag}_big TEMPLATE demo_app" >/dev/null
$psql -d "${tag}_big" -c "DELETE FROM \"shop\$invoice\"" -c "DELETE FROM \"system\$filedocument\"" \
  -c "INSERT INTO \"system\$filedocument\" SELECT i, md5('big ' || i)::uuid::text, 'scan-' || i || '.pdf', 134217728, true, false, now()
      FROM generate_series(1, $(( BIG_GB * 8 ))) AS i" >/dev/null
mkdir -p "$work/big"
$psql -d "${tag}_big" -tA -c 'SELECT "__uuid__" FROM "system$filedocument"' | while read -r key; do
  mkdir -p "$work/big/${key:0:2}/${key:2:2}"
  head -c 134217728 < <(openssl enc -aes-128-ctr -nosalt -K "${key//-/}" -iv 00000000000000000000000000000000 < /dev/zero 2>/dev/null) \
    > "$work/big/${key:0:2}/${key:2:2}/$key"
done
"$BIN/backupctl" env register bench/big --token "$("$BIN/backupd" token create --platform --name bench-big)" --app big \
  --database-url "$(url "${tag}_big")" --file-store "$work/big" --json >/dev/null
big_url=$(ctl download "$(backup big)" --url --json | json '["url"]')
big_archive=$work/big.tar.gz
curl -sS --cacert certs/dev/ca.crt -o "$big_archive" "$big_url"
rss() { awk '/VmRSS/ { print $2 * 1024 }' "/proc/$pid/status"; }
# The most the server grew by while the command ran, sampled every 50 ms.
growth() {
  local before peak=0 sampler
  before=$(rss)
  ( while :; do rss; sleep 0.05; done ) > "$work/rss" & sampler=$!
  "$@" >/dev/null
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  peak=$(sort -n "$work/rss" | tail -1)
  echo $(( (peak - before) / 1048576 ))
}
row "archive of $(stat -c %s "$big_archive") bytes" ""
verdict "growth during its download by curl (MiB)" "$(growth curl -sS --cacert certs/dev/ca.crt -o /dev/null "$big_url")" "<= 64"
verdict "growth during its upload with validation (MiB)" "$(growth ctl upload "$big_archive" --env bench/big --json)" "<= 64"

# Last of the local sections: each run serves afresh, and the sections before use the backups of their own server.
section "encryption at rest (--storage-keys): the same full backup, next backup and restore with and without it; $RUNS runs each, interleaved, medians"
# Prints the seconds of a full backup, of the next one (nothing changed) and of the full one's restore, on a fresh server.
encryption_run() {
  local full next restore id
  full=$(timed backup app)
  id=$(json '["id"]' < "$work/last-backup.json")
  next=$(timed backup app)
  ctl env stop bench/app >/dev/null
  restore=$(timed ctl restore "$id" --to app --wait --json)
  ctl env start bench/app >/dev/null
  echo "$full $next $restore"
}
: > "$work/encryption-off"; : > "$work/encryption-on"
for run in $(seq 1 "$RUNS"); do
  serve; encryption_run >> "$work/encryption-off"
  serve --storage-keys "$(pwd)/certs/dev/storage-keys"; encryption_run >> "$work/encryption-on"
done
column_median() { awk -v column="$2" '{ print $column }' "$1" | median; }
for measure in "1:full backup" "2:next backup, nothing changed" "3:restore of the full backup"; do
  off=$(column_median "$work/encryption-off" "${measure%%:*}"); on=$(column_median "$work/encryption-on" "${measure%%:*}")
  row "${measure#*:}, unencrypted" "$(seconds "$off")"
  row "${measure#*:}, encrypted" "$(seconds "$on")"
  verdict "ratio encrypted / unencrypted" "$(ratio "$on" "$off")" "<= 1.15"
done
# Where the full backup's difference lies: the documents put into an empty local store on one thread, without a server.
"$BIN/backup-bench" store-files "$work/app" --scratch "$work" --runs "$RUNS" > "$work/store-files.json"
for measure in unsealed sealed sealing_alone; do
  row "documents into an empty store, one thread: ${measure//_/ }" "$(seconds "$(json "[\"${measure}_s\"]" < "$work/store-files.json")")"
done

section "on an S3 store: moto on loopback (a test server, not a performance reference); $RUNS runs each, medians"
# moto with signatures checked, a bucket, and a server of its own each run whose blobs are objects under a prefix of their own.
python3 scripts/moto-server.py "$work/moto-ready" > "$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 1 300); do [ -s "$work/moto-ready" ] && break; sleep 0.1; done
read -r moto_port AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY < "$work/moto-ready"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
python3 -c "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1').create_bucket(Bucket='bench')" \
  "http://127.0.0.1:$moto_port"
serve_s3() { serve --blob-store "s3://bench/run$servers-" --s3-endpoint "http://127.0.0.1:$moto_port" --s3-path-style; }
ours=(); restores=(); prepares=(); downloads=()
for run in $(seq 1 "$RUNS"); do
  serve_s3
  ours+=("$(timed backup app)")
  id=$(json '["id"]' < "$work/last-backup.json")
  ctl env stop bench/app >/dev/null
  restores+=("$(timed ctl restore "$id" --to app --wait --json)")
  ctl env start bench/app >/dev/null
  start=$(now)
  url=$(ctl download "$id" --url --json | json '["url"]')
  prepares+=("$(since "$start")")
  downloads+=("$(fetch_time "$url")")
done
ours=$(printf '%s\n' "${ours[@]}" | median); restores=$(printf '%s\n' "${restores[@]}" | median)
prepares=$(printf '%s\n' "${prepares[@]}" | median); downloads=$(printf '%s\n' "${downloads[@]}" | median)
row "full backup, database and files, S3 / local folder" "$(seconds "$ours") / $(seconds "$backup_local")"
row "ratio S3 / local folder (shown)" "$(ratio "$ours" "$backup_local")"
row "restore, database and files, S3 / local folder" "$(seconds "$restores") / $(seconds "$restore_local")"
row "ratio S3 / local folder (shown)" "$(ratio "$restores" "$restore_local")"
row "archive preparation, S3 / local folder" "$(seconds "$prepares") / $(seconds "$prepare_local")"
row "ratio S3 / local folder (shown)" "$(ratio "$prepares" "$prepare_local")"
row "download of the archive (curl), S3 / local folder" "$(printf '%.3f s / %.3f s' "$downloads" "$download")"
row "ratio S3 / local folder (shown)" "$(ratio "$downloads" "$download")"
# The first S3_BIG_GB GiB of the big environment backed up on S3, its archive downloaded and uploaded again, on the last S3 server.
$psql -d postgres -c "CREATE DATABASE ${tag}_big_s3 TEMPLATE ${tag}_big" >/dev/null
$psql -d "${tag}_big_s3" -c "DELETE FROM \"system\$filedocument\" WHERE id > $(( S3_BIG_GB * 8 ))" >/dev/null
"$BIN/backupctl" env register bench/bigs3 --token "$("$BIN/backupd" token create --platform --name bench-big-s3)" --app bigs3 \
  --database-url "$(url "${tag}_big_s3")" --file-store "$work/big" --json >/dev/null
big_url=$(ctl download "$(backup bigs3)" --url --json | json '["url"]')
start=$(now)
verdict "S3: growth during a $S3_BIG_GB GiB download by curl (MiB)" "$(growth curl -sS --cacert certs/dev/ca.crt -o "$big_archive" "$big_url")" "<= 64"
row "S3: that download took (moto's ranged GETs: see the head of this script)" "$(seconds "$(since "$start")")"
verdict "S3: growth during its upload with validation (MiB)" "$(growth ctl upload "$big_archive" --env bench/bigs3 --json)" "<= 64"
rm -f "$big_archive"

# The table, with when and where it was measured, for docs/benchmarks.md.
{
  echo "# Benchmarks"
  echo
  echo "Measured by \`make bench\` (RUNS=$RUNS DB_MB=$DB_MB FILES_MB=$FILES_MB NIGHTS=$NIGHTS BIG_GB=$BIG_GB) on"
  echo "$(date -u +%Y-%m-%d), $(nproc) cores, release build, loopback only; each figure beside its baseline in the"
  echo "same run, medians where there are several runs. Regenerate with \`make bench\`; the head of scripts/bench.sh"
  echo "says what each row compares, and scripts/bench-data.py what the data set and a night's changes are."
  echo
  echo '```'
  cat "$report"
  echo '```'
} > docs/benchmarks.md
