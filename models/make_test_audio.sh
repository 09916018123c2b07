#!/usr/bin/env bash
# make_test_audio.sh — regenerate the committed test WAVs in tests/data/.
#
#   tests/data/speech_16k.wav   "Hello robot, please stop at the red line." spoken by
#                               espeak-ng (en-us, 175 wpm), 0.2 s of silence prepended
#                               (espeak itself ends with ~0.3 s of near-silence),
#                               peak-normalised to -3 dBFS
#   tests/data/silence_16k.wav  1.0 s of digital silence (all samples 0)
#
# Both: 16 kHz, mono, signed 16-bit little-endian PCM, plain 44-byte RIFF header.
# The WAVs are committed, so tests never need espeak-ng or sox; run this only to
# change them. Needs Debian/Ubuntu packages espeak-ng and sox (installed with
# apt-get if missing, via sudo when not root). Output is deterministic for a
# given espeak-ng/sox version (made with espeak-ng 1.51, SoX 14.4.2; sox dither
# disabled with -D).
#
# Check the result with the Silero VAD model (after scripts/provision.sh):
#   ~/.cache/reflexd/v1/venv/bin/python models/check_vad.py
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO_ROOT/tests/data"
TEXT="Hello robot, please stop at the red line."

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
if [[ ${#missing[@]} -gt 0 ]]; then
    command -v apt-get >/dev/null 2>&1 || { echo "make_test_audio.sh: ERROR: install ${missing[*]}" >&2; exit 1; }
    SUDO=""
    [[ "$(id -u)" == 0 ]] || SUDO=sudo
    echo "make_test_audio.sh: installing ${missing[*]} with apt-get ..."
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

mkdir -p "$OUT"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# espeak-ng writes 22050 Hz mono 16-bit; resample to 16 kHz with SoX's high-quality resampler.
espeak-ng -v en-us -s 175 -w "$tmp/raw.wav" "$TEXT"
sox -D -V1 "$tmp/raw.wav" -r 16000 -c 1 -b 16 -e signed-integer "$tmp/speech.wav" \
    rate -h gain -n -3 pad 0.2 0
sox -D -V1 -n -r 16000 -c 1 -b 16 -e signed-integer "$tmp/silence.wav" trim 0 1.0

mv -f "$tmp/speech.wav" "$OUT/speech_16k.wav"
mv -f "$tmp/silence.wav" "$OUT/silence_16k.wav"

for f in speech_16k.wav silence_16k.wav; do
    printf '%-18s %6d bytes  %s s\n' "$f" "$(stat -c %s "$OUT/$f")" "$(soxi -D "$OUT/$f")"
done
