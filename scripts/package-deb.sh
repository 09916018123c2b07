#!/usr/bin/env bash
# package-deb.sh — build the reflexd .deb with cargo-deb from [package.metadata.deb]
# in Cargo.toml, then check the package it made.
#
#   scripts/package-deb.sh amd64              # cargo build --release, package, verify
#   scripts/package-deb.sh arm64              # package the aarch64 build of scripts/cross-aarch64.sh, verify
#   scripts/package-deb.sh verify DEB         # only the checks, on any reflexd .deb
#   scripts/package-deb.sh config ARCH FILE   # only write the /etc/reflexd/reflexd.toml of ARCH
#
# Output: target/deb/reflexd_<version>_<arch>.deb (DEB_OUT overrides the
# directory); its path is the last line printed. `make deb` runs the amd64
# form; docs/deploy-jetson.md the arm64 one.
#
# What cargo-deb does (Cargo.toml, [package.metadata.deb]): the control file,
# both binaries, the unit and the sysusers.d entry (found by name in
# systemd/), the tmpfiles.d entry, docs and examples, /etc/reflexd/reflexd.toml
# as a conffile, and maintainer scripts generated the debhelper way
# (systemd-sysusers, systemd-tmpfiles, deb-systemd-helper: enabled but not
# started on install, try-restart on upgrade, stopped and disabled on
# removal). Variants `arm64` and `amd64` differ only in the config.
#
# What stays here, because cargo-deb does not do it:
#   - install cargo-deb itself (pinned, into the reflexd cache; minutes, once;
#     never part of `make test`);
#   - the amd64 config: cargo-deb copies files verbatim, and the shipped
#     config is config/jetson.toml with the ONNX Runtime path of the
#     architecture (x86_64-linux-gnu instead of aarch64-linux-gnu);
#   - the arm64 binary comes from scripts/cross-aarch64.sh (cargo-zigbuild,
#     glibc 2.31 for JetPack 5 and 6): cargo-deb's own cross build would link
#     against this machine's newer glibc, so it packages with --no-build;
#   - the checks after packaging (dpkg-deb -I/-c, control scripts, and
#     dpkg -x into a scratch root, running the binaries when the package is
#     for this machine's architecture).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${REFLEXD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reflexd}/v1"
CARGO_DEB_VERSION=3.8.0
CARGO_DEB_ROOT="$CACHE/cargo-deb-$CARGO_DEB_VERSION"
CARGO_DEB="$CARGO_DEB_ROOT/bin/cargo-deb"

die() { echo "package-deb.sh: ERROR: $*" >&2; exit 1; }
usage() { sed -n '4,7p' "$0" | sed 's/^#  */usage: /' >&2; exit 2; }

# The architecture's /etc/reflexd/reflexd.toml: the Jetson example, with the
# ONNX Runtime library of that architecture's multiarch directory.
write_config() { # write_config ARCH FILE
    local multiarch
    case "$1" in
        arm64) multiarch=aarch64-linux-gnu ;;
        amd64) multiarch=x86_64-linux-gnu ;;
        *) die "unknown architecture $1 (arm64 or amd64)" ;;
    esac
    mkdir -p "$(dirname "$2")"
    sed "s#/usr/lib/aarch64-linux-gnu/libonnxruntime.so#/usr/lib/$multiarch/libonnxruntime.so#" \
        "$REPO/config/jetson.toml" >"$2"
    grep -q "/usr/lib/$multiarch/libonnxruntime.so" "$2" \
        || die "config/jetson.toml no longer names /usr/lib/aarch64-linux-gnu/libonnxruntime.so; update $0"
}

ensure_cargo_deb() {
    if [[ -x "$CARGO_DEB" ]] && "$CARGO_DEB" --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
        return
    fi
    echo "package-deb.sh: installing cargo-deb $CARGO_DEB_VERSION into $CARGO_DEB_ROOT (once, a few minutes) ..." >&2
    mkdir -p "$CACHE/logs"
    # Its own scratch target directory, removed afterwards: cargo-deb's
    # dependencies have no business in the project's target directory.
    local scratch
    scratch="$(mktemp -d "${TMPDIR:-/tmp}/cargo-deb-build.XXXXXX")"
    CARGO_TARGET_DIR="$scratch" nice -n 10 cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" \
        --root "$CARGO_DEB_ROOT" -j "${JOBS:-2}" >"$CACHE/logs/cargo-deb-install.log" 2>&1 \
        || { rm -rf "$scratch"; tail -n 15 "$CACHE/logs/cargo-deb-install.log" >&2; die "cargo install cargo-deb failed (log: $CACHE/logs/cargo-deb-install.log)"; }
    rm -rf "$scratch"
}

target_dir() {
    cargo metadata --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml" \
        | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

# Checks a built package; prints nothing but problems (and dies on the first).
verify() { # verify DEB
    local deb="$1" field arch list ctrl root f
    [[ -f "$deb" ]] || die "no package at $deb"
    field() { dpkg-deb -f "$deb" "$1"; }
    [[ "$(field Package)" == reflexd ]] || die "$deb: Package is $(field Package), not reflexd"
    arch="$(field Architecture)"
    [[ "$arch" == amd64 || "$arch" == arm64 ]] || die "$deb: Architecture $arch"
    [[ "$(field Version)" == "$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)" ]] \
        || die "$deb: Version $(field Version) is not Cargo.toml's"
    field Depends | grep -q systemd || die "$deb: Depends lacks systemd: $(field Depends)"
    list="$(dpkg-deb -c "$deb")"
    for f in "-rwxr-xr-x ./usr/bin/reflexd" "-rwxr-xr-x ./usr/bin/reflexd-sim" \
        "-rw-r--r-- ./usr/lib/systemd/system/reflexd.service" \
        "-rw-r--r-- ./usr/lib/sysusers.d/reflexd.conf" \
        "-rw-r--r-- ./usr/lib/tmpfiles.d/reflexd.conf" \
        "-rw-r--r-- ./etc/reflexd/reflexd.toml" \
        "-rw-r--r-- ./usr/share/doc/reflexd/deploy-jetson.md" \
        "-rw-r--r-- ./usr/share/doc/reflexd/copyright"; do
        awk -v mode="${f%% *}" -v path="${f#* }" \
            '$1 == mode && ($2 == "root/root" || $2 == "0/0") && $NF == path { found = 1 } END { exit !found }' <<<"$list" \
            || die "$deb: ${f#* } (${f%% *}, root-owned) missing:"$'\n'"$list"
    done
    ctrl="$(mktemp -d)"
    root="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$ctrl' '$root'" RETURN
    dpkg-deb -e "$deb" "$ctrl"
    [[ "$(cat "$ctrl/conffiles")" == /etc/reflexd/reflexd.toml ]] \
        || die "$deb: conffiles is not exactly /etc/reflexd/reflexd.toml: $(cat "$ctrl/conffiles")"
    grep -q "systemd-sysusers.*reflexd.conf" "$ctrl/postinst" || die "$deb: postinst does not run systemd-sysusers"
    grep -q "systemd-tmpfiles --create reflexd.conf" "$ctrl/postinst" || die "$deb: postinst does not run systemd-tmpfiles"
    grep -q "deb-systemd-helper enable reflexd.service" "$ctrl/postinst" || die "$deb: postinst does not enable the unit"
    grep -q "try-restart" "$ctrl/postinst" || die "$deb: an upgrade does not restart a running daemon"
    ! grep -q "deb-systemd-invoke start" "$ctrl/postinst" || die "$deb: postinst starts the unit (models come first)"
    grep -q "deb-systemd-invoke stop" "$ctrl/prerm" || die "$deb: prerm does not stop the unit"
    # A scratch install: the files land where the unit and the docs say.
    dpkg -x "$deb" "$root"
    local multiarch=aarch64-linux-gnu
    [[ "$arch" == amd64 ]] && multiarch=x86_64-linux-gnu
    grep -q "^onnxruntime = \"/usr/lib/$multiarch/libonnxruntime.so\"" "$root/etc/reflexd/reflexd.toml" \
        || die "$deb: the config does not name /usr/lib/$multiarch/libonnxruntime.so"
    grep -q "^ExecStart=/usr/bin/reflexd run -c /etc/reflexd/reflexd.toml" "$root/usr/lib/systemd/system/reflexd.service" \
        || die "$deb: the unit does not run /usr/bin/reflexd with /etc/reflexd/reflexd.toml"
    if [[ "$arch" == "$(dpkg --print-architecture)" ]]; then
        "$root/usr/bin/reflexd" --version >/dev/null || die "$deb: usr/bin/reflexd --version failed"
        "$root/usr/bin/reflexd-sim" --help >/dev/null || die "$deb: usr/bin/reflexd-sim --help failed"
    fi
}

cmd="${1:-}"
case "$cmd" in
    verify) [[ $# -eq 2 ]] || usage; verify "$2"; echo "verified: $2"; exit 0 ;;
    config) [[ $# -eq 3 ]] || usage; write_config "$2" "$3"; exit 0 ;;
    amd64 | arm64) [[ $# -eq 1 ]] || usage ;;
    *) usage ;;
esac
ARCH="$cmd"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (Debian/Ubuntu's dpkg package)"
OUT="${DEB_OUT:-$REPO/target/deb}"
TARGET_DIR="$(target_dir)"
[[ -n "$TARGET_DIR" ]] || die "cannot read cargo's target directory from cargo metadata"
ensure_cargo_deb

cd "$REPO"
args=(--no-build --no-strip --variant "$ARCH" --output "$OUT/")
if [[ "$ARCH" == amd64 ]]; then
    nice -n 10 cargo build --release -j "${JOBS:-2}" --bins
    write_config amd64 "$TARGET_DIR/release/reflexd-amd64.toml"
else
    bin="$TARGET_DIR/aarch64-unknown-linux-gnu/release/reflexd"
    [[ -x "$bin" && -x "${bin}-sim" ]] \
        || die "no aarch64 build at $bin(-sim): run scripts/cross-aarch64.sh first"
    args+=(--target aarch64-unknown-linux-gnu)
fi
mkdir -p "$OUT"
# cargo-deb prints the package path on its last line.
deb="$(PATH="$CARGO_DEB_ROOT/bin:$PATH" cargo deb "${args[@]}" | tail -n 1)"
[[ -f "$deb" ]] || die "cargo-deb did not report a package (got: $deb)"
verify "$deb"
echo "$deb"
