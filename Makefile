# Swiftlet: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need (Debian packages, the guest kernel, the rootfs,
# a release build of Swiftlet) and are cheap to repeat: the kernel and rootfs
# are cached under $(SWIFTLET_CACHE), keyed by their inputs.

SHELL := /bin/bash
export SWIFTLET_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/swiftlet

DEBIAN_PACKAGES := build-essential zlib1g-dev liblz4-dev libzstd-dev libseccomp-dev \
	e2fsprogs cpio busybox-static qemu-system-x86 acl iproute2 postgresql valgrind umoci mmdebstrap
# The VMM binary is a static executable (no dynamic loader: no shared-library relocations or
# symbol look-ups at exec, no libc/libstdc++ mappings), linked by lld with the functions a VMM
# executes laid out together (Sources/swiftlet/link-order.txt, from benchmarks/startup/link-order.sh):
# it maps fewer pages. benchmarks/startup/README.md has what each of these bought.
RELEASE_FLAGS := -c release -Xswiftc -static-executable -Xswiftc -use-ld=lld \
	-Xswiftc -Xfrontend -Xswiftc -function-sections \
	-Xlinker --symbol-ordering-file=$(CURDIR)/Sources/swiftlet/link-order.txt -Xlinker --no-warn-symbol-ordering \
	-Xlinker -Map=$(CURDIR)/.build/swiftlet.map
SWIFTLET := .build/release/swiftlet

.PHONY: all deps kernel rootfs images release build demo demo-boot test unit-test runner-test stress bench bench-run bench-snapshot bench-fleet seccomp-log clean

all: release

## Debian packages for building Swiftlet (C libraries it links) and running its tests.
deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	else echo "deps: all installed"; fi

## The guest kernel (cached outside the repository).
kernel:
	kernels/build.sh

## The guest rootfs and initramfs (cached outside the repository).
rootfs:
	rootfs/build.sh

images: kernel rootfs

## A release build: a static executable, its start-up code laid out together (see RELEASE_FLAGS).
## SwiftPM does not know the order file is a link input: a newer one forces the link.
release: deps
	@if [ Sources/swiftlet/link-order.txt -nt .build/release/swiftlet ]; then rm -f .build/release/swiftlet; fi
	swift build $(RELEASE_FLAGS) --product swiftlet

build: deps
	swift build

## Set everything up, then run a command in a throwaway microVM (the one-shot sandbox),
## showing where the time went.
demo: deps images release
	$(SWIFTLET) run --timings -- sh -c 'uname -a; echo "hello from $$(hostname), pid $$$$"; ls /'

## Boot the default guest with its console on this terminal until it powers off.
demo-boot: deps images release
	$(SWIFTLET) boot --boot-timer --stats

## Set everything up, then run the whole test suite (KVM tests included).
## The sandbox tests restore one snapshot of the default guest, created once per run
## in a fresh cache (.build/test-snapshots); a few tests still boot cold (--cold).
## RunTests run twice: as they are, and with every `run` jailed (--jail).
## The store suites (a real PostgreSQL, async all through) run in a process of their own: in
## the main one, the KVM tests' blocking waits hold the cooperative pool's threads (2 here) for
## minutes, and the stores' deadlines run out on a database that is fine.
POSTGRES_SUITES := StoreTests|DeadlineTests|PostgresURLTests
test: export SWIFTLET_SNAPSHOT_CACHE := $(CURDIR)/.build/test-snapshots
# The --image tests' images (Tests/images/README.md), cached like the kernel; build.sh links `current`.
test: export SWIFTLET_TEST_IMAGES := $(SWIFTLET_CACHE)/test-images/current
test: deps images release
	swift build --build-tests
	rm -rf "$$SWIFTLET_SNAPSHOT_CACHE"
	.build/debug/swiftlet snapshot cached
	Tests/images/build.sh >/dev/null
	swift test --skip-build --skip '$(POSTGRES_SUITES)'
	swift test --skip-build --filter '$(POSTGRES_SUITES)'
	SWIFTLET_TEST_JAIL=1 swift test --skip-build --filter RunTests
	$(MAKE) runner-test
	rootfs/agent/test.sh
	python3 -B -m unittest benchmarks/boot/test_gate.py
	FUZZ_TARGET=$${FUZZ_TARGET:-all} FUZZ_SECONDS=$${FUZZ_SECONDS:-30} Tests/Fuzz/run.sh
	Tests/stress/run.py --profile short --json .build/stress-short.json
	Tests/stress/run.py --profile audit --json .build/stress-audit.json

## The job runner's end-to-end tests (Tests/runner/README.md): real swiftletd daemons
## driven by boto3, the AWS CLI, requests and schemathesis from a venv (.build/runner-venv).
runner-test: export SWIFTLET_SNAPSHOT_CACHE ?= $(CURDIR)/.build/test-snapshots
runner-test: deps images release
	swift build --product swiftletd
	SWIFTLETD=.build/debug/swiftletd SWIFTLET=$(SWIFTLET) Tests/runner/run.sh

## The stress and soak suite under --seccomp strict (Tests/stress/README.md):
## PROFILE=long (the default here: 64 MiB floods, 50 signals, 200 runs, 10-minute
## jobs; well over an hour), short (part of `make test`), audit (short under
## --seccomp log: any syscall outside an allowlist fails it).
stress: export SWIFTLET_SNAPSHOT_CACHE ?= $(CURDIR)/.build/test-snapshots
stress: deps images release
	Tests/stress/run.py --profile $(or $(PROFILE),long) --json .build/stress-$(or $(PROFILE),long).json

## The seccomp allowlists' guide: syscalls per thread role under --seccomp=log (README, Security).
seccomp-log: deps images
	swift build
	Tests/seccomp-log.sh .build/debug/swiftlet

## The VMM's own footprint (RSS, PSS per extra VM, exec to the first KVM_RUN) against its targets,
## failing when start-up instructions grew >10% over benchmarks/startup/baseline.json; then the
## boot suite: Swiftlet against QEMU microvm (and kvmtool with KVMTOOL=path/to/lkvm) on the
## peer-bootable kernel variant (built here if needed, about 5 min on 2 cores; never by `make test`),
## N=10 boots each (BOOT_N=...), about 20 min on a nested-PVM host, then restore side by side
## (Swiftlet run vs QEMU -incoming, about 2 min) (benchmarks/README.md).
bench: deps images release
	benchmarks/startup/run.sh --check
	kernels/build.sh --variant peers
	SWIFTLET=$(SWIFTLET) benchmarks/boot/run.sh --kernel peers -n $(or $(BOOT_N),10) $(if $(KVMTOOL),--kvmtool $(KVMTOOL))
	SWIFTLET=$(SWIFTLET) benchmarks/boot/run.sh --restore --kernel peers -n $(or $(BOOT_N),10)

## Snapshot restore: latency (median, p99), restored vs cold, memory per VM (benchmarks/snapshot/run.sh).
bench-snapshot: deps images release
	benchmarks/snapshot/run.sh

## The fleet: jobs/s at 1-3 hosts on one PostgreSQL, claim latency, pgbench on the claim (benchmarks/runner/README.md).
bench-fleet: deps images release
	swift build -c release --product swiftletd --scratch-path .build-rel
	SWIFTLETD=.build-rel/release/swiftletd SWIFTLET=$(SWIFTLET) python3 benchmarks/runner/fleet.py

## A cold `swiftlet run --cold -- true` end to end, phase by phase (see benchmarks/run/run.sh).
bench-run: deps images release
	benchmarks/run/run.sh

clean:
	rm -rf .build
