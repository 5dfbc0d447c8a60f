#!/usr/bin/env bash
# The demo app: a database shaped like a Mendix app (system$filedocument and
# a few domain tables, a few thousand rows) and a file store of a few hundred
# file documents laid out xx/yy/uuid. File contents are pseudo-random (like the
# compressed PDFs and images real apps store) but deterministic: AES-CTR of
# zeros keyed by the document's UUID, so two runs make the same app. Idempotent.
set -euo pipefail
VAR=${BACKUPD_VAR:-$(pwd)/.var}
PORT=${BACKUPD_PGPORT:-55432}
DB=${DEMO_DB:-demo_app}
FILES=${DEMO_FILES:-$VAR/demo/files}
psql="psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $PORT -U postgres"

if [ -f "$FILES.complete" ] && $psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  exit 0
fi
$psql -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
$psql -d "$DB" <<'SQL'
CREATE TABLE "system$filedocument" (
    id bigint PRIMARY KEY,
    "__uuid__" text NOT NULL UNIQUE,
    name text NOT NULL,
    size bigint NOT NULL,
    hascontents boolean NOT NULL DEFAULT true,
    deleteafterdownload boolean NOT NULL DEFAULT false,
    changeddate timestamp NOT NULL
);
CREATE TABLE "shop$customer" (
    id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, created timestamp NOT NULL
);
CREATE TABLE "shop$order" (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES "shop$customer",
    total numeric(12, 2) NOT NULL, status text NOT NULL, placed timestamp NOT NULL
);
CREATE TABLE "shop$invoice" (
    id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES "shop$order",
    document_id bigint REFERENCES "system$filedocument"
);
INSERT INTO "system$filedocument"
SELECT i, md5('document ' || i)::uuid::text, 'invoice-' || i || '.pdf', 1000 + (i * 7919) % 60000,
       i % 31 <> 0, i % 37 = 0, timestamp '2026-01-01' + i * interval '1 hour'
FROM generate_series(1, 320) AS i;
INSERT INTO "shop$customer"
SELECT i, 'Customer ' || i, 'customer' || i || '@example.com', timestamp '2025-01-01' + i * interval '3 hours'
FROM generate_series(1, 2000) AS i;
INSERT INTO "shop$order"
SELECT i, 1 + (i * 13) % 2000, ((i * 7) % 100000) / 100.0, (ARRAY['new', 'paid', 'shipped'])[1 + i % 3],
       timestamp '2025-06-01' + i * interval '17 minutes'
FROM generate_series(1, 5000) AS i;
INSERT INTO "shop$invoice" SELECT i, i, i FROM generate_series(1, 320) AS i;
SQL

rm -rf "$FILES" "$FILES.complete"
mkdir -p "$FILES"
# One file per document with contents (including those marked delete-after-download).
$psql -d "$DB" -tA -F ' ' -c 'SELECT "__uuid__", size FROM "system$filedocument" WHERE hascontents ORDER BY id' |
while read -r uuid size; do
  dir="$FILES/${uuid:0:2}/${uuid:2:2}"
  mkdir -p "$dir"
  head -c "$size" < <(openssl enc -aes-128-ctr -nosalt -K "${uuid//-/}" -iv 00000000000000000000000000000000 < /dev/zero 2>/dev/null) > "$dir/$uuid"
done
touch "$FILES.complete"
echo "demo app: database $DB, $(find "$FILES" -type f | wc -l) files in $FILES"
