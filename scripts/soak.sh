#!/usr/bin/env bash
# soak.sh — run the demo workload (config/demo.toml: VAD at 32 ms, the OCR
# chain on a 2 Hz bgr8 camera, a chat question every 5 s) against an in-process daemon for
# a long time and print: per pipeline sent / ok / deadline misses / superseded /
# lost and client round-trip p50 / p99 / p99.9, and RSS at start, after 60 s,
# at the end and at peak. It is tests/soak.rs with a longer duration (the test
# suite runs the same code for 6 s). It fails if a request gets two outcomes
# or the daemon's counters do not balance; replies lost on the way to the
# client (zenoh Drop policy) are reported. Loopback only.
#
#   scripts/soak.sh                # 600 s (10 minutes), debug build
#   scripts/soak.sh 3600           # one hour
#   SOAK_PROFILE=release scripts/soak.sh   # release build (first build ~5 min)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
SECONDS_TO_RUN="${1:-600}"
[[ "$SECONDS_TO_RUN" =~ ^[0-9]+$ ]] || { echo "usage: $0 [seconds]" >&2; exit 2; }
bash scripts/provision.sh >/dev/null
# shellcheck disable=SC1090
source "$(bash scripts/provision.sh --print-env)"
profile_args=()
[[ "${SOAK_PROFILE:-debug}" == release ]] && profile_args=(--release)
echo "soak.sh: ${SECONDS_TO_RUN} s on $(nproc) cores, $(date -u +%FT%TZ), profile ${SOAK_PROFILE:-debug}"
REFLEXD_SOAK_SECONDS="$SECONDS_TO_RUN" REFLEXD_LOG="${REFLEXD_LOG:-warn}" \
    cargo test -j"${JOBS:-2}" "${profile_args[@]}" --test soak -- --nocapture --test-threads=1
