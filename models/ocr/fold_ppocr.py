#!/usr/bin/env python3
"""Rewrites a PP-OCR ONNX model (as exported by paddle2onnx) into an equivalent
graph that ONNX Runtime runs faster on CPU, then checks the two agree.

  fold_ppocr.py IN.onnx OUT.onnx --input-shape 1,3,736,992

Profiling ch_PP-OCRv4_det_infer.onnx on ONNX Runtime 1.31 (1 thread) showed only
~36 % of the time in Conv: the element-wise Mul/Add/Clip/Div that paddle2onnx
emits for PP-LCNetV3's learnable affine blocks (y = s·x + b with scalar s, b)
and for hard-swish (x·clip(x + 3, 0, 6)/6) took ~45 %, each a full pass over a
feature map, and ORT fuses none of them (its Conv+Mul fusion wants the scalar
as an initializer on the second input). Three exact rewrites:

1. Conv → Mul(scalar s) → Add(scalar b): folded into the convolution
   (W·s, bias·s + b). Nothing else reads the intermediate values.
2. hard-swish Add(3) → Clip(0, 6) → Mul(x, ·) → Div(6): HardSigmoid(α = 1/6,
   β = 0.5) then Mul — the same function; ORT fuses the HardSigmoid into the
   preceding Conv.
3. Scalar affine (Mul s, Add b) read only by 1×1 convolutions without padding:
   folded into them (W·s, bias + b·ΣW). Convolutions with padding are left
   alone: folding b would change the border, where the padding is zero.
4. The scalar affines left (they feed padded depthwise convolutions) become a
   depthwise 1×1 Conv (weight s, bias b per channel): the same arithmetic, but
   ORT keeps a Conv in its blocked NCHWc layout, while a Mul/Add with a scalar
   makes it reorder the tensor to NCHW and back (~16 % of the recogniser's
   time was such reorders).

The results differ from the original only by float rounding; this script
refuses to write OUT unless, on a random input of the given shape, the largest
absolute output difference is below --tolerance (default 1e-3).
"""

import argparse
import os
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper


def constants_to_initializers(g, inits):
    """paddle2onnx stores weights as Constant nodes; make them initializers."""
    keep = []
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            inits[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        else:
            keep.append(n)
    return keep


class Graph:
    """Producer/consumer maps over a node list, rebuilt after each rewrite."""

    def __init__(self, nodes, inits, outputs):
        self.inits = inits
        self.prod = {o: n for n in nodes for o in n.output}
        self.users = {}
        for n in nodes:
            for i in n.input:
                self.users.setdefault(i, []).append(n)
        for o in outputs:
            self.users.setdefault(o, []).append(None)  # a graph output is read by "someone"

    def scalar(self, name):
        v = self.inits.get(name)
        return float(v.reshape(())) if v is not None and v.size == 1 else None

    def only_user(self, name, op_type):
        us = self.users.get(name, [])
        return us[0] if len(us) == 1 and us[0] is not None and us[0].op_type == op_type else None


def other(node, x):
    return node.input[1] if node.input[0] == x else node.input[0]


def conv_weights(g, conv):
    w = g.inits[conv.input[1]].astype(np.float64)
    b = g.inits[conv.input[2]].astype(np.float64) if len(conv.input) > 2 else np.zeros(w.shape[0])
    return w, b


def set_conv_weights(g, conv, w, b, tag):
    wn, bn = f"{conv.name}_{tag}_w", f"{conv.name}_{tag}_b"
    g.inits[wn] = w.astype(np.float32)
    g.inits[bn] = b.astype(np.float32)
    conv.input[1] = wn
    if len(conv.input) > 2:
        conv.input[2] = bn
    else:
        conv.input.append(bn)


def fold_affine_after_conv(nodes, g):
    """Rewrite 1: Conv → Mul(scalar) [→ Add(scalar)] into the Conv."""
    dead, count = set(), 0
    for conv in nodes:
        if conv.op_type != "Conv" or conv.input[1] not in g.inits:
            continue
        mul = g.only_user(conv.output[0], "Mul")
        s = mul and g.scalar(other(mul, conv.output[0]))
        if s is None:
            continue
        w, b = conv_weights(g, conv)
        w, b, out = w * s, b * s, mul.output[0]
        dead.add(id(mul))
        add = g.only_user(out, "Add")
        shift = add and g.scalar(other(add, out))
        if shift is not None:
            b, out = b + shift, add.output[0]
            dead.add(id(add))
        set_conv_weights(g, conv, w, b, "affine")
        conv.output[0] = out
        count += 1
    return [n for n in nodes if id(n) not in dead], count


def hard_swish(nodes, g):
    """Rewrite 2: Add(x, 3) → Clip(0, 6) → Mul(x, ·) → Div(6) as HardSigmoid + Mul."""
    dead, repl, count = set(), {}, 0
    for div in nodes:
        if div.op_type != "Div" or g.scalar(div.input[1]) != 6.0:
            continue
        mul = g.prod.get(div.input[0])
        if mul is None or mul.op_type != "Mul":
            continue
        clip = next((g.prod[i] for i in mul.input if i in g.prod and g.prod[i].op_type == "Clip"), None)
        if clip is None or len(clip.input) < 3:
            continue
        if g.scalar(clip.input[1]) != 0.0 or g.scalar(clip.input[2]) != 6.0:
            continue
        add = g.prod.get(clip.input[0])
        if add is None or add.op_type != "Add" or g.scalar(add.input[1]) != 3.0:
            continue
        x = add.input[0]
        if other(mul, clip.output[0]) != x:
            continue
        if any(len(g.users.get(t, [])) != 1 for t in (add.output[0], clip.output[0], mul.output[0])):
            continue
        dead |= {id(add), id(clip), id(mul)}
        gate = div.output[0] + "_hardsigmoid"
        repl[id(div)] = [
            helper.make_node("HardSigmoid", [x], [gate], name=gate, alpha=1.0 / 6.0, beta=0.5),
            helper.make_node("Mul", [x, gate], [div.output[0]], name=div.output[0] + "_hardswish"),
        ]
        count += 1
    return [r for n in nodes if id(n) not in dead for r in repl.get(id(n), [n])], count


def is_plain_1x1(g, conv, x):
    if conv is None or conv.op_type != "Conv" or conv.input[0] != x or conv.input[1] not in g.inits:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    w = g.inits[conv.input[1]]
    return (w.shape[2:] == (1, 1) and attrs.get("group", 1) == 1 and not any(attrs.get("pads", [0]))
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"))


def fold_affine_into_1x1(nodes, g):
    """Rewrite 3: Mul(scalar) → Add(scalar) read only by unpadded 1×1 convs."""
    dead, count = set(), 0
    for mul in nodes:
        if mul.op_type != "Mul":
            continue
        xs = [i for i in mul.input if g.scalar(i) is None]
        if len(xs) != 1:
            continue
        s = g.scalar(other(mul, xs[0]))
        add = g.only_user(mul.output[0], "Add")
        b = add and g.scalar(other(add, mul.output[0]))
        if b is None:
            continue
        convs = g.users.get(add.output[0], [])
        if not convs or not all(is_plain_1x1(g, c, add.output[0]) for c in convs):
            continue
        for conv in convs:
            w, bias = conv_weights(g, conv)
            set_conv_weights(g, conv, w * s, bias + b * w.sum(axis=(1, 2, 3)), "inaffine")
            conv.input[0] = xs[0]
        dead |= {id(mul), id(add)}
        count += 1
    return [n for n in nodes if id(n) not in dead], count


def channel_counts(model, nodes, inits, shape):
    """Static channel count (dim 1) of every 4-D value, from ONNX shape
    inference on a copy whose input has the concrete `shape`."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    replace_graph(m.graph, nodes, inits)
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, shape):
        d.ClearField("dim_param")
        d.dim_value = v
    m = onnx.shape_inference.infer_shapes(m)
    out = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].dim_value > 0:
            out[vi.name] = dims[1].dim_value
    return out


def affine_as_depthwise(nodes, g, chans):
    """Rewrite 4: Mul(x, scalar) → Add(scalar) as a depthwise 1×1 Conv."""
    dead, repl, count = set(), {}, 0
    for mul in nodes:
        if mul.op_type != "Mul":
            continue
        xs = [i for i in mul.input if g.scalar(i) is None]
        if len(xs) != 1 or xs[0] not in chans:
            continue
        s = g.scalar(other(mul, xs[0]))
        add = g.only_user(mul.output[0], "Add")
        b = add and g.scalar(other(add, mul.output[0]))
        if b is None:
            continue
        c = chans[xs[0]]
        wn, bn = mul.output[0] + "_dw_w", mul.output[0] + "_dw_b"
        g.inits[wn] = np.full((c, 1, 1, 1), s, np.float32)
        g.inits[bn] = np.full((c,), b, np.float32)
        dead.add(id(add))
        repl[id(mul)] = helper.make_node(
            "Conv", [xs[0], wn, bn], [add.output[0]], name=mul.output[0] + "_dw", group=c, kernel_shape=[1, 1]
        )
        count += 1
    return [repl.get(id(n), n) for n in nodes if id(n) not in dead], count


def replace_graph(graph, nodes, inits):
    used = {i for n in nodes for i in n.input}
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in inits.items() if k in used)


def fold(model, shape):
    g0 = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g0.initializer}
    nodes = constants_to_initializers(g0, inits)
    outputs = [o.name for o in g0.output]
    counts = []
    for step in (fold_affine_after_conv, hard_swish, fold_affine_into_1x1):
        nodes, n = step(nodes, Graph(nodes, inits, outputs))
        counts.append(n)
    chans = channel_counts(model, nodes, inits, shape)
    nodes, n = affine_as_depthwise(nodes, Graph(nodes, inits, outputs), chans)
    counts.append(n)
    replace_graph(g0, nodes, inits)
    onnx.checker.check_model(model)
    return counts


def max_difference(a_path, b_path, shape):
    import onnxruntime as ort

    x = np.random.RandomState(0).uniform(-1.0, 1.0, shape).astype(np.float32)
    outs = []
    for p in (a_path, b_path):
        s = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        outs.append(s.run(None, {s.get_inputs()[0].name: x})[0])
    return float(np.abs(outs[0] - outs[1]).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--input-shape", required=True, help="e.g. 1,3,736,992")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()
    model = onnx.load(args.src)
    meta = {p.key: p.value for p in model.metadata_props}  # the recogniser's charset lives here
    shape = [int(d) for d in args.input_shape.split(",")]
    counts = fold(model, shape)
    if {p.key: p.value for p in model.metadata_props} != meta:
        sys.exit("fold_ppocr.py: model metadata changed")
    tmp = args.dst + ".tmp"
    onnx.save(model, tmp)
    diff = max_difference(args.src, tmp, shape)
    if not diff < args.tolerance:
        os.remove(tmp)
        sys.exit(f"fold_ppocr.py: {args.src}: outputs differ by {diff} (tolerance {args.tolerance})")
    os.replace(tmp, args.dst)
    print(f"{os.path.basename(args.src)}: folded {counts[0]} conv affines, {counts[1]} hard-swishes, "
          f"{counts[2]} affines into 1x1 convs, {counts[3]} affines as depthwise convs; "
          f"{len(model.graph.node)} nodes; max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
