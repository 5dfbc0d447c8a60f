#!/usr/bin/env bash
# Starts backupd in the foreground on the private cluster with the demo
# environment registered, and prints how to call it with backupctl.
#   run-dev.sh BIN_DIR ADDRESS
set -euo pipefail
BIN=${1:-.build/debug}
ADDR=${2:-127.0.0.1:7443}
VAR=${BACKUPD_VAR:-$(pwd)/.var}
PORT=${BACKUPD_PGPORT:-55432}
export BACKUPD_CATALOG="host=127.0.0.1 port=$PORT user=postgres dbname=backupd"
export BACKUPD_BLOB_DIR=$VAR/blobs
export BACKUPD_TLS_CERT=$(pwd)/certs/dev/server.crt
export BACKUPD_TLS_KEY=$(pwd)/certs/dev/server.key
export BACKUPD_DOWNLOAD_KEYS=$(pwd)/certs/dev/download-keys
export BACKUPD_STORAGE_KEYS=$(pwd)/certs/dev/storage-keys

if [ ! -s "$VAR/admin.token" ]; then
  "$BIN/backupd" token create --namespace demo --role admin --name demo-admin > "$VAR/admin.token"
fi
# The platform token places environments (database, file store); namespace admins cannot.
if [ ! -s "$VAR/platform.token" ]; then
  "$BIN/backupd" token create --platform --name demo-platform > "$VAR/platform.token"
fi
export BACKUPCTL_ADDR=$ADDR BACKUPCTL_TOKEN=$(cat "$VAR/admin.token") BACKUPCTL_CA=$(pwd)/certs/dev/ca.crt

rm -f "$VAR/backupd.ready"
"$BIN/backupd" serve --listen "$ADDR" --ready-file "$VAR/backupd.ready" --file-store-root "$VAR/demo" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM
for _ in $(seq 1 100); do [ -s "$VAR/backupd.ready" ] && break; kill -0 $pid 2>/dev/null || exit 1; sleep 0.1; done

"$BIN/backupctl" env show demo/shop-production >/dev/null 2>&1 || "$BIN/backupctl" env register demo/shop-production --token "$(cat "$VAR/platform.token")" \
  --app shop --database-url "host=127.0.0.1 port=$PORT user=postgres dbname=demo_app" \
  --file-store "$VAR/demo/files" --package-version 1.0.0 >/dev/null

cat <<HELP

backupd is listening on $ADDR (Ctrl-C stops it). In another shell:

  export BACKUPCTL_ADDR=$ADDR
  export BACKUPCTL_CA=$BACKUPCTL_CA
  export BACKUPCTL_TOKEN=$BACKUPCTL_TOKEN
  export PATH=$(pwd)/$BIN:\$PATH

  backupctl info
  backupctl env list
  backupctl create --env demo/shop-production --comment "first backup" --wait
  backupctl list --env demo/shop-production
  backupctl show <ID>
  backupctl activity --env demo/shop-production

Metrics and health on the admin listener (plain HTTP, loopback):

  curl http://127.0.0.1:7444/metrics
  curl http://127.0.0.1:7444/readyz

HELP
wait $pid
