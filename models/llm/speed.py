#!/usr/bin/env python3
"""speed.py - decode and prefill speed of each ONNX form (Python onnxruntime) next to llama.cpp's
`llama-bench` on the same GGUF, at 1 and 2 threads.

    python speed.py [--gguf MODEL.gguf] [--forms exact,int8] [--threads 1,2] [--json out.json]

Workload (the one `cargo bench --bench llm` uses): the 39-token chat prompt of "Tell me a long
story about a robot." (generation.json's template, default system turn), then 64 greedy tokens.
  onnxruntime  prefill = one run over the prompt with num_logits_to_keep = 1 (and, for comparison,
               all positions: what the Rust loop asks for until it feeds the input); decode = mean
               ms per step over the 64 steps after it (KV cache fed back, argmax); median of --reps
  llama.cpp    llama-bench -r REPS: -p 39 -n 0 (prompt tokens/s from an empty context) and
               -p 0 -n 64 -d 39 (64 tokens generated after 39 tokens of context, like the decode
               steps above)
Both use the same thread count, one process at a time, measured in the same run, in --rounds
rounds that interleave the contenders; the table shows each contender's best round (fastest
decode, fastest prefill: on a shared machine the least disturbed one) and the median decode
over rounds. Read the ratios rather than the absolute numbers. Forms are converted by
numerics.convert_forms into --workdir; llama.cpp comes from scripts/llama-cpp.sh (skipped if
it is not built, unless --build-llama).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_llm import Decoder, chat_prompt  # noqa: E402
from numerics import DEFAULT_GGUF, convert_forms, llama_bin  # noqa: E402

PROMPT = "Tell me a long story about a robot."


def llama_bench(bindir, gguf, n_prompt, n_gen, threads, reps):
    """pp: the prompt from an empty context; tg: n_gen tokens after n_prompt of context (-d)."""
    base = [os.path.join(bindir, "llama-bench"), "-m", gguf, "-t", str(threads), "-r", str(reps), "-o", "json"]
    runs = {"pp": ["-p", str(n_prompt), "-n", "0"], "tg": ["-p", "0", "-n", str(n_gen), "-d", str(n_prompt)]}
    out = {}
    for what, args in runs.items():
        r = subprocess.run(base + args, capture_output=True, text=True, check=True)
        out[what] = json.loads(r.stdout)[0]["avg_ts"]
    cmd = " ".join(base) + " " + " / ".join(" ".join(v) for v in runs.values())
    return {"prefill_tok_s": out["pp"], "decode_ms": 1e3 / out["tg"], "cmd": cmd,
            "prefill_ms": n_prompt / out["pp"] * 1e3}


def ort_bench(model_dir, ids, n_gen, threads, reps, spinning):
    dec = Decoder(model_dir, threads, spinning)
    dec.greedy(ids, 4)  # warm-up
    pre_last, pre_all, steps = [], [], []
    for _ in range(reps):
        for keep, acc in ((1, pre_last), (0, pre_all)):
            t = time.perf_counter()
            dec.run(ids, dec.empty_past(), keep=keep)
            acc.append(time.perf_counter() - t)
        _, _, st = dec.greedy(ids, n_gen + 1, stop=())
        steps.append(np.mean(st[:n_gen]))
    n = len(ids)
    return {"prefill_tok_s": n / np.median(pre_last), "prefill_ms": np.median(pre_last) * 1e3,
            "prefill_all_logits_ms": np.median(pre_all) * 1e3, "decode_ms": float(np.median(steps)) * 1e3,
            "keep_input": dec.has_keep}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--forms", default="exact,int8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--spinning", choices=["default", "on", "off"], default="default",
                    help="onnxruntime intra-op spinning (default: the library's, on)")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "reflexd-numerics"))
    ap.add_argument("--build-llama", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    names = [n for n in a.forms.split(",") if n]
    dirs = convert_forms(a.gguf, names, a.workdir)
    from tokenizers import Tokenizer
    gen = json.load(open(os.path.join(dirs[names[0]], "generation.json")))
    tok = Tokenizer.from_file(os.path.join(dirs[names[0]], "tokenizer.json"))
    ids = tok.encode(chat_prompt(gen, [{"role": "user", "content": PROMPT}]), add_special_tokens=True).ids
    spin = None if a.spinning == "default" else a.spinning == "on"
    bindir = llama_bin(a.build_llama)
    res = {"gguf": os.path.basename(a.gguf), "prompt_tokens": len(ids), "tokens": a.tokens, "rounds": a.rounds,
           "rows": []}
    runs = {}  # (threads, engine) -> results of every round
    for _ in range(a.rounds):
        for t in [int(x) for x in a.threads.split(",")]:
            if bindir:
                runs.setdefault((t, "llama.cpp (llama-bench)"), []).append(
                    llama_bench(bindir, a.gguf, len(ids), a.tokens, t, a.reps))
            for name in names:
                runs.setdefault((t, f"onnxruntime, {name}"), []).append(
                    ort_bench(dirs[name], ids, a.tokens, t, a.reps, spin))
        res.setdefault("loadavg", []).append(round(os.getloadavg()[0], 1))
    for (t, engine), rs in sorted(runs.items(), key=lambda kv: kv[0][0]):
        best = {k: v for k, v in rs[0].items() if not isinstance(v, float)}
        best.update(threads=t, engine=engine, decode_ms=min(r["decode_ms"] for r in rs),
                    decode_ms_median=float(np.median([r["decode_ms"] for r in rs])),
                    prefill_tok_s=max(r["prefill_tok_s"] for r in rs))
        if "prefill_all_logits_ms" in rs[0]:
            best["prefill_all_logits_ms"] = min(r["prefill_all_logits_ms"] for r in rs)
        best["rounds"] = rs
        res["rows"].append(best)
    print_table(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")


def print_table(res):
    print(f"\n{res['gguf']}: {res['prompt_tokens']}-token chat prompt, {res['tokens']} greedy tokens; best of "
          f"{res['rounds']} rounds; load average after each round {res.get('loadavg', '?')}\n")
    print("| threads | engine | decode ms/token (median) | × llama.cpp | prefill tok/s | × llama.cpp "
          "| prefill ms, all logits |")
    print("|---|---|---|---|---|---|---|")
    base = {}
    for r in res["rows"]:
        if r["engine"].startswith("llama.cpp"):
            base[r["threads"]] = r
        b = base.get(r["threads"])
        dr = f"{r['decode_ms'] / b['decode_ms']:.2f}" if b else "—"
        pr = f"{r['prefill_tok_s'] / b['prefill_tok_s']:.2f}" if b else "—"
        allq = f"{r['prefill_all_logits_ms']:.1f}" if "prefill_all_logits_ms" in r else "—"
        print(f"| {r['threads']} | {r['engine']} | {r['decode_ms']:.2f} ({r['decode_ms_median']:.2f}) | {dr} "
              f"| {r['prefill_tok_s']:.0f} | {pr} | {allq} |")


if __name__ == "__main__":
    main()
