# The two commands of the README: `make demo` and `make test`. Both provision
# what they need first (idempotent; cached in ~/.cache/reflexd).
SHELL := /bin/bash
CARGO ?= cargo
JOBS ?= 2
# The demo's loopback port: `make demo PORT=7450` (or DEMO_PORT=7450 in the
# environment). A PORT variable that merely sits in the environment (some
# hosts export one) is ignored.
DEMO_PORT ?= $(if $(filter command line,$(origin PORT)),$(PORT),7447)

.PHONY: setup demo test bench check-config cross-aarch64 deb deb-arm64

setup:
	@bash scripts/provision.sh

demo: setup
	@DEMO_PORT=$(DEMO_PORT) bash scripts/demo.sh

# Incremental compilation off for the test command: CI keeps target/ between
# runs, and a stale incremental cache can make rustc crash (exit 101) on an
# unchanged tree; a clean build gains nothing from it anyway.
test: export CARGO_INCREMENTAL = 0
test: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -j$(JOBS) --all-targets -- -D warnings
	$(CARGO) test -j$(JOBS) -- --test-threads=1

bench: setup
	$(CARGO) bench -j$(JOBS) --bench latency

check-config: setup
	$(CARGO) run -q -- check -c config/demo.toml

# aarch64 (Jetson) release binary via cargo-zigbuild, glibc 2.31, smoke-tested
# under qemu (docs/deploy-jetson.md). Minutes: not part of `make test`.
cross-aarch64:
	@JOBS=$(JOBS) bash scripts/cross-aarch64.sh

# Debian package (cargo-deb metadata in Cargo.toml; the script installs
# cargo-deb 3.8.0 into the cache on first use, builds, packages, verifies).
# deb-arm64: the Jetson package from the cross build (minutes).
deb:
	@JOBS=$(JOBS) bash scripts/package-deb.sh amd64

deb-arm64: cross-aarch64
	@JOBS=$(JOBS) bash scripts/package-deb.sh arm64
