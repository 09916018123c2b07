#!/usr/bin/env bash
# llama-cpp.sh — build llama.cpp's command-line tools on demand: the LLM anchor reflexd is
# measured against (speed: llama-bench; numerics: llama-perplexity; greedy text: llama-simple).
#
#   scripts/llama-cpp.sh              # build if missing (~10 min on 2 cores, niced), print the bin dir
#   scripts/llama-cpp.sh --print-bin  # print the bin dir if built, exit 1 otherwise (never builds)
#
# Source: the llama.cpp vendored in the `llama-cpp-python` sdist from PyPI (the registry is the
# only reachable source here), fetched with `pip download --no-deps --no-binary llama-cpp-python`
# (not `--no-binary :all:`, which would rebuild cmake from source too). Built CPU-only with
# GGML_NATIVE (this machine's instruction set, as a user would build it), no curl, no server.
# cmake comes from PATH, else from the PyPI `cmake` wheel in a private venv beside the build.
#
# Cache: ${REFLEXD_CACHE:-~/.cache/reflexd}/v1/llama.cpp/<version>/{bin/,build.log,.built}
#   keyed by the llama-cpp-python version (LLAMA_CPP_PYTHON_VERSION overrides the pin).
# Not part of `make test`: benchmarks and models/llm/numerics.py call it when they need it.
# Environment: JOBS (default 2), NICE (default 19: the machine is shared).
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CMAKE_PIN="cmake==4.4.4"
TARGETS=(llama-bench llama-perplexity llama-simple llama-tokenize)
CACHE="${REFLEXD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reflexd}/v1"
ROOT="$CACHE/llama.cpp/$VERSION"
BIN="$ROOT/bin"
STAMP="$ROOT/.built"
STAMP_TEXT="llama-cpp-python==$VERSION targets ${TARGETS[*]}"
JOBS="${JOBS:-2}"
NICE="${NICE:-19}"

die() { echo "llama-cpp.sh: ERROR: $*" >&2; exit 1; }
built() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" ]] || return 1
    local t
    for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
}

if [[ "${1:-}" == "--print-bin" ]]; then
    built && { echo "$BIN"; exit 0; }
    exit 1
fi
[[ $# -eq 0 ]] || die "usage: $0 [--print-bin]"
if built; then echo "$BIN"; exit 0; fi

mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9
if built; then echo "$BIN"; exit 0; fi   # another run finished it while we waited

PY="${REFLEXD_BASE_PYTHON:-python3}"
command -v "$PY" >/dev/null || die "no $PY (needed for pip download)"
LOG="$ROOT/build.log"
: >"$LOG"
echo "llama-cpp.sh: building llama.cpp from llama-cpp-python==$VERSION into $ROOT (log: $LOG)" >&2

# 1. sdist -> src/
SDIST_DIR="$ROOT/sdist"
mkdir -p "$SDIST_DIR"
sdist="$(compgen -G "$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz" || true)"
if [[ -z "$sdist" ]]; then
    "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
        -d "$SDIST_DIR" "llama-cpp-python==$VERSION" >>"$LOG" 2>&1 || die "pip download failed (see $LOG)"
    sdist="$(compgen -G "$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz" || true)"
    [[ -n "$sdist" ]] || die "pip download left no llama_cpp_python-$VERSION.tar.gz in $SDIST_DIR"
fi
SRC="$ROOT/src"
if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
    rm -rf "$SRC" "$ROOT/unpack"
    mkdir -p "$ROOT/unpack"
    tar -xzf "$sdist" -C "$ROOT/unpack"
    vendored="$ROOT/unpack/llama_cpp_python-$VERSION/vendor/llama.cpp"
    [[ -f "$vendored/CMakeLists.txt" ]] || die "no vendor/llama.cpp in $sdist"
    mv "$vendored" "$SRC"
    rm -rf "$ROOT/unpack"
fi

# 2. cmake
CMAKE="$(command -v cmake || true)"
if [[ -z "$CMAKE" ]]; then
    TOOLS="$CACHE/llama.cpp/tools-venv"
    if [[ ! -x "$TOOLS/bin/cmake" ]]; then
        "$PY" -m venv "$TOOLS" >>"$LOG" 2>&1 || die "cannot create $TOOLS"
        "$TOOLS/bin/python" -m pip install --disable-pip-version-check --only-binary=:all: "$CMAKE_PIN" \
            >>"$LOG" 2>&1 || die "pip install $CMAKE_PIN failed (see $LOG)"
    fi
    CMAKE="$TOOLS/bin/cmake"
fi

# 3. configure + build (niced: ~10 min on 2 cores)
BUILD="$ROOT/build"
t0=$(date +%s)
nice -n "$NICE" "$CMAKE" -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF \
    >>"$LOG" 2>&1 || { tail -n 20 "$LOG" >&2; die "cmake configure failed (see $LOG)"; }
nice -n "$NICE" "$CMAKE" --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" >>"$LOG" 2>&1 \
    || { tail -n 20 "$LOG" >&2; die "build failed (see $LOG)"; }
mkdir -p "$BIN"
for t in "${TARGETS[@]}"; do
    [[ -x "$BUILD/bin/$t" ]] || die "$t was not built (see $LOG)"
    cp "$BUILD/bin/$t" "$BIN/$t"
done
printf '%s' "$STAMP_TEXT" >"$STAMP"
echo "llama-cpp.sh: built ${TARGETS[*]} in $(( $(date +%s) - t0 )) s" >&2
echo "$BIN"
