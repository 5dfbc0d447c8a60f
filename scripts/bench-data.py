#!/usr/bin/env python3
"""The benchmark's data set: an app database and its file store, and the
changes of a night.

  bench-data.py create --db NAME --files DIR [--db-mb 1024] [--files-mb 1024]
  bench-data.py change --db NAME --files DIR --night N [--percent 1] [--uniform]

The database is shaped like a Mendix shop: customers, orders, order lines, an
audit log and the file documents' table, with indexes, a schema, comments, a
sequence and a few large objects. The file store holds a few thousand
documents of mixed sizes (a few KiB to tens of MiB), about 60 % of the bytes
incompressible (like PDFs and images) and the rest text. Everything is
deterministic: the same sizes make the same data.

A night changes `--percent` of the rows the way a shop does: new orders, lines
and log entries (60 %), updates of recent orders (40 %) and a handful of
customers anywhere; and `--percent` of the documents (half new, half rewritten
in place). With `--uniform` the changed rows are picked uniformly at random
from every table instead: the worst case for any backup that deduplicates.
"""
import argparse
import hashlib
import os
import random
import subprocess
import uuid

PORT = os.environ.get("BACKUPD_PGPORT", "55432")
os.environ["PGOPTIONS"] = "-c client_min_messages=warning"
# Rows per MiB of database (heap and indexes), measured on PostgreSQL 15.
PER_MIB = {"customer": 400, "order": 1570, "line": 3140, "event": 920}
WORDS = ("invoice order customer shipment payment account address street city total amount "
         "quantity product delivery status pending paid shipped returned note remark contract "
         "page section table row column value reference date period tax discount").split()


def psql(db, sql):
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", PORT,
                    "-U", "postgres", "-d", db], input=sql.encode(), check=True, stdout=subprocess.DEVNULL)


def query(db, sql):
    out = subprocess.run(["psql", "-X", "-qtA", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-d", db, "-c", sql],
                         check=True, capture_output=True).stdout.decode()
    return [line.split("|") for line in out.splitlines() if line]


def document_key(seed):
    return str(uuid.UUID(hashlib.md5(f"bench document {seed}".encode()).hexdigest()))


def text_corpus():
    rng = random.Random(7)
    words = [rng.choice(WORDS) + (str(rng.randrange(1000)) if rng.random() < 0.2 else "") for _ in range(800_000)]
    return " ".join(words).encode()


def document_bytes(seed, size, corpus):
    """Incompressible for 3 seeds in 5, text otherwise."""
    rng = random.Random(seed)
    if seed % 5 < 3:
        return rng.randbytes(size)
    parts, left = [], size
    while left > 0:
        start = rng.randrange(len(corpus) - 65536)
        part = corpus[start:start + min(left, 65536)]
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def document_size(rng):
    return max(1024, min(32 << 20, int(rng.lognormvariate(11.6, 1.5))))


def write_document(root, key, content):
    folder = os.path.join(root, key[0:2], key[2:4])
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, "." + key)
    with open(temporary, "wb") as out:
        out.write(content)
    os.replace(temporary, os.path.join(folder, key))


def create(args):
    units = args.db_mb
    counts = {name: per * units for name, per in PER_MIB.items()}
    psql("postgres", f'DROP DATABASE IF EXISTS "{args.db}"; CREATE DATABASE "{args.db}"')
    psql(args.db, f"""
CREATE SCHEMA audit;
COMMENT ON SCHEMA audit IS 'what happened, kept for a year';
CREATE SEQUENCE order_number START 100000;
CREATE TABLE "system$filedocument" (
    id bigint PRIMARY KEY, "__uuid__" text NOT NULL UNIQUE, name text NOT NULL, size bigint NOT NULL,
    hascontents boolean NOT NULL DEFAULT true, deleteafterdownload boolean NOT NULL DEFAULT false,
    changeddate timestamp NOT NULL);
CREATE TABLE "shop$customer" (
    id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, address text NOT NULL, created timestamp NOT NULL);
COMMENT ON TABLE "shop$customer" IS 'people who order';
CREATE TABLE "shop$order" (
    id bigint PRIMARY KEY, number bigint NOT NULL DEFAULT nextval('order_number'),
    customer_id bigint NOT NULL REFERENCES "shop$customer", status text NOT NULL,
    total numeric(12, 2) NOT NULL, placed timestamp NOT NULL, note text NOT NULL);
CREATE TABLE "shop$orderline" (
    id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES "shop$order", product text NOT NULL,
    quantity int NOT NULL, price numeric(10, 2) NOT NULL);
CREATE TABLE audit.event (id bigint NOT NULL, at timestamptz NOT NULL, kind text NOT NULL, payload text NOT NULL)
    PARTITION BY RANGE (id);
CREATE TABLE audit.event_old PARTITION OF audit.event FOR VALUES FROM (0) TO ({counts['event'] // 2});
CREATE TABLE audit.event_new PARTITION OF audit.event FOR VALUES FROM ({counts['event'] // 2}) TO (MAXVALUE);
INSERT INTO "shop$customer"
  SELECT i, 'Customer ' || i, 'customer' || i || '@example.com',
         (i * 7) % 999 || ' ' || md5(i::text) || ' street, ' || (ARRAY['Amsterdam','Rotterdam','Utrecht'])[1 + i % 3],
         timestamp '2020-01-01' + i * interval '7 minutes'
  FROM generate_series(1::bigint, {counts['customer']}) AS i;
INSERT INTO "shop$order" (id, customer_id, status, total, placed, note)
  SELECT i, 1 + (i * 7919) % {counts['customer']}, (ARRAY['new','paid','shipped','delivered'])[1 + i % 4],
         ((i * 31) % 100000) / 100.0, timestamp '2021-01-01' + i * interval '2 minutes',
         CASE WHEN i % 3 = 0 THEN 'leave at the door ' || md5(i::text) ELSE '' END
  FROM generate_series(1::bigint, {counts['order']}) AS i;
INSERT INTO "shop$orderline"
  SELECT i, 1 + (i - 1) / 2, 'product-' || (i * 13) % 5000, 1 + i % 7, ((i * 17) % 20000) / 100.0
  FROM generate_series(1::bigint, {counts['line']}) AS i;
INSERT INTO audit.event
  SELECT i, timestamptz '2021-01-01' + i * interval '1 minute', (ARRAY['login','order','payment','export'])[1 + i % 4],
         '{{"user": ' || (i * 7) % 5000 || ', "detail": "' || md5(i::text) || md5((i + 1)::text) || '"}}'
  FROM generate_series(1::bigint, {counts['event']}) AS i;
CREATE INDEX customer_email ON "shop$customer" (email);
CREATE INDEX order_customer ON "shop$order" (customer_id, placed);
CREATE INDEX order_status ON "shop$order" (status);
CREATE INDEX line_order ON "shop$orderline" (order_id);
CREATE INDEX event_at ON audit.event (at);
SELECT lo_from_bytea(0, convert_to(repeat('contract text ', 5000 + i::int), 'UTF8')) FROM generate_series(1::bigint, 8) AS i;
""")
    corpus = text_corpus()
    rng = random.Random(1)
    total, target, rows, seed = 0, args.files_mb << 20, [], 0
    while total < target:
        seed += 1
        size = min(document_size(rng), target - total + 1024)
        key = document_key(seed)
        write_document(args.files, key, document_bytes(seed, size, corpus))
        rows.append(f"({seed}, '{key}', 'document-{seed}.{'pdf' if seed % 5 < 3 else 'txt'}', {size}, "
                    f"timestamp '2024-01-01' + {seed} * interval '1 hour')")
        total += size
    for start in range(0, len(rows), 1000):
        psql(args.db, 'INSERT INTO "system$filedocument" (id, "__uuid__", name, size, changeddate) VALUES '
             + ",".join(rows[start:start + 1000]))
    psql(args.db, "VACUUM ANALYZE")
    size = query(args.db, "SELECT pg_database_size(current_database())")[0][0]
    print(f"database {args.db}: {size} bytes; file store {args.files}: {len(rows)} documents, {total} bytes")


def change(args):
    """One night's changes to the rows and the documents."""
    rng = random.Random(1000 + args.night)
    counts = {table: int(n) for table, n in query(args.db, """
        SELECT 'customer', max(id) FROM "shop$customer" UNION ALL SELECT 'order', max(id) FROM "shop$order"
        UNION ALL SELECT 'line', max(id) FROM "shop$orderline" UNION ALL SELECT 'event', max(id) FROM audit.event
        UNION ALL SELECT 'document', max(id) FROM "system$filedocument" """)}
    table_rows = sum(counts[t] for t in ("customer", "order", "line", "event"))
    changed = table_rows * args.percent // 100
    if args.uniform:
        # The same number of rows, each table's share picked uniformly at random.
        statements = []
        for table, column in (('"shop$customer"', "address = upper(address)"), ('"shop$order"', "total = total + 1"),
                              ('"shop$orderline"', "quantity = quantity + 1"), ("audit.event", "payload = upper(payload)")):
            statements.append(f"UPDATE {table} SET {column} WHERE random() < {args.percent / 100}")
        psql(args.db, ";\n".join(statements))
    else:
        new_orders = changed * 6 // 10 // 4  # each with two lines and one log entry: four rows
        updated = changed * 4 // 10
        o, l, e = counts["order"], counts["line"], counts["event"]
        psql(args.db, f"""
INSERT INTO "shop$order" (id, customer_id, status, total, placed, note)
  SELECT {o} + i, 1 + ({o} + i) * 7919 % {counts['customer']}, 'new', (i % 10000) / 100.0,
         timestamp '2026-01-01' + ({o} + i) * interval '2 minutes', ''
  FROM generate_series(1::bigint, {new_orders}) AS i;
INSERT INTO "shop$orderline" SELECT {l} + i, {o} + 1 + (i - 1) / 2, 'product-' || i % 5000, 1 + i % 7, (i % 2000) / 10.0
  FROM generate_series(1::bigint, {2 * new_orders}) AS i;
INSERT INTO audit.event SELECT {e} + i, now(), 'order', '{{"night": {args.night}, "order": ' || ({o} + i) || '}}'
  FROM generate_series(1::bigint, {new_orders}) AS i;
UPDATE "shop$order" SET status = (ARRAY['paid','shipped','delivered'])[1 + {args.night} % 3]
  WHERE id > {o} - {updated * 2} AND id % 2 = {args.night % 2};
UPDATE "shop$customer" SET address = upper(address)
  WHERE id IN ({",".join(str(rng.randrange(1, counts['customer'])) for _ in range(20))});
""")
    documents = max(2, counts["document"] * args.percent // 100)
    corpus = text_corpus()
    rewritten = rng.sample(range(1, counts["document"] + 1), documents // 2)
    rows = []
    for seed in rewritten:
        key = document_key(seed)
        size = document_size(rng)
        write_document(args.files, key, document_bytes(seed * 1000 + args.night, size, corpus))
        psql(args.db, f'UPDATE "system$filedocument" SET size = {size}, changeddate = now() WHERE id = {seed}')
    for n in range(documents - len(rewritten)):
        seed = counts["document"] + 1 + n
        key, size = document_key(seed), document_size(rng)
        write_document(args.files, key, document_bytes(seed, size, corpus))
        rows.append(f"({seed}, '{key}', 'document-{seed}.pdf', {size}, now())")
    psql(args.db, 'INSERT INTO "system$filedocument" (id, "__uuid__", name, size, changeddate) VALUES ' + ",".join(rows))
    print(f"night {args.night}: {changed} of {table_rows} rows and {documents} documents changed"
          + (" (uniformly at random)" if args.uniform else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("create")
    made.add_argument("--db-mb", type=int, default=1024)
    made.add_argument("--files-mb", type=int, default=1024)
    changed = commands.add_parser("change")
    changed.add_argument("--night", type=int, required=True)
    changed.add_argument("--percent", type=int, default=1)
    changed.add_argument("--uniform", action="store_true")
    for command in (made, changed):
        command.add_argument("--db", required=True)
        command.add_argument("--files", required=True)
    args = parser.parse_args()
    create(args) if args.command == "create" else change(args)


if __name__ == "__main__":
    main()
