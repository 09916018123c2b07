#!/usr/bin/env python3
"""Generate the small ONNX models used by reflexd's tests into models/test/.

Run with the provisioned venv (scripts/provision.sh):

    ~/.cache/reflexd/v1/venv/bin/python models/make_test_models.py

Needs only `onnx` and `numpy` to build; `onnxruntime` (if importable) is then
used to load and run every model and check its outputs. The output is
deterministic: re-running rewrites byte-identical files (sha256 printed).
All models: opset 17, IR version 8 (accepted by onnxruntime >= 1.13, including
the ONNX Runtime builds shipped with JetPack 5/6).

Models
  affine.onnx   x f32 [N,4] (dynamic "N")              -> y = 2*x + 1
  acc.onnx      x f32 [1,4], state f32 [1,4]           -> y = x + state, state_out = x + state
  mixed.onnx    a f32 [1,3], b i64 [1,3]               -> s f32 [1,3] = a + Cast<float>(b)
  slow.onnx     x f32 [1,256]                          -> y f32 [1,256], ~4-5 ms on one thread (quiet VM)
  context.onnx  input f32 [1,8]                        -> out f32 [1,8] = input (Identity)
  faulty.onnx   x f32 [N,4] (dynamic "N")              -> y = x for N <= 2; N >= 3 fails at run time
                                                          (Gather index out of range): a model fault on
                                                          a chosen input shape, for fault-injection tests
  stall.onnx    n f32 [1]                              -> y f32 [1,64]: n iterations of t = tanh(t @ W),
                                                          a run as long as the caller asks (watchdog tests)
  detect.onnx   images f32 [1,3,64,64]                 -> v8 f32 [1,7,64], v5 f32 [1,64,8]: a YOLO-shaped
                                                          "detector" whose output is computable from its input:
                                                          one box per 8x8 cell (cx, cy, w=h=8), class k's score
                                                          = mean of channel k over the cell (classes red, green,
                                                          blue for RGB input); v5 adds objectness 1 (tests of the
                                                          answer stage: decoding, NMS, letterbox un-mapping)
  classify.onnx images f32 [N,3,16,16] (dynamic "N")   -> scores f32 [N,3] = mean of each input channel: a
                                                          "classifier" of the dominant colour (red, green, blue
                                                          for RGB input), the second stage of a detect → crops
                                                          chain in the tests
"""
import hashlib
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test")

# slow.onnx: x is broadcast to SLOW_ROWS identical rows, then SLOW_STEPS times
# t = tanh(t @ W) with one shared 256x256 initializer, then the mean over rows
# (identical rows, so y equals the single-row chain). SLOW_ROWS sets the cost:
# measured on the 2-core Xeon @ 2.5 GHz dev VM, 1 thread: 32 rows ~2.4 ms,
# 64 ~4.3 ms, 80 ~5.4 ms, 96 ~6.3 ms; under a concurrent build the median
# roughly doubles, so 64 keeps it inside 3-10 ms either way. Fixed here (not tuned at run time)
# so the file stays deterministic.
SLOW_DIM = 256
SLOW_STEPS = 60
SLOW_ROWS = 64


def slow_weight():
    """1.1*I plus a small deterministic structured perturbation (no RNG).

    The gain > 1 keeps activations away from 0 (tanh bounds them): for x in
    [-1, 1] the outputs settle around +-0.5, so the numeric check is meaningful.
    """
    i = np.arange(SLOW_DIM)
    pert = (((i[:, None] * 31 + i[None, :] * 17) % 97) - 48) / (48.0 * SLOW_DIM)
    return (1.1 * np.eye(SLOW_DIM) + pert).astype(np.float32)


def finish(graph, doc):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="reflexd-make_test_models",
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


F, I64 = TensorProto.FLOAT, TensorProto.INT64


def make_affine():
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "one"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    g = helper.make_graph(nodes, "affine", [vi("x", F, ["N", 4])], [vi("y", F, ["N", 4])], inits)
    return finish(g, "y = 2*x + 1, dynamic batch dimension N")


def make_acc():
    nodes = [
        helper.make_node("Add", ["x", "state"], ["y"]),
        helper.make_node("Identity", ["y"], ["state_out"]),
    ]
    g = helper.make_graph(
        nodes, "acc",
        [vi("x", F, [1, 4]), vi("state", F, [1, 4])],
        [vi("y", F, [1, 4]), vi("state_out", F, [1, 4])],
    )
    return finish(g, "stateful accumulator: y = state_out = x + state; feed state_out back as state")


def make_mixed():
    nodes = [
        helper.make_node("Cast", ["b"], ["bf"], to=F),
        helper.make_node("Add", ["a", "bf"], ["s"]),
    ]
    g = helper.make_graph(nodes, "mixed", [vi("a", F, [1, 3]), vi("b", I64, [1, 3])], [vi("s", F, [1, 3])])
    return finish(g, "mixed input dtypes: s = a + float(b)")


def make_slow():
    nodes = [helper.make_node("Expand", ["x", "rows_shape"], ["t_in"])]
    prev = "t_in"
    for k in range(SLOW_STEPS):
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"mm{k}"]))
        nodes.append(helper.make_node("Tanh", [f"mm{k}"], [f"t{k}"]))
        prev = f"t{k}"
    nodes.append(helper.make_node("ReduceMean", [prev], ["y"], axes=[0], keepdims=1))
    inits = [
        numpy_helper.from_array(slow_weight(), "W"),
        numpy_helper.from_array(np.array([SLOW_ROWS, SLOW_DIM], np.int64), "rows_shape"),
    ]
    g = helper.make_graph(nodes, "slow", [vi("x", F, [1, SLOW_DIM])], [vi("y", F, [1, SLOW_DIM])], inits)
    return finish(g, f"compute-heavy: y = chain of {SLOW_STEPS} x tanh(t @ W) on {SLOW_ROWS} broadcast rows, "
                     "mean over rows; a few ms per run")


STALL_DIM = 64


def make_stall():
    """A model whose run time the request chooses: a Loop with trip count n.

    Used to make a worker stay inside one model run for seconds (the watchdog
    tests) with a file of a few KB; n = 0 (the warm-up) returns at once.
    """
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["t_in", "W"], ["mm"]),
            helper.make_node("Tanh", ["mm"], ["t_out"]),
        ],
        "stall_body",
        [vi("iter", I64, []), vi("cond_in", TensorProto.BOOL, []), vi("t_in", F, [1, STALL_DIM])],
        [vi("cond_out", TensorProto.BOOL, []), vi("t_out", F, [1, STALL_DIM])],
    )
    nodes = [
        helper.make_node("ReduceSum", ["n"], ["n_sum"], keepdims=0),
        helper.make_node("Cast", ["n_sum"], ["trips"], to=I64),
        helper.make_node("Loop", ["trips", "true", "t0"], ["y"], body=body),
    ]
    w = slow_weight()[:STALL_DIM, :STALL_DIM]
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.array(True), "true"),
        numpy_helper.from_array(np.full((1, STALL_DIM), 0.5, np.float32), "t0"),
    ]
    g = helper.make_graph(nodes, "stall", [vi("n", F, [1])], [vi("y", F, [1, STALL_DIM])], inits)
    return finish(g, "run time chosen by the request: n iterations of t = tanh(t @ W) in a Loop")


def make_context():
    g = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["out"])], "context",
        [vi("input", F, [1, 8])], [vi("out", F, [1, 8])],
    )
    return finish(g, "identity over an 8-sample window: for testing context carry-over (last K samples)")


# faulty.onnx: y = x * table[N], with a 3-entry table of ones, so rows 1 and 2
# give y = x and any larger batch makes ONNX Runtime's Gather fail at run time
# (the model itself is valid; the fault depends only on the input shape).
FAULTY_TABLE = 3


def make_faulty():
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Gather", ["table", "n"], ["scale"], axis=0),
        helper.make_node("Mul", ["x", "scale"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.ones(FAULTY_TABLE, np.float32), "table"),
    ]
    g = helper.make_graph(nodes, "faulty", [vi("x", F, ["N", 4])], [vi("y", F, ["N", 4])], inits)
    return finish(g, f"y = x for N < {FAULTY_TABLE}; N >= {FAULTY_TABLE} fails at run time (Gather out of range)")


# detect.onnx: cells of DET_CELL x DET_CELL pixels on a DET_SIZE x DET_SIZE input.
DET_SIZE = 64
DET_CELL = 8
DET_CLASSES = 3


def det_boxes():
    """[1, 4, N] cx, cy, w, h of each cell, row-major cell order."""
    g = DET_SIZE // DET_CELL
    idx = np.arange(g * g)
    cx = (idx % g + 0.5) * DET_CELL
    cy = (idx // g + 0.5) * DET_CELL
    wh = np.full(g * g, DET_CELL, np.float32)
    return np.stack([cx, cy, wh, wh]).astype(np.float32)[None]


def make_detect():
    n = (DET_SIZE // DET_CELL) ** 2
    nodes = [
        helper.make_node("AveragePool", ["images"], ["cells"], kernel_shape=[DET_CELL, DET_CELL],
                         strides=[DET_CELL, DET_CELL]),
        helper.make_node("Reshape", ["cells", "scores_shape"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["v8"], axis=1),
        helper.make_node("Concat", ["boxes", "objectness", "scores"], ["v5_t"], axis=1),
        helper.make_node("Transpose", ["v5_t"], ["v5"], perm=[0, 2, 1]),
    ]
    inits = [
        numpy_helper.from_array(det_boxes(), "boxes"),
        numpy_helper.from_array(np.ones((1, 1, n), np.float32), "objectness"),
        numpy_helper.from_array(np.array([1, DET_CLASSES, n], np.int64), "scores_shape"),
    ]
    g = helper.make_graph(
        nodes, "detect", [vi("images", F, [1, DET_CLASSES, DET_SIZE, DET_SIZE])],
        [vi("v8", F, [1, 4 + DET_CLASSES, n]), vi("v5", F, [1, n, 5 + DET_CLASSES])], inits,
    )
    return finish(g, f"YOLO-shaped test detector: one {DET_CELL}x{DET_CELL} box per cell, class k score = "
                     "mean of input channel k over the cell; outputs in YOLOv8 [1,4+C,N] and YOLOv5 [1,N,5+C] layouts")


def detect_reference(x):
    g = DET_SIZE // DET_CELL
    scores = x.reshape(1, DET_CLASSES, g, DET_CELL, g, DET_CELL).mean(axis=(3, 5)).reshape(1, DET_CLASSES, g * g)
    v8 = np.concatenate([det_boxes(), scores], axis=1).astype(np.float32)
    v5 = np.concatenate([det_boxes(), np.ones((1, 1, g * g), np.float32), scores], axis=1)
    return v8, v5.transpose(0, 2, 1).astype(np.float32)


# classify.onnx: the mean colour of a CLS_SIZE x CLS_SIZE image as 3 class scores.
CLS_SIZE = 16


def make_classify():
    # Opset 17: ReduceMean takes its axes as an attribute.
    nodes = [helper.make_node("ReduceMean", ["images"], ["scores"], axes=[2, 3], keepdims=0)]
    g = helper.make_graph(
        nodes, "classify", [vi("images", F, ["N", DET_CLASSES, CLS_SIZE, CLS_SIZE])],
        [vi("scores", F, ["N", DET_CLASSES])],
    )
    return finish(g, "test classifier: class k score = mean of input channel k (dominant colour)")


MODELS = {
    "affine.onnx": make_affine,
    "acc.onnx": make_acc,
    "mixed.onnx": make_mixed,
    "slow.onnx": make_slow,
    "context.onnx": make_context,
    "faulty.onnx": make_faulty,
    "stall.onnx": make_stall,
    "detect.onnx": make_detect,
    "classify.onnx": make_classify,
}


def slow_reference(x):
    w = slow_weight()
    t = x.astype(np.float32)
    for _ in range(SLOW_STEPS):
        t = np.tanh(t @ w)
    return t


def verify(paths):
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not importable: models written but NOT verified", file=sys.stderr)
        return 1

    def session(name, threads=1):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        return ort.InferenceSession(paths[name], so, providers=["CPUExecutionProvider"])

    def check(label, got, want, atol=1e-6):
        ok = got.shape == want.shape and got.dtype == want.dtype and np.allclose(got, want, atol=atol, rtol=0)
        print(f"  {'ok  ' if ok else 'FAIL'} {label}: {np.array2string(got.ravel()[:8], precision=4)}"
              + ("" if ok else f"  expected {np.array2string(want.ravel()[:8], precision=4)}"))
        return ok

    print(f"verifying with onnxruntime {ort.__version__}")
    ok = True

    s = session("affine.onnx")
    for n in (1, 3, 5):
        x = (np.arange(n * 4, dtype=np.float32).reshape(n, 4) - 4.0) / 2.0
        (y,) = s.run(None, {"x": x})
        ok &= check(f"affine N={n}", y, 2 * x + 1)

    s = session("acc.onnx")
    x = np.array([[1, 2, 3, 4]], np.float32)
    state = np.zeros((1, 4), np.float32)
    for step in range(1, 4):
        y, state = s.run(None, {"x": x, "state": state})
        ok &= check(f"acc step {step} y", y, step * x)
        ok &= check(f"acc step {step} state_out", state, step * x)

    s = session("mixed.onnx")
    a = np.array([[0.5, 1.5, -2.0]], np.float32)
    b = np.array([[1, 2, 3]], np.int64)
    (out,) = s.run(None, {"a": a, "b": b})
    ok &= check("mixed", out, np.array([[1.5, 3.5, 1.0]], np.float32))

    s = session("context.onnx")
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    (out,) = s.run(None, {"input": x})
    ok &= check("context", out, x)

    s = session("faulty.onnx")
    for n in (1, 2):
        x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
        (y,) = s.run(None, {"x": x})
        ok &= check(f"faulty N={n}", y, x)
    try:
        s.run(None, {"x": np.zeros((FAULTY_TABLE, 4), np.float32)})
        print(f"  FAIL faulty N={FAULTY_TABLE} ran; it must fail")
        ok = False
    except Exception as e:  # onnxruntime raises its own exception types
        print(f"  ok   faulty N={FAULTY_TABLE} fails: {str(e).splitlines()[0][:100]}")
    s = session("stall.onnx")
    w = slow_weight()[:STALL_DIM, :STALL_DIM]
    t = np.full((1, STALL_DIM), 0.5, np.float32)
    for _ in range(3):
        t = np.tanh(t @ w)
    (y,) = s.run(None, {"n": np.array([3.0], np.float32)})
    ok &= check("stall n=3 vs numpy", y, t, atol=1e-5)
    (y,) = s.run(None, {"n": np.array([0.0], np.float32)})
    ok &= check("stall n=0 is the start value", y, np.full((1, STALL_DIM), 0.5, np.float32))
    for n in (1e4, 1e5):
        t0 = time.perf_counter()
        s.run(None, {"n": np.array([n], np.float32)})
        print(f"  stall.onnx n={n:.0f}: {(time.perf_counter() - t0) * 1e3:.0f} ms")

    s = session("detect.onnx")
    x = np.random.default_rng(7).random((1, DET_CLASSES, DET_SIZE, DET_SIZE), dtype=np.float32)
    v8, v5 = s.run(None, {"images": x})
    want8, want5 = detect_reference(x)
    ok &= check("detect v8 vs numpy", v8, want8, atol=1e-5)
    ok &= check("detect v5 vs numpy", v5, want5, atol=1e-5)

    s = session("classify.onnx")
    x = np.random.default_rng(9).random((3, DET_CLASSES, CLS_SIZE, CLS_SIZE), dtype=np.float32)
    (scores,) = s.run(None, {"images": x})
    ok &= check("classify vs numpy", scores, x.mean(axis=(2, 3)), atol=1e-6)

    s = session("slow.onnx")
    x = np.linspace(-1.0, 1.0, SLOW_DIM, dtype=np.float32).reshape(1, SLOW_DIM)
    (y,) = s.run(None, {"x": x})
    ok &= check("slow vs numpy", y, slow_reference(x), atol=1e-4)
    ok &= bool(np.all(np.isfinite(y)))
    for _ in range(5):
        s.run(None, {"x": x})
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        s.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    med, p90 = np.median(times) * 1e3, np.percentile(times, 90) * 1e3
    print(f"  slow.onnx run time, 1 thread: median {med:.2f} ms, p90 {p90:.2f} ms, min {min(times) * 1e3:.2f} ms")
    if not 3.0 <= med <= 10.0:
        print(f"  note: slow.onnx median {med:.2f} ms is outside 3-10 ms on this machine "
              f"(adjust SLOW_ROWS if tests depend on it)")

    print("all models verified" if ok else "VERIFICATION FAILED")
    return 0 if ok else 1


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    paths = {}
    for name, make in MODELS.items():
        data = make().SerializeToString(deterministic=True)
        if len(data) >= 1 << 20:
            sys.exit(f"{name} is {len(data)} bytes (>= 1 MiB)")
        path = os.path.join(OUT_DIR, name)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        paths[name] = path
        print(f"wrote {os.path.relpath(path)} ({len(data)} B, sha256 {hashlib.sha256(data).hexdigest()[:16]})")
    return verify(paths)


if __name__ == "__main__":
    sys.exit(main())
