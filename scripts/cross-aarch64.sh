#!/usr/bin/env bash
# cross-aarch64.sh — build reflexd for Jetson (aarch64) on this x86-64 machine
# without Docker, check the binary, and smoke-test it under qemu.
#
#   scripts/cross-aarch64.sh            # release build (default)
#   PROFILE=dev scripts/cross-aarch64.sh
#
# Route: cargo-zigbuild (PyPI, with the ziglang wheel as its C toolchain)
# targeting aarch64-unknown-linux-gnu.2.31, so the binary needs glibc <= 2.31
# and runs on JetPack 5 (Ubuntu 20.04) and JetPack 6 (22.04). The Debian cross
# gcc would need glibc 2.34+ (JetPack 6 only); `cross` needs Docker and must
# never be run here, and neither must `rustup update`.
#
# Checks, each fatal:
#   1. `file`: an ELF 64-bit ARM aarch64 executable
#   2. `readelf`: the newest GLIBC_x.y symbol version it needs is <= 2.31, and
#      it links only libc/libm/libgcc_s/libdl/libpthread/librt/ld-linux
#   3. `qemu-aarch64-static reflexd --version`
#   4. `reflexd check` on a config with two committed test models, loading the
#      aarch64 ONNX Runtime from PyPI's manylinux aarch64 wheel: real session
#      build + warm-up on emulated arm64. ORT reads /proc/cpuinfo to pick its
#      kernels and crashes on the host's x86 one, so the check runs inside
#      `unshare -m` with an arm64 cpuinfo bind-mounted over it (needs root).
#
# Installs what it lacks (idempotent; cached under ~/.cache/reflexd/v1):
#   rustup target aarch64-unknown-linux-gnu; venv cross-venv/ with pinned
#   cargo-zigbuild + ziglang; apt: qemu-user-static and the arm64 runtime
#   libraries qemu loads (libc6-arm64-cross, libgcc-s1-arm64-cross,
#   libstdc++6-arm64-cross); aarch64/lib/libonnxruntime.so.<ver> from the wheel.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${REFLEXD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reflexd}/v1"
PROFILE="${PROFILE:-release}"
JOBS="${JOBS:-2}"
TARGET=aarch64-unknown-linux-gnu
GLIBC=2.31
ORT_VERSION=1.31.1
PINS=("cargo-zigbuild==0.24.1" "ziglang==0.15.2")
SYSROOT=/usr/aarch64-linux-gnu

die() { echo "cross-aarch64.sh: ERROR: $*" >&2; exit 1; }
step() { echo "==> $*"; }
as_root() {
    if [[ "$(id -u)" == 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root for: $*"; fi
}
apt_install() { # apt_install pkg...: installs the missing ones
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    step "apt-get install ${missing[*]}"
    as_root apt-get install -y -q --no-upgrade "${missing[@]}" >/dev/null \
        || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q --no-upgrade "${missing[@]}" >/dev/null; } \
        || die "apt-get install ${missing[*]} failed"
}

cd "$REPO"

# ---- toolchain pieces -------------------------------------------------------
if ! rustup target list --installed | grep -qx "$TARGET"; then
    step "rustup target add $TARGET"
    rustup target add "$TARGET"
fi
VENV="$CACHE/cross-venv"
STAMP="$VENV/.pins"
if [[ ! -x "$VENV/bin/cargo-zigbuild" || "$(cat "$STAMP" 2>/dev/null)" != "${PINS[*]}" ]]; then
    step "venv $VENV: ${PINS[*]}"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "${PINS[@]}"
    echo "${PINS[*]}" >"$STAMP"
fi
apt_install qemu-user-static libc6-arm64-cross libgcc-s1-arm64-cross libstdc++6-arm64-cross file binutils

ORT_DIR="$CACHE/aarch64/lib"
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
if [[ ! -f "$ORT_LIB" ]]; then
    step "aarch64 ONNX Runtime $ORT_VERSION from its PyPI wheel"
    WHEELS="$CACHE/aarch64/wheels"
    mkdir -p "$WHEELS" "$ORT_DIR"
    "$VENV/bin/pip" download -q --no-deps --only-binary=:all: --implementation cp \
        --python-version 3.11 --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
        -d "$WHEELS" "onnxruntime==$ORT_VERSION"
    whl="$(ls "$WHEELS"/onnxruntime-"$ORT_VERSION"-*aarch64.whl | head -n1)"
    "$VENV/bin/python" - "$whl" "$ORT_LIB" <<'EOF'
import shutil, sys, zipfile
whl, dest = sys.argv[1:]
name = "onnxruntime/capi/" + dest.rsplit("/", 1)[1]
with zipfile.ZipFile(whl) as z, z.open(name) as src, open(dest + ".tmp", "wb") as out:
    shutil.copyfileobj(src, out)
shutil.move(dest + ".tmp", dest)
EOF
fi

# ---- build --------------------------------------------------------------------
step "cargo zigbuild --profile $PROFILE --target $TARGET.$GLIBC"
PATH="$VENV/bin:$PATH" cargo zigbuild -j"$JOBS" --profile "$PROFILE" --target "$TARGET.$GLIBC" --bins
outdir=$([[ "$PROFILE" == dev ]] && echo debug || echo "$PROFILE")
BIN="$REPO/target/$TARGET/$outdir/reflexd"
[[ -x "$BIN" ]] || die "no binary at $BIN"

# ---- static checks --------------------------------------------------------------
step "file"
desc="$(file -b "$BIN")"
echo "    $desc"
[[ "$desc" == *"ELF 64-bit"*"ARM aarch64"* ]] || die "not an aarch64 ELF executable"
step "readelf: glibc symbol versions and needed libraries"
newest="$(readelf -V --wide "$BIN" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)"
echo "    newest GLIBC symbol version needed: $newest (limit $GLIBC)"
[[ "$(printf '%s\n%s\n' "$newest" "$GLIBC" | sort -V | tail -n1)" == "$GLIBC" ]] \
    || die "needs GLIBC_$newest > $GLIBC: would not run on JetPack 5"
needed="$(readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
echo "    NEEDED: $needed"
for lib in $needed; do
    case "$lib" in
        libc.so.6|libm.so.6|libgcc_s.so.1|libdl.so.2|libpthread.so.0|librt.so.1|ld-linux-aarch64.so.1) ;;
        *) die "unexpected shared library dependency $lib" ;;
    esac
done

# ---- run under qemu -----------------------------------------------------------------
QEMU=(qemu-aarch64-static -L "$SYSROOT")
step "qemu: reflexd --version"
version="$("${QEMU[@]}" "$BIN" --version)"
echo "    $version"
[[ "$version" == "reflexd $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)" ]] \
    || die "unexpected --version output: $version"

step "qemu: reflexd check (aarch64 ONNX Runtime $ORT_VERSION, arm64 cpuinfo)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/reflexd.toml" <<EOF
[runtime]
onnxruntime = "$ORT_LIB"
[[pipeline]]
name = "affine"
model = "$REPO/models/test/affine.onnx"
input = "smoke/affine/*"
output = "smoke/out/affine"
[[pipeline]]
name = "acc"
model = "$REPO/models/test/acc.onnx"
input = "smoke/acc/*"
output = "smoke/out/acc"
overflow = "latest"
state = [{ input = "state", output = "state_out" }]
EOF
# Four Cortex-A78AE cores, as /proc/cpuinfo shows them on an Orin.
for i in 0 1 2 3; do
    printf 'processor\t: %d\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n' "$i"
done >"$WORK/cpuinfo"
as_root unshare -m sh -c 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"' sh \
    "$WORK/cpuinfo" "${QEMU[@]}" "$BIN" check -c "$WORK/reflexd.toml" >"$WORK/check.out" 2>"$WORK/check.err" \
    || { cat "$WORK/check.err" >&2; die "reflexd check failed under qemu"; }
sed 's/^/    /' "$WORK/check.out"
grep -q "OK: 2 pipeline(s) loaded and warmed up" "$WORK/check.out" || die "check did not report both pipelines warm"

echo "cross-aarch64.sh: OK: $BIN ($(du -h "$BIN" | cut -f1), glibc <= $GLIBC) runs --version and check under qemu"
