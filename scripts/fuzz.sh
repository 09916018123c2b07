#!/usr/bin/env bash
# fuzz.sh — bounded coverage-guided fuzzing of every decoder of outside input
# (fuzz/fuzz_targets/): safetensors requests, raw payloads + attachments,
# generation command JSON, the TOML config, ROS 2 CDR messages and rmw_zenoh
# attachments/liveliness tokens. Each target runs for a fixed time
# from the committed seed corpus (fuzz/corpus/<target>/, never modified: new
# inputs go to a scratch directory). A crash leaves its input in
# fuzz/artifacts/<target>/; turn it into a regression test (tests in
# src/wire.rs, src/llm/command.rs, src/config/tests.rs, src/ros2/tests/) and fix it.
#
#   scripts/fuzz.sh                    # every target, 60 s each
#   scripts/fuzz.sh 10 command_json    # one target, 10 s
#
# Needs cargo-fuzz (installed once into ~/.cache/reflexd/v1/cargo-fuzz, ~2 min)
# and a nightly toolchain (`cargo +nightly`); without nightly it falls back to
# RUSTC_BOOTSTRAP=1 on the pinned stable toolchain. Builds in fuzz/target (its
# own workspace; the top-level `cargo test` never builds it). Sanitizer: none
# (the decoders are safe Rust; overflow checks and debug assertions are on).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT/fuzz"
SECS="${1:-60}"
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(wire_safetensors wire_raw command_json config_toml ros2_cdr ros2_graph)
CACHE="${REFLEXD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reflexd}/v1"
FUZZ_ROOT="$CACHE/cargo-fuzz"
CARGO_FUZZ_VERSION=0.13.2
if ! "$FUZZ_ROOT/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION into $FUZZ_ROOT (once)"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$FUZZ_ROOT" -j "${JOBS:-2}"
fi
export PATH="$FUZZ_ROOT/bin:$PATH"
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    FUZZ=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    FUZZ=(cargo fuzz)
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/reflexd-fuzz.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export CARGO_BUILD_JOBS="${JOBS:-2}"
"${FUZZ[@]}" build -s none
status=0
printf '%-18s %10s %8s %8s\n' target execs seconds crashes >"$WORK/summary"
for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    log="$WORK/$t.log"
    if ! "${FUZZ[@]}" run -s none "$t" "$WORK/$t" "corpus/$t" -- \
        -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        status=1
        tail -n 30 "$log" >&2
    fi
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -n1)
    after=$(find "artifacts/$t" -type f | wc -l)
    printf '%-18s %10s %8s %8s\n' "$t" "${execs:-?}" "$SECS" "$((after - before))" >>"$WORK/summary"
done
echo
cat "$WORK/summary"
exit $status
