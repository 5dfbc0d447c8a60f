#!/usr/bin/env bash
# Installs built binaries, the systemd unit, an example configuration and
# the Prometheus alert rules under a prefix (`make install` runs it after a
# release build).
#   install.sh BIN_DIR PREFIX [DESTDIR]
set -euo pipefail
BIN=${1:?binaries folder}
PREFIX=${2:?prefix}
DESTDIR=${3:-}
root=$DESTDIR$PREFIX
install -d "$root/bin" "$root/lib/systemd/system" "$root/share/backupd" "$root/share/doc/backupd"
install -m 0755 "$BIN/backupd" "$BIN/backupctl" "$root/bin/"
sed "s|@PREFIX@|$PREFIX|g" packaging/backupd.service > "$root/lib/systemd/system/backupd.service"
chmod 0644 "$root/lib/systemd/system/backupd.service"
install -m 0644 packaging/backupd.yaml.example packaging/backupd.env.example packaging/prometheus/backupd-alerts.yml "$root/share/backupd/"
install -m 0644 README.md docs/*.md "$root/share/doc/backupd/"
echo "installed under $root"
