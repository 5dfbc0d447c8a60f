#!/usr/bin/env bash
# A private PostgreSQL cluster under .var/pg for development and tests:
# loopback only, trust authentication, started as the postgres user when run
# as root (PostgreSQL refuses to run as root).
#   dev-cluster.sh start | stop | status
set -euo pipefail
VAR=${BACKUPD_VAR:-$(pwd)/.var}
PORT=${BACKUPD_PGPORT:-55432}
PGROOT=$VAR/pg
DATA=$PGROOT/data
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$BIN" ] || { echo "PostgreSQL server binaries not found; run 'make deps'" >&2; exit 1; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The postgres user must be able to reach its data folder. When this checkout
# lies below a folder it cannot enter, the cluster lives under /var/tmp and
# .var/pg links to it.
place_cluster() {
  mkdir -p "$VAR"
  [ "$(id -u)" = 0 ] || return 0
  [ -e "$PGROOT" ] && return 0
  if ! runuser -u postgres -- test -x "$VAR"; then
    local elsewhere="/var/tmp/backupd-pg-$(printf '%s' "$VAR" | md5sum | cut -c1-12)"
    mkdir -p "$elsewhere"
    ln -s "$elsewhere" "$PGROOT"
  fi
}

case "${1:-start}" in
start)
  place_cluster
  mkdir -p "$PGROOT/run"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PGROOT/"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    as_postgres "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  fi
  # Rewritten at every start, so a cluster made by an older checkout gets
  # today's settings. The test run keeps one catalog per test server, each
  # with its pool, and runs many servers at once: 200 connections ran out.
  cat > "$DATA/backupd.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$PGROOT/run'
max_connections = 500
logging_collector = off
CONF
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$DATA/backupd.conf"
  grep -q "backupd.conf" "$DATA/postgresql.conf" || echo "include_if_exists = 'backupd.conf'" >> "$DATA/postgresql.conf"
  # Tests need one role that must log in with its password, like a real app's.
  reload=false
  if ! grep -q backupd_password_test "$DATA/pg_hba.conf"; then
    { echo "host all backupd_password_test 127.0.0.1/32 scram-sha-256"; cat "$DATA/pg_hba.conf"; } > "$DATA/pg_hba.conf.new"
    mv "$DATA/pg_hba.conf.new" "$DATA/pg_hba.conf"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$DATA/pg_hba.conf"
    reload=true
  fi
  if ! as_postgres "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$PGROOT/server.log" -w -t 60 start >/dev/null
  elif $reload; then
    as_postgres "$BIN/pg_ctl" -D "$DATA" reload >/dev/null
  fi
  psql="psql -X -q -h 127.0.0.1 -p $PORT -U postgres"
  $psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'backupd'" | grep -q 1 \
    || $psql -d postgres -c "CREATE DATABASE backupd"
  echo "PostgreSQL on 127.0.0.1:$PORT (data in $DATA)"
  ;;
stop)
  [ -f "$DATA/PG_VERSION" ] && as_postgres "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true
  ;;
status)
  as_postgres "$BIN/pg_ctl" -D "$DATA" status
  ;;
*)
  echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
