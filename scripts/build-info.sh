#!/usr/bin/env bash
# Writes the commit being built (with -dirty for uncommitted changes) into
# Sources/CBuildInfo/build_commit.h, only
# when it changed (so an unchanged commit rebuilds nothing): `backupd
# --version`, `backupctl --version` and ServerInfo report it.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# A build from a tree with changes not committed is not that commit's: say so.
if [ "$commit" != unknown ] && ! git diff --quiet HEAD -- 2>/dev/null; then commit="$commit-dirty"; fi
header=Sources/CBuildInfo/build_commit.h
line="#define BACKUPD_COMMIT \"$commit\""
if [ "$(cat "$header" 2>/dev/null)" != "$line" ]; then
  echo "$line" > "$header"
fi
