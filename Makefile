# shunt — build, test and demo entry points. Run as root (the lab uses network namespaces).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

CARGO ?= cargo
export DEBIAN_FRONTEND := noninteractive

# Debian packages the build, the tests and the demo need.
#   build: clang llvm libelf-dev zlib1g-dev m4 pkg-config libbpf-dev (libbpf-sys / libxdp build from source)
#   tests + demo: iproute2 (ip netns), iputils-ping, ethtool, sockperf, python3, procps (sysctl),
#                 util-linux (taskset, setpriv), tcpdump (debugging aid), linux-perf (tests/syscalls.rs counts
#                 the worker's system calls with `perf stat`)
#   deploy (make deb, tests/deploy.rs): shellcheck, help2man (shunt.1), dpkg-dev (cargo-deb's dpkg-shlibdeps),
#                 systemd (systemd-analyze verify/security), python3-seccomp (the unit's filter applied without
#                 systemd as PID 1), python3-yaml (the fleet manifests), bird2 (bird -p on the fleet configs)
#   DNS example (tests/dns.rs): knot (knotd, the differential test's reference), knot-dnsutils (kdig), dnsperf,
#                 python3-dnspython (the differential test's client)
DEB_PACKAGES := clang llvm libelf-dev zlib1g-dev m4 pkg-config libbpf-dev \
	iproute2 iputils-ping ethtool sockperf sntp python3 procps util-linux tcpdump linux-perf \
	shellcheck help2man dpkg-dev systemd python3-seccomp python3-yaml bird2 \
	knot knot-dnsutils dnsperf python3-dnspython


# Integration-test files with lab tests (tests/common: root, namespaces, the real binary) run serially in the
# e2e step; the others run with the unit tests. Every lab test is `#[ignore = "lab test: ..."]` and calls
# `common::require_lab()` first: a plain `cargo test` lists it as ignored (never as passed), the e2e step runs
# it with --include-ignored, and run without root it fails, loudly.
LAB_TESTS := $(sort e2e $(basename $(notdir $(shell grep -l 'require_lab()' tests/*.rs 2>/dev/null))))
OTHER_TESTS := $(filter-out $(LAB_TESTS),$(basename $(notdir $(wildcard tests/*.rs))))

# A shell condition: true when CI is set to anything but "", 0, false or no (as tests/common reads it).
IN_CI = [[ -n "$${CI:-}" && ! "$${CI,,}" =~ ^(0|false|no)$$ ]]

.PHONY: deps build test fmt-check clippy doc-check unit-test e2e fuzz-smoke fuzz-run demo clean-lab

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
		if ! dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q '^install ok installed$$'; then \
			missing="$$missing $$p"; \
		fi; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "deps: need root to install packages" >&2; exit 1; fi; \
		apt-get update -q; \
		apt-get install -y -q --no-install-recommends $$missing </dev/null; \
	else \
		echo "deps: all Debian packages present"; \
	fi
	@$(CARGO) fmt --version >/dev/null 2>&1 || { echo "deps: rustfmt missing (rustup component add rustfmt)" >&2; exit 1; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "deps: clippy missing (rustup component add clippy)" >&2; exit 1; }
	@if $(CARGO) fuzz --version >/dev/null 2>&1; then \
		echo "deps: $$($(CARGO) fuzz --version) present"; \
	else \
		echo "deps: installing cargo-fuzz (cargo install cargo-fuzz --locked: built from crates.io, once)"; \
		if ! $(CARGO) install cargo-fuzz --locked; then \
			if $(IN_CI); then echo "deps: cargo-fuzz could not be installed, and CI is set" >&2; exit 1; fi; \
			echo "deps: WARNING: cargo-fuzz could not be installed: make fuzz-run will skip the libFuzzer runs" >&2; \
		fi; \
	fi

build:
	$(CARGO) build --release --all-targets

fmt-check:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The API reference: every public item documented (`#![deny(missing_docs)]`) and no broken intra-doc link.
doc-check:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -p shunt --no-deps

# Unit and property tests (everything but the e2e suite). An ignored test outside the lab files would never
# run anywhere: refused.
unit-test:
	@for t in $(OTHER_TESTS); do \
		if grep -q '#\[ignore' "tests/$$t.rs"; then \
			echo "unit-test: tests/$$t.rs has #[ignore] tests but no require_lab(): nothing would run them" >&2; exit 1; \
		fi; \
	done
	$(CARGO) test --release --lib --bins --examples $(foreach t,$(OTHER_TESTS),--test $(t))
	$(CARGO) test --release --doc

# End-to-end tests (every test file with lab tests, and shunt-bench's): serially, they spin pinned workers on
# 2 cores. --include-ignored runs the lab tests, which a plain `cargo test` lists as ignored.
e2e:
	@[ "$$(id -u)" = 0 ] || { echo "e2e: FAILED: the lab tests need root (network namespaces, XDP, AF_XDP): run make test as root" >&2; exit 1; }
	$(CARGO) build --release --examples
	$(CARGO) test --release $(foreach t,$(LAB_TESTS),--test $(t)) -- --include-ignored --test-threads=1
	$(CARGO) test --release -p shunt-bench -- --include-ignored --test-threads=1

# The fuzz targets' logic over their committed seeds plus 20,000 generated inputs, on stable (always run).
# The fuzz crate is its own workspace; it shares this target directory so the shunt crate is built once.
fuzz-smoke:
	cd fuzz && CARGO_TARGET_DIR=$(CURDIR)/target $(CARGO) test --release

# Real libFuzzer runs, FUZZ_SECONDS per target (the command of fuzz/README.md, shorter); RUSTC_BOOTSTRAP lets
# the stable toolchain build the sanitizer flags cargo-fuzz needs. cargo-fuzz comes from `make deps`; without
# it the runs fail when CI is set and are skipped, with a loud SKIPPED line, otherwise.
FUZZ_SECONDS ?= 15
FUZZ_TARGETS := parse respond_echo respond_sockperf write_request checksum
fuzz-run:
	@if ! $(CARGO) fuzz --version >/dev/null 2>&1; then \
		if $(IN_CI); then \
			echo "fuzz: FAILED: cargo-fuzz is not installed and CI is set: the libFuzzer runs must not be skipped (make deps installs it)" >&2; \
			exit 1; \
		fi; \
		echo "fuzz: ******************************************************************************************"; \
		echo "fuzz: SKIPPED: cargo-fuzz is not installed, so no libFuzzer run (make deps installs it; fuzz-smoke ran)"; \
		echo "fuzz: ******************************************************************************************"; \
		exit 0; \
	fi; \
	start=$$SECONDS; \
	mkdir -p $(CURDIR)/target; \
	cd fuzz; \
	log=$(CURDIR)/target/fuzz-build.log; \
	echo "fuzz: building the targets ($$($(CARGO) fuzz --version), log in $$log)"; \
	if ! RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build -O >"$$log" 2>&1; then \
		tail -n 60 "$$log"; echo "fuzz: build FAILED" >&2; exit 1; \
	fi; \
	for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t; \
		log=$(CURDIR)/target/fuzz-$$t.log; \
		if ! RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$t corpus/$$t seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=2048 >"$$log" 2>&1; then \
			tail -n 60 "$$log"; echo "fuzz: $$t FAILED (artifacts in fuzz/artifacts/$$t, log in $$log)" >&2; exit 1; \
		fi; \
		done_line=$$(grep -E '^Done [0-9]+ runs' "$$log" | tail -n 1 || true); \
		if [ -z "$$done_line" ]; then \
			tail -n 30 "$$log"; echo "fuzz: $$t: libFuzzer printed no 'Done N runs' line (log in $$log)" >&2; exit 1; \
		fi; \
		echo "fuzz: $$t: $$done_line"; \
	done; \
	echo "fuzz: $(words $(FUZZ_TARGETS)) targets, $(FUZZ_SECONDS) s each: $$((SECONDS - start)) s with the build"

test: deps
	$(MAKE) --no-print-directory fmt-check
	$(MAKE) --no-print-directory clippy
	$(MAKE) --no-print-directory doc-check
	$(MAKE) --no-print-directory unit-test
	$(MAKE) --no-print-directory deb
	$(MAKE) --no-print-directory e2e
	$(MAKE) --no-print-directory fuzz-smoke
	$(MAKE) --no-print-directory fuzz-run

demo: deps build
	deploy/demo.sh

# The Debian package: target/debian/shunt_<version>-1_<arch>.deb (deploy/build-deb.sh: release build, shunt.1
# by help2man, `cargo deb --no-build --strip`; cargo-deb is installed with `cargo install cargo-deb --locked`
# the first time). tests/deploy.rs installs it into a throw-away root, so `make test` builds it before e2e.
.PHONY: deb
deb: deps
	CARGO=$(CARGO) deploy/build-deb.sh

# Remove leftover lab namespaces (names starting with "shunt", or with CLEAN_LAB_PREFIX, which must itself
# start with "shunt") owned by this user. Deleting a namespace removes the veth end in it and its peer.
CLEAN_LAB_PREFIX ?= shunt
clean-lab:
	@case "$(CLEAN_LAB_PREFIX)" in shunt*) ;; *) echo "clean-lab: prefix must start with shunt" >&2; exit 2;; esac; \
	uid=$$(id -u); \
	for ns in $$(ip netns list 2>/dev/null | awk '{print $$1}' | grep '^$(CLEAN_LAB_PREFIX)' || true); do \
		owner=$$(stat -c %u "/var/run/netns/$$ns" 2>/dev/null || echo "$$uid"); \
		if [ "$$owner" = "$$uid" ]; then echo "clean-lab: deleting netns $$ns"; ip netns del "$$ns" || true; fi; \
	done

# Benchmark comparison (bench/, issue P3): one lab created and deleted by the run, every target of the plan,
# repetitions interleaved; writes bench/results/$(BENCH_NAME).md + .json + SVGs. Default run (13 targets, 2
# repetitions): 14 minutes on the 2-core lab (rounds of 837 s and 831 s in two runs, plus the build). Exit status 1 when the verdict says
# "broken", 0 with "noisy"/"limited" warnings (bench/README.md).
# More repetitions or other rates: make bench BENCH_FLAGS="--reps 3 --rates 20k,100k,300k".
BENCH_PLAN ?= bench/plans/lab.toml
BENCH_NAME ?= lab-veth
BENCH_FLAGS ?=
# The comparison's peers: dpdk-testpmd on DPDK's AF_XDP PMD (installed only when missing).
BENCH_PACKAGES := dpdk dpdk-dev librte-net-af-xdp23
.PHONY: bench bench-deps
bench-deps: deps
	@missing=""; \
	for p in $(BENCH_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q --no-install-recommends $$missing </dev/null; fi

bench: bench-deps
	$(CARGO) build --release -p shunt -p shunt-bench
	target/release/shunt-bench compare --plan $(BENCH_PLAN) --name $(BENCH_NAME) $(BENCH_FLAGS)

# The same comparison for a machine with 16 cores or more (bench/plans/many-core.toml): four queues, four shunt
# workers, a four-thread generator, and sweep rates up to 3 Mpps.
MANY_CORE_FLAGS ?= --sweep-threads 4 --sweep-cores 8,9,10,11 --rates 100k,300k,1M,2M,3M
.PHONY: bench-many-core
bench-many-core: bench-deps
	$(CARGO) build --release -p shunt -p shunt-bench
	target/release/shunt-bench compare --plan bench/plans/many-core.toml --name many-core $(MANY_CORE_FLAGS) $(BENCH_FLAGS)

# Authoritative DNS (bench/plans/dns.toml): the DNS example on AF_XDP and kernel sockets, Knot DNS in UDP and XDP
# mode, the same zone and queries (bench/data/dns/); shunt-bench sends DNS queries and checks every answer, dnsperf
# runs at fixed -Q loads and at its maximum. Writes bench/results/dns.md (+ .json, plots).
DNS_BENCH_PACKAGES := knot knot-dnsutils dnsperf
.PHONY: bench-dns
bench-dns: deps
	@missing=""; \
	for p in $(DNS_BENCH_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q --no-install-recommends $$missing </dev/null; fi
	$(CARGO) build --release -p shunt -p shunt-bench
	$(CARGO) build --release -p shunt --example dns
	target/release/shunt-bench compare --plan bench/plans/dns.toml --name dns $(BENCH_FLAGS)

# The cost of in-server latency measurement: histograms on vs off, interleaved (bench/plans/latency-overhead.toml).
.PHONY: bench-overhead
bench-overhead: deps
	$(CARGO) build --release -p shunt -p shunt-bench
	target/release/shunt-bench compare --plan bench/plans/latency-overhead.toml --name latency-overhead $(BENCH_FLAGS)

# Where the round trip goes: shunt's critical-path knobs against the kernel baseline and the in-kernel floor
# (bench/plans/loop-design.toml; analysis in bench/results/latency-budget.md). Ping-pong focused: one short
# sweep point. ~8 minutes with the defaults.
LOOP_DESIGN_FLAGS ?= --reps 6 --rates 20k --duration 1
.PHONY: bench-loop-design
bench-loop-design: deps
	$(CARGO) build --release -p shunt -p shunt-bench
	target/release/shunt-bench compare --plan bench/plans/loop-design.toml --name loop-design $(LOOP_DESIGN_FLAGS) $(BENCH_FLAGS)

# The in-place reply path before and after the send API (bench/plans/send-api.toml): the build of
# SEND_API_BASE (the last commit before it) into target/baseline/, then both interleaved in one lab run.
SEND_API_BASE ?= 0bfbaab
.PHONY: bench-send-api
bench-send-api: deps
	$(CARGO) build --release -p shunt -p shunt-bench
	rm -rf target/baseline-src && git worktree prune
	git worktree add --detach target/baseline-src $(SEND_API_BASE)
	CARGO_TARGET_DIR=$(CURDIR)/target/baseline $(CARGO) build --release --manifest-path target/baseline-src/Cargo.toml -p shunt --bin shunt
	git worktree remove --force target/baseline-src
	target/release/shunt-bench compare --plan bench/plans/send-api.toml --name send-api $(BENCH_FLAGS)

# Native vs generic XDP attach on veth, interleaved (bench/plans/attach-mode.toml).
.PHONY: bench-attach-mode
bench-attach-mode: deps
	$(CARGO) build --release -p shunt -p shunt-bench
	target/release/shunt-bench compare --plan bench/plans/attach-mode.toml --name attach-mode $(BENCH_FLAGS)

# The performance tables of README.md and docs/ from the result files in bench/results/ (between
# `<!-- shunt-bench tables: NAME KIND -->` markers; bench/README.md). No root, no lab: it only reads JSON. The
# shunt-bench unit tests fail when a table no longer matches its result file; run this after a bench run.
.PHONY: results-tables
results-tables:
	$(CARGO) build --release -p shunt-bench
	target/release/shunt-bench tables README.md docs/*.md
