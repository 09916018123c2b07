#!/usr/bin/env python3
"""Make a draft model for speculative decoding from a converted model: its first N layers.

    python make_draft.py SRC_DIR OUT_DIR [--layers N]

SRC_DIR is a directory written by convert_gguf.py (model.onnx, tokenizer.json,
generation.json). The draft keeps the embedding, the first N decoder layers, the final
norm and the LM head of the source, so it has exactly the source's tokenizer, vocabulary
and interface (the pairing rules reflexd checks, models/llm/README.md § Draft models),
and costs roughly (N + head) / (layers + head) of a step. It is a small stand-in for a
real smaller model of the same family (no such model of SmolLM2's tokenizer ships on PyPI):
an early-exit draft, like LayerSkip's self-speculation without its training, so its
acceptance is modest. Used by tests/llm_draft.rs and benches/llm.

OUT_DIR is rewritten only when SRC_DIR's model or this script changed (a stamp file
records both), so callers can run it before every use.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys

import onnx


def stamp_of(src, layers):
    h = hashlib.sha256()
    with open(__file__, "rb") as f:
        h.update(f.read())
    with open(os.path.join(src, "generation.json"), "rb") as f:
        h.update(f.read())
    st = os.stat(os.path.join(src, "model.onnx"))
    h.update(f"{st.st_size}:{st.st_mtime_ns}:{layers}".encode())
    return h.hexdigest()


def truncate(model, layers, total):
    g = model.graph
    last = layers - 1
    norm = [n for n in g.node if n.name == "output_norm"]
    if len(norm) != 1:
        sys.exit("no output_norm node: not a convert_gguf.py model")
    norm[0].input[0] = f"blk.{last}.ffn_down_out"
    norm[0].input[1] = f"blk.{last}.resid_ffn"
    gone = {f"{p}.{i}.{kv}" for i in range(layers, total) for kv in ("key", "value")
            for p in ("past_key_values", "present")}
    keep_in = [i for i in g.input if i.name not in gone]
    keep_out = [o for o in g.output if o.name not in gone]
    del g.input[:]
    g.input.extend(keep_in)
    del g.output[:]
    g.output.extend(keep_out)
    # Keep the nodes the remaining outputs depend on, then their initializers.
    producer = {o: n for n in g.node for o in n.output}
    needed, stack = set(), [o.name for o in g.output]
    seen_nodes = set()
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        n = producer.get(t)
        if n is not None and id(n) not in seen_nodes:
            seen_nodes.add(id(n))
            stack.extend(i for i in n.input if i)
    nodes = [n for n in g.node if id(n) in seen_nodes]
    del g.node[:]
    g.node.extend(nodes)
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args()
    with open(os.path.join(a.src, "generation.json")) as f:
        gen = json.load(f)
    total = gen["num_layers"]
    if not 1 <= a.layers < total:
        sys.exit(f"--layers {a.layers}: expected 1..{total - 1}")
    stamp = stamp_of(a.src, a.layers)
    stamp_path = os.path.join(a.out, ".draft-stamp")
    if os.path.exists(stamp_path) and open(stamp_path).read() == stamp:
        print(f"{a.out}: up to date")
        return
    model = onnx.load(os.path.join(a.src, "model.onnx"))
    truncate(model, a.layers, total)
    os.makedirs(a.out, exist_ok=True)
    onnx.save(model, os.path.join(a.out, "model.onnx"))
    shutil.copy(os.path.join(a.src, "tokenizer.json"), os.path.join(a.out, "tokenizer.json"))
    gen["num_layers"] = a.layers
    gen["model_name"] = f"{gen['model_name']} (first {a.layers} of {total} layers: draft)"
    gen["draft"] = {"source": os.path.abspath(a.src), "layers_kept": a.layers, "layers_of_source": total,
                    "made_by": "models/llm/make_draft.py"}
    with open(os.path.join(a.out, "generation.json"), "w") as f:
        json.dump(gen, f, indent=1)
    with open(stamp_path, "w") as f:
        f.write(stamp)
    size = os.path.getsize(os.path.join(a.out, "model.onnx")) >> 20
    print(f"{a.out}: {a.layers} of {total} layers, {len(model.graph.node)} nodes, {size} MiB")


if __name__ == "__main__":
    main()
