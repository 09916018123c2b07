#!/usr/bin/env python3
"""forms_bench.py - one transformer layer's four projections (qkv, attention output, gate/up,
down) built the ways convert_gguf.py can write a Q4_1-style matrix, timed in onnxruntime and
checked against float64: the measurement behind README.md's "Forms of the Q4_1 minimums".

    python forms_bench.py [--gguf MODEL.gguf] [--layer 3] [--threads 1]

forms: correction (MatMulNBits + blocksum MatMul + Gemm: the converter's default), float-zp
(one MatMulNBits with float zero points, --min-form float-zp) and none (MatMulNBits without the
minimums: not the model's weights, only to show what the correction costs); each at accuracy
level 0 (float32 activations) and 4 (int8 activations), for 1 row (a decode step) and 39 rows
(the chat prompt's prefill). Prints microseconds per layer (sum of the four, medians) and the
largest relative error against float64 x @ W^T.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import convert_gguf as cg  # noqa: E402
from numerics import DEFAULT_GGUF  # noqa: E402


def layer_weights(gguf_path, layer):
    from gguf import GGUFReader
    tensors = {t.name: t for t in GGUFReader(gguf_path).tensors}

    def W(name):
        return cg.load_matrix(tensors[f"blk.{layer}.{name}.weight"])
    return {"qkv": cg._concat_rows([W("attn_q"), W("attn_k"), W("attn_v")]), "out": W("attn_output"),
            "gate_up": cg._concat_rows([W("ffn_gate"), W("ffn_up")]), "down": W("ffn_down")}


def session(w, form, acc, threads):
    """A one-matmul model x [M, K] -> y [M, N] in the given form."""
    n, k = w.shape
    g = cg.Graph(acc, "float-zp" if form == "float-zp" else "correction")
    if form == "none":
        w = cg.QWeight(w.u, w.bits, w.bs, w.zp, w.scale, None, w.src, w.zps)
    (y,) = g.linear("x", [w], "w")
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", cg.OPSET), helper.make_opsetid(cg.MS, 1)],
                              ir_version=cg.IR_VERSION)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    ws = layer_weights(a.gguf, a.layer)
    if any(w.mins is None for w in ws.values()):
        raise SystemExit("this layer has no block minimums (not a Q4_1/Q4_K-style file)")
    rng = np.random.default_rng(0)
    print(f"layer {a.layer}, {a.threads} thread(s), onnxruntime {ort.__version__}")
    print("| form | accuracy level | rows | µs per layer | max rel error |")
    print("|---|---|---|---|---|")
    for rows in (1, 39):
        xs = {name: rng.standard_normal((rows, w.shape[1])).astype(np.float32) for name, w in ws.items()}
        for form in ("correction", "none", "float-zp"):
            for acc in (0, 4):
                total, err = 0.0, 0.0
                for name, w in ws.items():
                    s, x = session(w, form, acc, a.threads), xs[name]
                    y = s.run(None, {"x": x})[0]
                    ts = []
                    for _ in range(50 if rows == 1 and form != "float-zp" else 10):
                        t = time.perf_counter()
                        s.run(None, {"x": x})
                        ts.append(time.perf_counter() - t)
                    total += float(np.median(ts)) * 1e6
                    yr = x.astype(np.float64) @ w.dequantize().astype(np.float64).T
                    err = max(err, float(np.abs(y - yr).max() / np.abs(yr).max()))
                print(f"| {form} | {acc} | {rows} | {total:.0f} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
