# Sourced by bench.sh and load.sh: the private cluster (`make cluster`) as
# the scripts reach it, and the databases a run makes, named `$tag…`.
PORT=${BACKUPD_PGPORT:-55432}
export PGOPTIONS="-c client_min_messages=warning"
psql="psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $PORT -U postgres"
url() { echo "host=127.0.0.1 port=$PORT user=postgres dbname=$1"; }

# Drops every database whose name starts with $tag, sessions and all.
drop_tagged_databases() {
  for db in $($psql -d postgres -tAc "SELECT datname FROM pg_database WHERE datname LIKE '${tag}%'"); do
    $psql -d postgres -c "DROP DATABASE \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
