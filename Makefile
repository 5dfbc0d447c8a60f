# backupd — build, run and test. `make run` and `make test` do all set-up on a
# fresh machine: apt packages, development certificates, a private PostgreSQL
# cluster under .var/, and the demo app.
SHELL := /bin/bash
.DEFAULT_GOAL := build

SWIFT        ?= swift
CONFIG       ?= debug
BIN          := .build/$(CONFIG)
VAR          := $(CURDIR)/.var
PGPORT       ?= 55432
ADDR         ?= 127.0.0.1:7443
APT_PACKAGES := libprotobuf-c-dev protobuf-c-compiler libpq-dev libssl-dev libarchive-dev libzstd-dev zlib1g-dev \
                postgresql postgresql-client openssl ca-certificates bc tzdata
# What only the tests use: curl and a real browser fetch download URLs;
# Prometheus scrapes the admin listener and promtool tests the alert rules;
# systemd-analyze checks the service unit;
# moto is the S3 server of the object-store tests, botocore the signer the
# request signing is checked against.
TEST_APT_PACKAGES := curl chromium prometheus systemd
TEST_PIP_PACKAGES := 'moto[server]==5.2.1'

export BACKUPD_PGPORT := $(PGPORT)
export BACKUPD_VAR := $(VAR)

.PHONY: deps test-deps install-packages proto certs cluster demo build run test fuzz fuzz-build load bench install clean

## deps: install the Debian packages the project needs (only what is missing); note the commit being built
deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(APT_PACKAGES)"
	@bash scripts/build-info.sh

## test-deps: also what the tests need
test-deps: deps
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(TEST_APT_PACKAGES)"
	@python3 -c 'import moto.server, botocore' 2>/dev/null || python3 -m pip install -q $(TEST_PIP_PACKAGES)

install-packages:
	@missing=$$(for p in $(PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

## proto: regenerate Sources/BackupProto from Protos/backup.proto (commit the result)
proto:
	protoc-c --c_out=Sources/BackupProto -IProtos Protos/backup.proto
	mv Sources/BackupProto/backup.pb-c.h Sources/BackupProto/include/backup.pb-c.h

## certs: development CA, server and client certificates under certs/dev
certs: deps
	@bash certs/make-dev-certs.sh certs/dev

## cluster: a private PostgreSQL cluster under .var/pg, started
cluster: deps
	@bash scripts/dev-cluster.sh start

## demo: the demo app (database + file store) in the private cluster
demo: cluster
	@bash scripts/demo-app.sh

build: deps
	$(SWIFT) build -c $(CONFIG)

## run: everything above, then backupd in the foreground with the demo environment
run: certs demo build
	@bash scripts/run-dev.sh $(BIN) $(ADDR)

# Test scratch (copies of the demo app, blob stores, clusters of tests' own)
# goes to tmpfs when there is one with 8 GiB free: a full run creates and
# removes tens of thousands of files, and on a disk its journal and fsyncs
# cost about a third of the test phase. TEST_TMPDIR= keeps the default.
TEST_TMPDIR ?= $(shell df --output=avail -k /dev/shm 2>/dev/null | awk 'NR == 2 && $$1 > 8388608 { print "/dev/shm" }')

# Tests run on an optimized build (what is shipped): a full run is bound by
# the two cores, and a debug build spends a third more of them. Testable
# imports need -enable-testing in release. TEST_CONFIG=debug for a debugger.
TEST_CONFIG ?= release
TEST_BUILD  := -c $(TEST_CONFIG) $(if $(filter release,$(TEST_CONFIG)),-Xswiftc -enable-testing)

# The suites that run a second time with their servers' blobs in an S3 bucket (moto, started by the tests), and
# those of them left to the local folder (they measure memory over gigabytes, a day's work for moto).
S3_SUITES      ?= RestoreTests|BackupIntegrationTests|LiveBackupTests|UploadTests|UploadValidationTests|DownloadTests|DownloadURLTests|VerifyTests|ChunkedDumpBackupTests|CollectionBesideJobsTests
S3_SKIP_SUITES ?= LargeDownloadTests|UploadMemoryTests

# At most TEST_WIDTH tests at a time. Unbounded, every waiting test keeps a
# server, its catalog connections and its processes: the two cores spent half
# their time in the kernel and the PostgreSQL cluster ran out of connections.
TEST_WIDTH ?= 8
TEST_RUN = $(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR) )bash scripts/test-pass.sh $(SWIFT) test $(TEST_BUILD) --skip-build \
	--experimental-maximum-parallelization-width $(TEST_WIDTH)

## test: everything above, then every test, the backup, restore, upload and download suites again on S3, then each fuzz target briefly
test: test-deps certs demo
	$(SWIFT) build $(TEST_BUILD) --build-tests
	$(TEST_RUN)
	BACKUPD_TEST_BLOB_STORE=s3 $(TEST_RUN) --filter '$(S3_SUITES)' --skip '$(S3_SKIP_SUITES)'
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(TEST_FUZZ_SECONDS)

# Fuzzing: every Swift module instrumented for libFuzzer and AddressSanitizer,
# in a build folder of its own; libFuzzer's driver without its main (the
# target's entry point calls it), from the toolchain's own clang runtime.
FUZZ_SECONDS      ?= 600
TEST_FUZZ_SECONDS ?= 15
FUZZ_RUNTIME = $(firstword $(wildcard $(dir $(realpath $(shell command -v $(SWIFT))))../lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-$(shell uname -m).a))

fuzz-build: deps
	@[ -n "$(FUZZ_RUNTIME)" ] || { echo "libFuzzer's runtime is not in this Swift toolchain"; exit 1; }
	$(SWIFT) build --build-path .build/fuzz --product backup-fuzz -Xswiftc -DFUZZING -Xswiftc -sanitize=address \
	  -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp -Xlinker $(FUZZ_RUNTIME)

## fuzz: each fuzz target for FUZZ_SECONDS (600) under libFuzzer; FUZZ_JOBS=2 runs two at once; failing inputs are saved under Tests/Fuzz/
fuzz: fuzz-build
	@bash scripts/fuzz.sh .build/fuzz/debug $(FUZZ_SECONDS) $(FUZZ_TARGETS)

## load: CLIENTS (64) clients of mixed calls for LOAD_SECONDS (60) beside IDLE (1000) idle connections, against a backupd of its own (release build); fails on an unexpected error
load: certs demo
	$(SWIFT) build -c release
	@bash scripts/load.sh .build/release

## bench: backupd against pg_dump, pg_restore, tar, restic and nginx on a generated app, on the local folder and on S3 (moto) (release build; DB_MB, FILES_MB, RUNS); writes docs/benchmarks.md
bench: certs demo test-deps
	$(SWIFT) build -c release
	@bash scripts/bench.sh .build/release $${RUNS:-3}

## install: a release build's binaries, the systemd unit, an example configuration and the alert rules under PREFIX (/usr/local; DESTDIR for packaging)
PREFIX ?= /usr/local
install: deps
	$(SWIFT) build -c release
	@bash scripts/install.sh .build/release $(PREFIX) $(DESTDIR)

clean:
	-bash scripts/dev-cluster.sh stop
	rm -rf .build .var certs/dev
