#!/usr/bin/env bash
# demo.sh — the end-to-end demo behind `make demo` (which runs scripts/provision.sh
# first). It exercises the whole data flow on loopback: reflexd-sim publishes a
# real microphone stream (raw f32 frames) and a camera frame as u8 bgr8 pixels
# (the plain-zenoh image message, docs/images.md; models/data/signs.png, text
# with known words rendered at provision time) → the daemon (config/demo.toml)
# schedules, runs Silero VAD with its speech-event answer stage on worker 0/1
# and the PP-OCR chain (det → angle classifier → rec, resizing and normalising
# the frame itself) on worker 2 → answers come back on reflexd/** and the
# simulator prints speech_start/speech_end events and text lines (text,
# confidence, box, per-stage timing) with their latencies. While the sensors
# stream, `reflexd prompt` asks the `chat` pipeline (SmolLM2-135M) a question:
# its tokens, one line each, appear between the VAD and OCR lines, decoded on
# worker 1 without delaying either sensor. After the simulator, a second
# question streams as running text, the way a person uses `reflexd prompt`.
# Last, a robot plan:
# "pick up the red cube" → a validated move_arm call published on
# robot/arm/cmd → the result fed back → a final answer (scripts/plan_demo.py).
#
#   scripts/demo.sh                  # 15 s of traffic on tcp/127.0.0.1:7447
#   DEMO_SECONDS=60 scripts/demo.sh  # longer run
#   DEMO_PORT=7450 scripts/demo.sh   # another loopback port (make demo PORT=7450)
#
# Environment: DEMO_PORT (default 7447, the port of config/demo.toml; another
# port runs a copy of that config with only the listen port changed),
# DEMO_SECONDS (default 15), DEMO_PROMPT_AFTER seconds into the simulator run
# before the first question (default 4), DEMO_READY_TIMEOUT seconds to wait
# for the daemon's "reflexd ready" (default 120: covers a slow first
# warm-up), REFLEXD_LOG (daemon log filter). The daemon's log goes to a
# temporary file that is printed when anything fails and removed after a clean
# run.
#
# Idempotent: it only builds what changed (cargo decides; the binaries are
# taken from cargo's own target directory, CARGO_TARGET_DIR included),
# starts its own daemon, and stops exactly those processes (daemon and
# simulator, by pid) on exit, Ctrl-C included. It refuses to start if the
# demo port is already taken rather than touch someone else's process. It
# works from any directory.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

CONFIG=config/demo.toml
DEFAULT_PORT=7447 # the port of [zenoh] listen in $CONFIG
PORT="${DEMO_PORT:-$DEFAULT_PORT}"
SECONDS_TO_RUN="${DEMO_SECONDS:-15}"
READY_TIMEOUT="${DEMO_READY_TIMEOUT:-120}"
PROMPT_AFTER="${DEMO_PROMPT_AFTER:-4}"
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
    echo "demo.sh: ERROR: DEMO_PORT=$PORT: expected a TCP port, 1-65535" >&2
    exit 2
fi

LOGDIR="$(mktemp -d "${TMPDIR:-/tmp}/reflexd-demo.XXXXXX")"
DAEMON_LOG="$LOGDIR/reflexd.log"
DAEMON_PID=""
SIM_PID=""
FILTER_PID=""
KEEP_LOG=0
INTERRUPTED=0

say() { printf '\n==> %s\n' "$*"; }
fail() {
    echo "demo.sh: ERROR: $*" >&2
    KEEP_LOG=1
    exit 1
}
show_daemon_log() {
    if [[ -s "$DAEMON_LOG" ]]; then
        echo "---- reflexd log ($DAEMON_LOG) ----" >&2
        cat "$DAEMON_LOG" >&2
        echo "---- end of reflexd log ----" >&2
    fi
}

# Stops the daemon this script started — by its pid only — and waits for its
# graceful teardown (stop intake, drain, close zenoh). SIGKILL only if the drain
# hangs well past the daemon's own drain timeout.
stop_daemon() {
    [[ -n "$DAEMON_PID" ]] || return 0
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$DAEMON_PID" 2>/dev/null; then
            echo "demo.sh: reflexd (pid $DAEMON_PID) ignored SIGTERM for 15 s; sending SIGKILL" >&2
            kill -KILL "$DAEMON_PID" 2>/dev/null || true
            KEEP_LOG=1
        fi
    fi
    local rc=0
    wait "$DAEMON_PID" 2>/dev/null || rc=$?
    DAEMON_PID=""
    return "$rc"
}

# The simulator runs in the background while the first question is asked. A
# background job of a script ignores the terminal's Ctrl-C, so an interrupted
# demo stops it here, by pid.
stop_sim() {
    if [[ -n "$SIM_PID" ]] && kill -0 "$SIM_PID" 2>/dev/null; then
        kill -TERM "$SIM_PID" 2>/dev/null || true
    fi
    [[ -z "$SIM_PID" ]] || wait "$SIM_PID" 2>/dev/null || true
    [[ -z "$FILTER_PID" ]] || wait "$FILTER_PID" 2>/dev/null || true
    SIM_PID=""
    FILTER_PID=""
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_sim
    stop_daemon || true
    if [[ ($status -ne 0 || $KEEP_LOG -eq 1) && -s "$DAEMON_LOG" ]]; then
        [[ $INTERRUPTED -eq 1 ]] || show_daemon_log
        echo "demo.sh: daemon log kept in $DAEMON_LOG" >&2
    else
        rm -rf "$LOGDIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'INTERRUPTED=1; echo; echo "demo.sh: interrupted" >&2; exit 130' INT TERM

# ---- build ------------------------------------------------------------------
say "building release binaries (cargo build --release -j2 --bins; a no-op when nothing changed)"
cargo build --release -j2 --bins
# Where cargo put them: target/ unless CARGO_TARGET_DIR or a cargo config
# says otherwise (a stale target/release/reflexd must never be run instead).
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
[[ -n "$TARGET_DIR" ]] || fail "cannot read cargo's target directory from cargo metadata"
DAEMON_BIN="$TARGET_DIR/release/reflexd"
SIM_BIN="$TARGET_DIR/release/reflexd-sim"

# ---- preflight --------------------------------------------------------------
[[ -e models/fetched/silero_vad.onnx ]] || fail "models/fetched is missing: run scripts/provision.sh (or make demo)"
[[ -e models/llm/fetched/model.onnx ]] || fail "models/llm/fetched is missing: run scripts/provision.sh (or make demo)"
if command -v ss >/dev/null 2>&1 && ss -ltnH "sport = :$PORT" 2>/dev/null | grep -q .; then
    fail "port $PORT is already in use (another reflexd or zenoh peer?); stop it first or pick another (make demo PORT=7450) — this script only stops the daemon it starts"
fi
if [[ "$PORT" != "$DEFAULT_PORT" ]]; then
    # The same config on another port. Its relative paths are relative to
    # config/, so the copy spells them out from the repository root.
    sed -e "s#\"tcp/127.0.0.1:$DEFAULT_PORT\"#\"tcp/127.0.0.1:$PORT\"#" \
        -e "s#\"\.\./#\"$REPO_ROOT/#g" "$CONFIG" >"$LOGDIR/demo.toml"
    grep -q "\"tcp/127.0.0.1:$PORT\"" "$LOGDIR/demo.toml" \
        || fail "$CONFIG no longer listens on tcp/127.0.0.1:$DEFAULT_PORT; update DEFAULT_PORT in $0"
    CONFIG="$LOGDIR/demo.toml"
fi
# Every tool below (reflexd-sim, reflexd prompt) reaches the daemon here.
export REFLEXD_CONNECT="tcp/127.0.0.1:$PORT"

# ---- start the daemon -------------------------------------------------------
say "starting $DAEMON_BIN run -c $CONFIG on $REFLEXD_CONNECT (log: $DAEMON_LOG)"
"$DAEMON_BIN" run -c "$CONFIG" >"$DAEMON_LOG" 2>&1 &
DAEMON_PID=$!

deadline=$((SECONDS + READY_TIMEOUT))
until grep -q "reflexd ready" "$DAEMON_LOG"; do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        rc=0
        wait "$DAEMON_PID" || rc=$?
        DAEMON_PID=""
        fail "reflexd exited (status $rc) before it was ready; see its log below"
    fi
    ((SECONDS < deadline)) || fail "reflexd (pid $DAEMON_PID) not ready after ${READY_TIMEOUT}s (set DEMO_READY_TIMEOUT to wait longer)"
    sleep 0.2
done
echo "reflexd is ready (pid $DAEMON_PID):"
sed -n 's/^[^ ]* *//p' "$DAEMON_LOG" | grep -E "execution provider|pipeline ready|reflexd ready" | sed 's/^/    /'

# ---- sensors → predictions, and a streamed answer next to them --------------
say "running $SIM_BIN --seconds $SECONDS_TO_RUN; after ${PROMPT_AFTER}s, $DAEMON_BIN prompt asks the chat pipeline"
# The simulator prints everything published under reflexd/**, which includes
# the chat pipeline's JSON commands and token messages (reflexd/llm/...): it
# would report each as an "undecodable prediction". Those lines are dropped
# here; the answer is printed by `reflexd prompt` itself. A FIFO, not a pipe,
# so $SIM_PID is the simulator's own pid (its exit status, and the process
# cleanup stops).
mkfifo "$LOGDIR/sim.out"
grep --line-buffered -v -E '^reflexd/llm/[^ ]*: undecodable prediction' <"$LOGDIR/sim.out" &
FILTER_PID=$!
"$SIM_BIN" --seconds "$SECONDS_TO_RUN" >"$LOGDIR/sim.out" &
SIM_PID=$!

# Asked while the microphone and camera stream: one line per token
# ([llm <id> +<s since the command>] #<seq> "<text>") interleaves readably
# with the simulator's lines; the TTFT/TPOT summary goes to stderr.
sleep "$PROMPT_AFTER"
prompt_status=0
"$DAEMON_BIN" prompt --lines --id demo-1 --max-tokens 64 "What is the capital of France?" || prompt_status=$?

sim_status=0
wait "$SIM_PID" || sim_status=$?
SIM_PID=""
wait "$FILTER_PID" || true # grep exits 1 when it printed nothing
FILTER_PID=""

# ---- a second question, as running text ------------------------------------
if [[ $prompt_status -eq 0 ]]; then
    say "$DAEMON_BIN prompt \"In one sentence, what does a voice activity detector do?\""
    "$DAEMON_BIN" prompt --id demo-2 --max-tokens 96 "In one sentence, what does a voice activity detector do?" || prompt_status=$?
fi

# ---- a robot plan with tool calls --------------------------------------------
# "pick up the red cube" → a move_arm call, constrained to its JSON Schema,
# validated and published on robot/arm/cmd → the script's robot receives it
# and answers → the result fed back → a final answer (docs/tools.md).
plan_status=0
if [[ $prompt_status -eq 0 ]]; then
    say "a plan with tool calls (scripts/plan_demo.py): pick up the red cube"
    PY="${REFLEXD_PYTHON:-$HOME/.cache/reflexd/v1/venv/bin/python}"
    "$PY" scripts/plan_demo.py || plan_status=$?
fi

# ---- stop -------------------------------------------------------------------
# A daemon that died mid-run can still leave the simulator with one answer per
# pipeline; it must not pass as a good demo.
if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
    rc=0
    wait "$DAEMON_PID" || rc=$?
    DAEMON_PID=""
    fail "reflexd exited (status $rc) while the simulator was running; see its log below"
fi
say "stopping reflexd (SIGTERM to pid $DAEMON_PID)"
daemon_status=0
stop_daemon || daemon_status=$?
grep -E "shutting down|drain|stopped" "$DAEMON_LOG" | sed -n 's/^[^ ]* *//p' | sed 's/^/    /' || true

if [[ $sim_status -ne 0 ]]; then
    fail "reflexd-sim exited with status $sim_status"
fi
if [[ $prompt_status -ne 0 ]]; then
    fail "reflexd prompt exited with status $prompt_status (its error is printed above)"
fi
if [[ $plan_status -ne 0 ]]; then
    fail "the tool-call plan (scripts/plan_demo.py) exited with status $plan_status"
fi
if [[ $daemon_status -ne 0 ]]; then
    fail "reflexd exited with status $daemon_status after SIGTERM"
fi
# Provider fallback warnings are expected on a CPU-only runtime, and so is ONNX
# Runtime's note that the converted LLM takes num_logits_to_keep as an input
# (on purpose: the decode loop sets it per call); anything else the daemon
# warned about is worth a look even when the demo passed.
unexpected="$(grep -E " (ERROR|WARN) " "$DAEMON_LOG" | grep -v -e "execution provider" \
    -e "Initializer num_logits_to_keep appears in graph inputs" || true)"
if [[ -n "$unexpected" ]]; then
    echo "reflexd logged warnings:"
    echo "$unexpected" | sed 's/^/    /'
    KEEP_LOG=1
fi
say "demo OK"
