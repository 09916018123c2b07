"""Baseline for `benches/latency.rs`: a hand-rolled Python zenoh + ONNX Runtime node.

It does what a robotics engineer would write in an afternoon instead of
deploying reflexd: one zenoh peer session, a callback subscriber per model,
inference inside the callback, the result published straight back. Both models
share one lock, so the node is effectively single-threaded: that is the point
of comparison for the priority-isolation part of the benchmark, where a long
OCR run blocks the next VAD frame.

Protocol with the benchmark (line-oriented, stdout):
  {"ready": true, "bare": {...}}   once the session is open and the bare
                                   session.run loop has been measured
  {"done": true, ...}              counters, after stdin reaches EOF
The benchmark owns the process: closing our stdin is the only stop signal.

Wire formats mirror reflexd's so the same client measures both:
  VAD request : raw f32 [1, 512] on <vad_in>/<stream>, attachment "seq=N"
  VAD reply   : raw f32 probability on <vad_out>/<stream>, same attachment
  OCR request : safetensors with tensor `x` f32 [1, 3, H, W] on <ocr_in>
  OCR reply   : raw f32 probability map on <ocr_out>
"""

import argparse
import json
import struct
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import zenoh

CONTEXT = 64
FRAME = 512
SAMPLE_RATE = 16000


def session_options():
    # Same threading as reflexd's default runtime config (intra_op_threads = 1,
    # no spinning), so the comparison is about the node, not the thread pool.
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class VadStream:
    """Per-stream carried state and context, as reflexd keeps per stream."""

    def __init__(self):
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)


def vad_step(sess, sr, st, frame):
    x = np.concatenate([st.context, frame])[None, :]
    out, state = sess.run(None, {"input": x, "state": st.state, "sr": sr})
    st.state = state
    st.context = frame[-CONTEXT:]
    return out


def percentiles(xs):
    xs = sorted(xs)
    n = len(xs)

    def q(p):
        return xs[min(n - 1, max(0, int(np.ceil(p * n)) - 1))]

    return {"n": n, "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99),
            "p999_us": q(0.999), "max_us": xs[-1]}


def bare_vad(sess, sr, runs, warmup):
    rng = np.random.default_rng(7)
    frames = (0.05 * rng.standard_normal((16, FRAME))).astype(np.float32)
    st = VadStream()
    for i in range(warmup):
        vad_step(sess, sr, st, frames[i % 16])
    times = []
    for i in range(runs):
        t0 = time.perf_counter_ns()
        vad_step(sess, sr, st, frames[i % 16])
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    return percentiles(times)


def parse_safetensors(b):
    (n,) = struct.unpack_from("<Q", b, 0)
    header = json.loads(b[8:8 + n])
    x = header["x"]
    if x["dtype"] != "F32":
        raise ValueError(f"x is {x['dtype']}, expected F32")
    start, end = x["data_offsets"]
    return np.frombuffer(b, dtype=np.float32, count=(end - start) // 4,
                         offset=8 + n + start).reshape(x["shape"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True, help="e.g. tcp/127.0.0.1:7447")
    ap.add_argument("--vad", required=True)
    ap.add_argument("--ocr")
    ap.add_argument("--vad-in", default="bench/py/vad/in")
    ap.add_argument("--vad-out", default="bench/py/vad/out")
    ap.add_argument("--ocr-in", default="bench/py/ocr/in")
    ap.add_argument("--ocr-out", default="bench/py/ocr/out")
    ap.add_argument("--bare-runs", type=int, default=2000)
    ap.add_argument("--bare-warmup", type=int, default=200)
    args = ap.parse_args()

    providers = ["CPUExecutionProvider"]
    vad = ort.InferenceSession(args.vad, session_options(), providers=providers)
    ocr = (ort.InferenceSession(args.ocr, session_options(), providers=providers)
           if args.ocr else None)
    sr = np.array(SAMPLE_RATE, dtype=np.int64)
    bare = bare_vad(vad, sr, args.bare_runs, args.bare_warmup)
    if ocr is not None:
        ocr.run(None, {"x": np.zeros((1, 3, 160, 640), dtype=np.float32)})

    # Loopback only; no scouting, no gossip: the benchmark connects to us.
    conf = zenoh.Config.from_json5(json.dumps({
        "mode": "peer",
        "listen": {"endpoints": [args.listen]},
        "connect": {"endpoints": []},
        "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}},
    }))
    session = zenoh.open(conf)
    qos = dict(congestion_control=zenoh.CongestionControl.DROP,
               priority=zenoh.Priority.DATA_HIGH, express=True)
    lock = threading.Lock()
    streams = {}
    publishers = {}
    counts = {"vad": 0, "ocr": 0, "errors": 0}
    prefix = args.vad_in + "/"

    def publisher(key):
        p = publishers.get(key)
        if p is None:
            p = publishers[key] = session.declare_publisher(key, **qos)
        return p

    def on_vad(sample):
        try:
            key = str(sample.key_expr)
            stream = key[len(prefix):] if key.startswith(prefix) else key
            frame = np.frombuffer(sample.payload.to_bytes(), dtype=np.float32)
            with lock:
                st = streams.setdefault(stream, VadStream())
                out = vad_step(vad, sr, st, frame)
                counts["vad"] += 1
            publisher(f"{args.vad_out}/{stream}").put(
                out.astype(np.float32).tobytes(), attachment=sample.attachment)
        except Exception as e:  # a bad frame must not kill the node
            counts["errors"] += 1
            print(f"py_node: vad: {e}", file=sys.stderr)

    def on_ocr(sample):
        try:
            x = parse_safetensors(sample.payload.to_bytes())
            with lock:
                (prob,) = ocr.run(None, {"x": x})
                counts["ocr"] += 1
            publisher(args.ocr_out).put(prob.tobytes(), attachment=sample.attachment)
        except Exception as e:
            counts["errors"] += 1
            print(f"py_node: ocr: {e}", file=sys.stderr)

    subs = [session.declare_subscriber(prefix + "*", on_vad)]
    if ocr is not None:
        subs.append(session.declare_subscriber(args.ocr_in, on_ocr))

    print(json.dumps({"ready": True, "bare": bare, "onnxruntime": ort.__version__}),
          flush=True)
    sys.stdin.read()
    for s in subs:
        s.undeclare()
    session.close()
    print(json.dumps({"done": True, **counts}), flush=True)


if __name__ == "__main__":
    main()
