#include "CBuildInfo.h"

/* Written by `make` (scripts/build-info.sh) before every build, and not committed. */
#if __has_include("build_commit.h")
#include "build_commit.h"
#endif
#ifndef BACKUPD_COMMIT
#define BACKUPD_COMMIT "unknown"
#endif

const char *backupd_build_commit(void) { return BACKUPD_COMMIT; }
