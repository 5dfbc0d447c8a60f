#ifndef CBUILDINFO_H
#define CBUILDINFO_H

/* The commit backupd was built from, as `make` wrote it into build_commit.h
   before building ("unknown" for a build without it). */
const char *backupd_build_commit(void);

#endif
