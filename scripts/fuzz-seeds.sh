#!/usr/bin/env bash
# Writes the seed corpora under Tests/Fuzz/: the RPC, URL and HTTP seeds
# made in code (`backup-fuzz seed`), snapshot archives made by tar, and
# custom-format dumps made by pg_dump of a small database that uses what
# PostgreSQL has (schemas, comments, sequences, large objects, partitions)
# from the private cluster (`make cluster`). Run it after changing a seed;
# FuzzCorpusTests fails while the seeds made in code and the kept ones differ.
#   fuzz-seeds.sh BIN_DIR
set -euo pipefail
BIN=${1:-.build/debug}
OUT=Tests/Fuzz
PORT=${BACKUPD_PGPORT:-55432}
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres

"$BIN/backup-fuzz" seed "$OUT"

mkdir -p "$OUT/archive" "$OUT/dump"
python3 - "$OUT/archive" <<'PY'
import hashlib, io, json, sys, tarfile
out = sys.argv[1]
def archive(name, members, folders=()):
    meta = {"app": "shop", "environment": "shop-prod", "package_version": "1.4.2"}
    for path, data in members:
        meta["sha256:" + path] = hashlib.sha256(data).hexdigest()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        def add(path, data):
            info = tarfile.TarInfo(path); info.size = len(data); info.mtime = 1_800_000_000
            tar.addfile(info, io.BytesIO(data))
        for folder in folders:
            info = tarfile.TarInfo(folder); info.type = tarfile.DIRTYPE; info.mtime = 1_800_000_000
            tar.addfile(info)
        add(".metadata", json.dumps(meta, sort_keys=True).encode())
        for path, data in members:
            add(path, data)
    open(f"{out}/{name}", "wb").write(buffer.getvalue())
dump = b"PGDMP" + bytes(range(64))
archive("seed-1", [("db/db.backup", dump)])
archive("seed-2", [("db/db.backup", dump), ("files/invoices/2026/12/a.pdf", b"%PDF-1.7 " * 20),
                   ("files/b.txt", b"hello\n")], folders=("db", "files", "files/invoices"))
archive("seed-3", [("db/db.backup", dump), ("files/" + "d/" * 40 + "deep.bin", bytes(300))])
PY

psql -q -v ON_ERROR_STOP=1 -d postgres -c "DROP DATABASE IF EXISTS fuzz_seed" -c "CREATE DATABASE fuzz_seed"
psql -q -v ON_ERROR_STOP=1 -d fuzz_seed <<'SQL'
CREATE SCHEMA sales;
COMMENT ON SCHEMA sales IS 'orders and invoices';
CREATE SEQUENCE sales.invoice_no START 1000;
SELECT FROM setval('sales.invoice_no', 1042);
CREATE TABLE sales.orders (id bigint GENERATED ALWAYS AS IDENTITY, placed date NOT NULL, total numeric(12, 2), PRIMARY KEY (id, placed))
  PARTITION BY RANGE (placed);
CREATE TABLE sales.orders_2026 PARTITION OF sales.orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
COMMENT ON TABLE sales.orders IS 'one row an order';
INSERT INTO sales.orders (placed, total) SELECT date '2026-01-01' + i, i * 1.5 FROM generate_series(1, 40) i;
CREATE TABLE documents (path text PRIMARY KEY, body oid);
INSERT INTO documents VALUES ('invoices/a.pdf', lo_from_bytea(0, 'large object')), ('b.txt', NULL);
CREATE VIEW sales.recent AS SELECT * FROM sales.orders WHERE placed > date '2026-06-01';
SQL
pg_dump -Fc -d fuzz_seed | cat > "$OUT/dump/seed-1"        # through a pipe: no data offsets, as backups write it
pg_dump -Fc -Z0 -d fuzz_seed -f "$OUT/dump/seed-2"          # to a file: offsets set, data uncompressed
pg_restore -l "$OUT/dump/seed-2" > "$OUT/dump/seed-3"        # a listing, as restores read it
psql -q -d postgres -c "DROP DATABASE fuzz_seed"
echo "seeds written under $OUT"
