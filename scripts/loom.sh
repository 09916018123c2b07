#!/usr/bin/env bash
# Model-checks the scheduler's protocols with loom (src/sched/loom.rs):
# claim/park/unpark, batch fill, latest-wins replace/release/evict, and
# decode-batch join/retire, every interleaving, on the production code.
#
# Only this crate is built with `--cfg loom` (`cargo rustc` passes flags to
# the final crate alone); dependencies keep their normal build, which also
# keeps crates with their own `cfg(loom)` code (tokio, …) out of it.
# Optimised (bench profile): loom runs each test thousands of times.
#
# Usage: scripts/loom.sh [TEST-FILTER]      (default: sched::loom)
#   LOOM_MAX_PREEMPTIONS=N: at most N preemptions per execution (default 3,
#   as loom's authors advise: bugs need few preemptions, the search without
#   a bound runs for hours here). LOOM_MAX_PREEMPTIONS= (empty): no bound.
#   LOOM_PROFILE=test: build unoptimised, sharing the dependencies of
#   `cargo test` (no release build of them; the models run slower).
set -euo pipefail
export LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS-3}
[ -n "$LOOM_MAX_PREEMPTIONS" ] || unset LOOM_MAX_PREEMPTIONS
cd "$(dirname "$0")/.."
filter=${1:-sched::loom}
exe=$(nice -n 10 cargo rustc -j"${JOBS:-2}" --profile "${LOOM_PROFILE:-bench}" --lib \
    --message-format=json-render-diagnostics -- --cfg loom |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])
')
[ -n "$exe" ] || { echo "loom.sh: no test binary built" >&2; exit 1; }
start=$(date +%s)
nice -n 10 "$exe" "$filter" --test-threads=1
echo "loom.sh: $(( $(date +%s) - start )) s"
