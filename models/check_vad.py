#!/usr/bin/env python3
"""Check the committed test WAVs against the real Silero VAD v6 model.

    ~/.cache/reflexd/v1/venv/bin/python models/check_vad.py [--model PATH] [--speech WAV] [--silence WAV]

Streams each 16 kHz mono s16 WAV through silero_vad.onnx exactly as a streaming
client must (and as reflexd does):
  * chunks of 512 new samples (32 ms); a short last chunk is zero-padded;
  * `input` f32 [1, 576] = the previous chunk's last 64 samples (zeros at start)
    followed by the 512 new samples;
  * `state` f32 [2, 1, 128] carried from `stateN` of the previous call (zeros at start);
  * `sr` i64 scalar 16000;
  * `output` [1, 1] is the speech probability of the chunk.
Prints per-file max/mean probability and the first/last chunk above 0.5, and
exits non-zero unless max(speech) > 0.5 and max(silence) < 0.1.

The model defaults to models/fetched/silero_vad.onnx (link made by
scripts/provision.sh) or $REFLEXD_CACHE_V/models/silero_vad.onnx.
"""
import argparse
import os
import sys
import time
import wave

import numpy as np
import onnxruntime as ort

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000
CHUNK = 512
CONTEXT = 64
SPEECH_MIN = 0.5
SILENCE_MAX = 0.1


def default_model():
    candidates = [os.path.join(REPO, "models", "fetched", "silero_vad.onnx")]
    if os.environ.get("REFLEXD_CACHE_V"):
        candidates.append(os.path.join(os.environ["REFLEXD_CACHE_V"], "models", "silero_vad.onnx"))
    for c in candidates:
        if os.path.isfile(c):
            return c
    return candidates[0]


def read_wav(path):
    with wave.open(path, "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getcomptype()) != (1, 2, SR, "NONE"):
            sys.exit(f"{path}: expected 16 kHz mono 16-bit PCM, got {w.getnchannels()} ch, "
                     f"{8 * w.getsampwidth()} bit, {w.getframerate()} Hz, {w.getcomptype()}")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def vad_probs(session, audio):
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(CONTEXT, np.float32)
    sr = np.array(SR, dtype=np.int64)
    n_chunks = (len(audio) + CHUNK - 1) // CHUNK
    probs = []
    t0 = time.perf_counter()
    for i in range(n_chunks):
        chunk = audio[i * CHUNK:(i + 1) * CHUNK]
        if len(chunk) < CHUNK:
            chunk = np.pad(chunk, (0, CHUNK - len(chunk)))
        x = np.concatenate([context, chunk])[None, :]
        out, state = session.run(["output", "stateN"], {"input": x, "state": state, "sr": sr})
        probs.append(float(out[0, 0]))
        context = x[0, -CONTEXT:]
    per_chunk_ms = (time.perf_counter() - t0) * 1e3 / max(n_chunks, 1)
    return np.array(probs), per_chunk_ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--speech", default=os.path.join(REPO, "tests", "data", "speech_16k.wav"))
    ap.add_argument("--silence", default=os.path.join(REPO, "tests", "data", "silence_16k.wav"))
    args = ap.parse_args()

    if not os.path.isfile(args.model):
        sys.exit(f"check_vad: model not found: {args.model} (run scripts/provision.sh)")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    print(f"onnxruntime {ort.__version__}, model {args.model}")

    results = {}
    for label, path in (("speech", args.speech), ("silence", args.silence)):
        audio = read_wav(path)
        probs, ms = vad_probs(session, audio)
        above = np.nonzero(probs > 0.5)[0]
        span = (f"chunks > 0.5: {len(above)}/{len(probs)}, first at {above[0] * CHUNK / SR:.3f} s, "
                f"last ends {(above[-1] + 1) * CHUNK / SR:.3f} s") if len(above) else f"chunks > 0.5: 0/{len(probs)}"
        print(f"{label:8s} {os.path.relpath(path, REPO)}: {len(audio) / SR:.2f} s, "
              f"max {probs.max():.4f}, mean {probs.mean():.4f}; {span}; {ms:.3f} ms/chunk")
        results[label] = probs.max()

    ok = results["speech"] > SPEECH_MIN and results["silence"] < SILENCE_MAX
    print(f"{'PASS' if ok else 'FAIL'}: max speech {results['speech']:.4f} (need > {SPEECH_MIN}), "
          f"max silence {results['silence']:.4f} (need < {SILENCE_MAX})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
