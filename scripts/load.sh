#!/usr/bin/env bash
# The load test: a backupd of its own (its own catalog database and blob
# store, on the private cluster, listening on loopback) with an app that uses
# what PostgreSQL has and a few hundred documents; one backup of it; then
# `backup-bench load`: CLIENTS clients making mixed calls for SECONDS beside
# IDLE connections that never call, with the server's memory and descriptors
# sampled each second. Everything it made is gone at the end.
#   load.sh BIN_DIR        CLIENTS (64), IDLE (1000), LOAD_SECONDS (60)
set -euo pipefail
BIN=${1:-.build/release}
CLIENTS=${CLIENTS:-64}
IDLE=${IDLE:-1000}
SECONDS_RUN=${LOAD_SECONDS:-60}
source "$(dirname "$0")/private-cluster.sh"
work=$(mktemp -d)
tag=load_$(date +%s)
pid=
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  drop_tagged_databases
  rm -rf "$work"
}
trap cleanup EXIT

# The app: two schemas, a partitioned table, a sequence, comments, a large object, and 300 documents of 1-64 KiB.
$psql -d postgres -c "CREATE DATABASE ${tag}_app" -c "CREATE DATABASE ${tag}_catalog"
$psql -d "${tag}_app" <<'SQL'
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id bigint GENERATED ALWAYS AS IDENTITY, placed date NOT NULL, note text, PRIMARY KEY (id, placed))
  PARTITION BY RANGE (placed);
CREATE TABLE sales.orders_2025 PARTITION OF sales.orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE sales.orders_2026 PARTITION OF sales.orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
COMMENT ON TABLE sales.orders IS 'one row an order';
INSERT INTO sales.orders (placed, note) SELECT date '2025-01-01' + (i % 700), md5(i::text) FROM generate_series(1, 50000) i;
CREATE SEQUENCE sales.invoice_no START 1000;
CREATE TABLE documents (storage_key text PRIMARY KEY, picture oid);
INSERT INTO documents SELECT md5(i::text), CASE WHEN i = 1 THEN lo_from_bytea(0, 'large object') END
  FROM generate_series(1, 300) i;
SQL
# Each document at its storage key's place: 0d/3e/0d3e….
for i in $(seq 1 300); do
  key=$(printf '%s' "$i" | md5sum | cut -c1-32)
  mkdir -p "$work/app/${key:0:2}/${key:2:2}"
  head -c $(( (i * 7919) % 65536 + 1024 )) /dev/urandom > "$work/app/${key:0:2}/${key:2:2}/$key"
done

export BACKUPD_CATALOG=$(url "${tag}_catalog") BACKUPD_BLOB_DIR=$work/blobs
export BACKUPD_TLS_CERT=$(pwd)/certs/dev/server.crt BACKUPD_TLS_KEY=$(pwd)/certs/dev/server.key
token=$("$BIN/backupd" token create --namespace load --role admin --name load)
platform=$("$BIN/backupd" token create --platform --name load-platform)
"$BIN/backupd" serve --listen 127.0.0.1:0 --admin-listen off --ready-file "$work/ready" --log-level warning --file-store-root "$work" \
  --download-keys "$(pwd)/certs/dev/download-keys" 2>"$work/server.log" &
pid=$!
for _ in $(seq 1 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
[ -s "$work/ready" ] || { cat "$work/server.log"; echo "backupd did not start"; exit 1; }
export BACKUPCTL_ADDR=$(cat "$work/ready") BACKUPCTL_TOKEN=$token BACKUPCTL_CA=$(pwd)/certs/dev/ca.crt
"$BIN/backupctl" env register load/app --token "$platform" --app load --database-url "$(url "${tag}_app")" \
  --file-store "$work/app" --file-query "SELECT storage_key FROM documents" --json >/dev/null
"$BIN/backupctl" create --env load/app --wait --json >"$work/backup.json" || { cat "$work/backup.json"; exit 1; }
backup=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <"$work/backup.json")
"$BIN/backupctl" download "$backup" --output "$work/snapshot.tar.gz" --json >"$work/download.json" || { cat "$work/download.json"; exit 1; }
echo "server $BACKUPCTL_ADDR (pid $pid), backup $backup, archive $(stat -c %s "$work/snapshot.tar.gz") bytes"

status=0
"$BIN/backup-bench" load --addr "$BACKUPCTL_ADDR" --token "$token" --ca "$BACKUPCTL_CA" --env load/app --backup-id "$backup" \
  --archive "$work/snapshot.tar.gz" --clients "$CLIENTS" --idle "$IDLE" --seconds "$SECONDS_RUN" --server-pid "$pid" || status=$?
kill -0 "$pid" 2>/dev/null || { echo "backupd is gone"; status=1; }
"$BIN/backupctl" list --env load/app --json >/dev/null || { echo "backupd does not answer after the load"; status=1; }
errors=$(grep -c -i ' error' "$work/server.log" || true)
echo "server log: $(wc -l < "$work/server.log") lines at warning and above, $errors errors"
grep -i ' error' "$work/server.log" | cut -c1-300 | sort | uniq -c | sort -rn | head -5 || true
exit $status
