#!/usr/bin/env bash
# package-deb.sh — build the reflexd .deb with dpkg-deb (no cargo-deb needed).
#
#   scripts/package-deb.sh arm64                # target/aarch64-unknown-linux-gnu/release/reflexd
#   scripts/package-deb.sh amd64                # target/release/reflexd
#   scripts/package-deb.sh ARCH BINARY [OUTDIR] # any prebuilt binary
#
# Build the binary first: `cargo build --release` (amd64) or
# scripts/cross-aarch64.sh (arm64, glibc 2.31: JetPack 5 and 6).
# Prints the path of the .deb; list it with `dpkg-deb -c`. DEB_COMPRESS=none
# skips xz (for tests).
#
# Contents:
#   /usr/bin/reflexd
#   /usr/lib/systemd/system/reflexd.service   systemd/reflexd.service
#   /usr/lib/sysusers.d/reflexd.conf          systemd/reflexd.sysusers
#   /usr/lib/tmpfiles.d/reflexd.conf          systemd/reflexd.tmpfiles
#   /etc/reflexd/reflexd.toml                 config/jetson.toml (conffile; ORT path
#                                             adjusted to the architecture)
#   /usr/share/doc/reflexd/                   deploy docs, example configs, copyright
# Maintainer scripts create the user and directories and reload systemd; the
# service is enabled but NOT started on install: models and the ONNX Runtime
# build must be in place first (docs/deploy-jetson.md).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCH="${1:-}"
case "$ARCH" in
    arm64) default_bin="$REPO/target/aarch64-unknown-linux-gnu/release/reflexd"; multiarch=aarch64-linux-gnu ;;
    amd64) default_bin="$REPO/target/release/reflexd"; multiarch=x86_64-linux-gnu ;;
    *) echo "usage: $0 arm64|amd64 [binary] [outdir]" >&2; exit 2 ;;
esac
BIN="${2:-$default_bin}"
OUT="${3:-$REPO/target/deb}"
[[ -x "$BIN" ]] || { echo "package-deb.sh: no executable at $BIN (build it first)" >&2; exit 1; }
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)"

ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
chmod 0755 "$ROOT"
install -Dm0755 "$BIN" "$ROOT/usr/bin/reflexd"
install -Dm0644 "$REPO/systemd/reflexd.service" "$ROOT/usr/lib/systemd/system/reflexd.service"
install -Dm0644 "$REPO/systemd/reflexd.sysusers" "$ROOT/usr/lib/sysusers.d/reflexd.conf"
install -Dm0644 "$REPO/systemd/reflexd.tmpfiles" "$ROOT/usr/lib/tmpfiles.d/reflexd.conf"
install -d -m0755 "$ROOT/etc/reflexd"
sed "s#/usr/lib/aarch64-linux-gnu/libonnxruntime.so#/usr/lib/$multiarch/libonnxruntime.so#" \
    "$REPO/config/jetson.toml" >"$ROOT/etc/reflexd/reflexd.toml"
chmod 0644 "$ROOT/etc/reflexd/reflexd.toml"
DOC="$ROOT/usr/share/doc/reflexd"
install -Dm0644 "$REPO/docs/deploy.md" "$DOC/deploy.md"
install -Dm0644 "$REPO/docs/deploy-jetson.md" "$DOC/deploy-jetson.md"
install -Dm0644 "$REPO/docs/protocol.md" "$DOC/protocol.md"
install -Dm0644 "$REPO/config/demo.toml" "$DOC/examples/demo.toml"
install -Dm0644 "$REPO/config/jetson.toml" "$DOC/examples/jetson.toml"
cat >"$DOC/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: reflexd
License: Apache-2.0

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF

mkdir -p "$ROOT/DEBIAN"
echo "/etc/reflexd/reflexd.toml" >"$ROOT/DEBIAN/conffiles"
cat >"$ROOT/DEBIAN/control" <<EOF
Package: reflexd
Version: $VERSION
Architecture: $ARCH
Maintainer: reflexd developers <reflexd@localhost>
Section: misc
Priority: optional
Depends: libc6 (>= 2.31), systemd
Installed-Size: $(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
Description: real-time ONNX Runtime inference daemon for robots (zenoh in/out)
 Listens on zenoh topics, runs ONNX models through ONNX Runtime (TensorRT,
 CUDA or CPU, loaded at run time) under per-request latency budgets and
 fixed priorities, and publishes predictions and streamed LLM tokens back on
 zenoh. Runs as a systemd notify service with a watchdog.
EOF
cat >"$ROOT/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    systemd-sysusers reflexd.conf || true
    systemd-tmpfiles --create reflexd.conf || true
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        # Enabled, not started: models and ONNX Runtime come first.
        systemctl enable reflexd.service || true
        # An upgrade restarts a running daemon on the new binary.
        systemctl try-restart reflexd.service || true
    fi
fi
EOF
cat >"$ROOT/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl disable --now reflexd.service || true
fi
EOF
cat >"$ROOT/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
EOF
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"

mkdir -p "$OUT"
DEB="$OUT/reflexd_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-xz}" --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
