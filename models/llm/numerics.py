#!/usr/bin/env python3
"""numerics.py - the numerics table of models/llm/README.md: each ONNX form of one GGUF against
the float64 reference (reference.py) and against llama.cpp on the same file.

    python numerics.py [--gguf MODEL.gguf] [--forms exact,int8,exact-float-zp] [--json out.json]

  perplexity   tests/data/ppl.txt, scored exactly as llama.cpp's `llama-perplexity -c CTX` does:
               the text is cut into chunks of CTX tokens, each evaluated from scratch, and only
               the second half of each chunk is scored. The token ids are checked against the ones
               llama-perplexity used (they are in its --kl-divergence-base file).
  KL, top-1    mean KL(P_reference || P_form) in nats and top-1 agreement on those scored
               positions; llama.cpp's log-probabilities come from the same file.
  greedy       12 chat prompts (tests/data/llm_prompts.txt), up to 64 greedy tokens each:
               sequences identical to the reference's, and the mean length of the common prefix
               relative to the reference's length; llama.cpp via `llama-simple` (its text,
               re-tokenized). Prompt ids are checked against `llama-tokenize`.
  greedy KL    teacher-forced along the reference's greedy answers: mean KL and top-1 there.

The forms are converted here (convert_gguf.py, cached in --workdir by converter sha); the
llama.cpp tools come from scripts/llama-cpp.sh (built on demand with --build-llama, else the
llama.cpp rows are skipped when they are not built).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from check_llm import Decoder, chat_prompt, log_softmax  # noqa: E402
from reference import FloatReference  # noqa: E402

FORMS = {"exact": ["--exact"], "int8": ["--accuracy-level", "4"],
         "exact-float-zp": ["--exact", "--min-form", "float-zp"]}
DEFAULT_GGUF = os.path.join(os.environ.get("REFLEXD_CACHE_V", os.path.expanduser("~/.cache/reflexd/v1")),
                            "llm", "SmolLM2-135M-Instruct.Q4_1.gguf")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def convert_forms(gguf, names, workdir):
    """name -> model dir, reconverted only when the converter or the GGUF changed."""
    conv = os.path.join(HERE, "convert_gguf.py")
    stamp = f"{sha256(conv)} {sha256(os.path.join(HERE, 'gguf_meta.py'))} {os.path.getsize(gguf)} {os.path.getmtime(gguf)}"
    dirs = {}
    for name in names:
        out = os.path.join(workdir, name)
        sfile = os.path.join(out, ".stamp")
        if not (os.path.exists(sfile) and open(sfile).read() == stamp + " " + " ".join(FORMS[name])):
            subprocess.run([sys.executable, conv, gguf, out, "-q"] + FORMS[name], check=True)
            with open(sfile, "w") as f:
                f.write(stamp + " " + " ".join(FORMS[name]))
        dirs[name] = out
    return dirs


def llama_bin(build):
    script = os.path.join(REPO, "scripts", "llama-cpp.sh")
    r = subprocess.run([script] + ([] if build else ["--print-bin"]), capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# llama.cpp
# ---------------------------------------------------------------------------------------------

def read_kld_base(path, vocab):
    """llama-perplexity --kl-divergence-base file -> (n_ctx, tokens, log-probs [chunks, scored, vocab]).
    Header "_logits_", int32 n_ctx, n_vocab, n_chunk, the int32 tokens; then per scored position
    float32 scale, float32 min log-prob and one uint16 q per vocabulary entry: logp = min + scale*q
    (llama.cpp clamps logits more than 16 below the maximum to the minimum)."""
    with open(path, "rb") as f:
        if f.read(8) != b"_logits_":
            raise SystemExit(f"{path}: not a llama-perplexity logits file")
        n_ctx, n_vocab, n_chunk = (int(v) for v in np.frombuffer(f.read(12), np.int32))
        if n_vocab != vocab:
            raise SystemExit(f"{path}: vocabulary {n_vocab}, the model has {vocab}")
        tokens = np.frombuffer(f.read(4 * n_chunk * n_ctx), np.int32)
        nv = 2 * ((vocab + 1) // 2) + 4
        rows = np.frombuffer(f.read(), np.uint16).reshape(n_chunk, -1, nv)
    head = np.ascontiguousarray(rows[..., :4]).view(np.float32)  # [.., 2]: scale, min
    logp = head[..., 1:2].astype(np.float64) + head[..., 0:1].astype(np.float64) * rows[..., 4:4 + vocab]
    return int(n_ctx), tokens, logp


def llama_perplexity(bindir, gguf, text_path, ctx, threads, workdir, vocab):
    kld = os.path.join(workdir, f"llama-ppl-c{ctx}.kld")
    cmd = [os.path.join(bindir, "llama-perplexity"), "-m", gguf, "-f", text_path, "-c", str(ctx), "-b", str(ctx),
           "-t", str(threads), "--kl-divergence-base", kld]
    r = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", r.stdout + r.stderr)
    if r.returncode != 0 or not m:
        raise SystemExit(f"llama-perplexity failed ({r.returncode}):\n{(r.stdout + r.stderr)[-2000:]}")
    n_ctx, tokens, logp = read_kld_base(kld, vocab)
    return {"ppl": float(m.group(1)), "ppl_err": float(m.group(2)), "cmd": " ".join(cmd)}, tokens, logp


def llama_tokenize(bindir, gguf, text):
    r = subprocess.run([os.path.join(bindir, "llama-tokenize"), "-m", gguf, "-p", text, "--ids", "--log-disable"],
                       capture_output=True, text=True, check=True)
    return [int(t) for t in re.findall(r"-?\d+", r.stdout.strip().splitlines()[-1])]


def llama_greedy(bindir, gguf, prompt, n):
    """llama-simple: greedy, stops at end-of-generation; prints the prompt, then the answer."""
    r = subprocess.run([os.path.join(bindir, "llama-simple"), "-m", gguf, "-n", str(n), prompt],
                       capture_output=True, text=True, check=True)
    out = r.stdout
    if not out.startswith(prompt):
        raise SystemExit(f"llama-simple output does not start with the prompt: {out[:200]!r}")
    return out[len(prompt):].removesuffix("\n")


# ---------------------------------------------------------------------------------------------
# the measures
# ---------------------------------------------------------------------------------------------

def chunk_scores(logp_rows, targets):
    return -logp_rows[np.arange(len(targets)), targets]


def kl_top1(ref_lp, lp):
    kl = (np.exp(ref_lp) * (ref_lp - lp)).sum(-1)
    return kl, ref_lp.argmax(-1) == lp.argmax(-1)


NLL = {}  # row name -> per-token negative log-likelihoods, for paired differences


def ppl_block(name, logp_chunks, ref_chunks, targets):
    nll = np.concatenate([chunk_scores(lp, t) for lp, t in zip(logp_chunks, targets)])
    NLL[name] = nll
    out = {"ppl": float(np.exp(nll.mean())), "scored_tokens": int(len(nll))}
    if ref_chunks is not None:
        kl, top = zip(*(kl_top1(r, lp) for r, lp in zip(ref_chunks, logp_chunks)))
        out["mean_kl"] = float(np.concatenate(kl).mean())
        out["top1"] = float(np.concatenate(top).mean())
    return out


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def content(seqs, stop):
    """Answers without their final stop token: llama-simple prints none, so all compare alike."""
    return [s[:-1] if s and s[-1] in stop else s for s in seqs]


def greedy_block(seqs, ref_seqs):
    agree = [common_prefix(s, r) / max(len(r), 1) for s, r in zip(seqs, ref_seqs)]
    return {"identical": int(sum(s == r for s, r in zip(seqs, ref_seqs))), "prompts": len(seqs),
            "mean_prefix_agreement": float(np.mean(agree))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--forms", default="exact,int8,exact-float-zp")
    ap.add_argument("--text", default=os.path.join(REPO, "tests", "data", "ppl.txt"))
    ap.add_argument("--prompts", default=os.path.join(REPO, "tests", "data", "llm_prompts.txt"))
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "reflexd-numerics"))
    ap.add_argument("--build-llama", action="store_true", help="build llama.cpp if needed (~10 min)")
    ap.add_argument("--json")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    names = [n for n in a.forms.split(",") if n]
    dirs = convert_forms(a.gguf, names, a.workdir)
    from tokenizers import Tokenizer
    first = dirs[names[0]]
    gen = json.load(open(os.path.join(first, "generation.json")))
    tok = Tokenizer.from_file(os.path.join(first, "tokenizer.json"))
    vocab, stop = gen["vocab_size"], set(gen["stop_token_ids"])
    text = open(a.text, encoding="utf-8").read()
    ids = tok.encode(text, add_special_tokens=True).ids
    ctx, half = a.ctx, a.ctx // 2
    n_chunk = len(ids) // ctx
    if n_chunk < 2:
        raise SystemExit(f"{a.text}: {len(ids)} tokens, need at least {2 * ctx}")
    chunks = [ids[c * ctx:(c + 1) * ctx] for c in range(n_chunk)]
    targets = [np.asarray(c[half + 1:]) for c in chunks]
    res = {"gguf": os.path.basename(a.gguf), "text": os.path.relpath(a.text, REPO), "text_tokens": len(ids),
           "ctx": ctx, "chunks": n_chunk, "threads": a.threads, "rows": {}}
    t0 = time.time()

    prompts = [p for p in open(a.prompts, encoding="utf-8").read().splitlines() if p.strip()]
    ptexts = [chat_prompt(gen, [{"role": "user", "content": p}]) for p in prompts]
    pids = [tok.encode(t, add_special_tokens=True).ids for t in ptexts]
    print(f"numerics: float64 reference over {n_chunk} chunks of {ctx} and {len(pids)} prompts ...", flush=True)
    ref = FloatReference(a.gguf)
    # the reference is the slow part: kept in the workdir, keyed by everything it depends on
    key = hashlib.sha256(json.dumps([sha256(a.gguf), sha256(os.path.join(HERE, "reference.py")), ids, pids,
                                     ctx, a.tokens]).encode()).hexdigest()[:16]
    cache = os.path.join(a.workdir, f"reference-{key}.npz")
    if os.path.exists(cache):
        z = np.load(cache)
        ref_lp = list(z["lp"])
        ref_seqs = [list(map(int, z[f"seq{i}"])) for i in range(len(pids))]
    else:
        ref_lp = [log_softmax(ref.logits(c)[half:ctx - 1]) for c in chunks]
        ref_seqs = [ref.greedy(p, a.tokens, stop) for p in pids]
        np.savez(cache, lp=np.stack(ref_lp), **{f"seq{i}": np.array(s_) for i, s_ in enumerate(ref_seqs)})
    res["rows"]["float64 reference"] = ppl_block("float64 reference", ref_lp, None, targets)
    res["rows"]["float64 reference"]["greedy"] = greedy_block(content(ref_seqs, stop), content(ref_seqs, stop))

    bindir = llama_bin(a.build_llama)
    if bindir:
        print(f"numerics: llama.cpp ({bindir}) ...", flush=True)
        info, ltoks, llp = llama_perplexity(bindir, a.gguf, a.text, ctx, a.threads, a.workdir, vocab)
        same = list(ltoks) == ids[:n_chunk * ctx]
        prompt_ids_same = all(llama_tokenize(bindir, a.gguf, t) == p for t, p in zip(ptexts, pids))
        row = ppl_block("llama.cpp", list(llp), ref_lp, targets)
        row.update(llama_ppl_reported=info["ppl"], llama_ppl_err=info["ppl_err"], text_ids_match=same,
                   prompt_ids_match=prompt_ids_same)
        texts = [llama_greedy(bindir, a.gguf, t, a.tokens) for t in ptexts]
        lseqs = [tok.encode(t, add_special_tokens=False).ids[:a.tokens] for t in texts]
        row["greedy"] = greedy_block(lseqs, content(ref_seqs, stop))
        row["greedy"]["first_answer"] = texts[0]
        res["rows"]["llama.cpp"] = row
        res["llama_cmd"] = info["cmd"]
        if not same:
            print("numerics: WARNING: llama-perplexity tokenized the text differently", flush=True)
    else:
        print("numerics: llama.cpp not built (scripts/llama-cpp.sh or --build-llama): its row is skipped")

    # teacher forcing along the reference's own answers: its log-probs there, once for all forms
    ref_path = [log_softmax(ref.forward(p + r)[len(p) - 1:len(p) + len(r) - 1]) for p, r in zip(pids, ref_seqs)]
    for name in names:
        print(f"numerics: {name} ...", flush=True)
        dec = Decoder(dirs[name], a.threads)
        lp = [log_softmax(dec.run(c, dec.empty_past())[0][half:ctx - 1]) for c in chunks]
        row = ppl_block(name, lp, ref_lp, targets)
        seqs = [dec.greedy(p, a.tokens, stop)[0] for p in pids]
        row["greedy"] = greedy_block(content(seqs, stop), content(ref_seqs, stop))
        row["greedy"]["first_answer"] = tok.decode([t for t in seqs[0] if t not in stop])
        kls, tops = [], []
        for p, r, rl in zip(pids, ref_seqs, ref_path):
            full = p + r
            lg = dec.run(full, dec.empty_past())[0][len(p) - 1:len(full) - 1]
            kl, top = kl_top1(rl, log_softmax(lg))
            kls.append(kl)
            tops.append(top)
        row["greedy_path_kl"] = float(np.concatenate(kls).mean())
        row["greedy_path_top1"] = float(np.concatenate(tops).mean())
        res["rows"][name] = row
    if "llama.cpp" in NLL:
        # paired: the same tokens scored by both, so the text's own variance cancels
        for name, row in res["rows"].items():
            d = NLL[name] - NLL["llama.cpp"]
            row["vs_llama_pct"] = float(np.expm1(d.mean()) * 100)
            row["vs_llama_se_pct"] = float(d.std(ddof=1) / np.sqrt(len(d)) * 100) if name != "llama.cpp" else 0.0
    res["seconds"] = round(time.time() - t0, 1)
    print_table(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")


def print_table(res):

    print(f"\n{res['gguf']}: perplexity on {res['text']} ({res['text_tokens']} tokens; ctx {res['ctx']}, "
          f"{res['chunks']} chunks, second halves scored like llama-perplexity)\n")
    print("| | perplexity | vs llama.cpp (± paired s.e.) | mean KL vs float64 | top-1 vs float64 | greedy identical "
          "| greedy prefix agreement | KL / top-1 on the greedy path |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in res["rows"].items():
        rel = f"{r['vs_llama_pct']:+.2f} % ± {r['vs_llama_se_pct']:.2f}" if "vs_llama_pct" in r else "—"
        kl = f"{r['mean_kl']:.4f}" if "mean_kl" in r else "—"
        top = f"{r['top1'] * 100:.1f} %" if "top1" in r else "—"
        g = r.get("greedy", {})
        gi = f"{g['identical']}/{g['prompts']}" if g else "—"
        gp = f"{g['mean_prefix_agreement'] * 100:.1f} %" if g else "—"
        path = f"{r['greedy_path_kl']:.4f} / {r['greedy_path_top1'] * 100:.1f} %" if "greedy_path_kl" in r else "—"
        print(f"| {name} | {r['ppl']:.4f} | {rel} | {kl} | {top} | {gi} | {gp} | {path} |")
    ll = res["rows"].get("llama.cpp")
    if ll:
        print(f"\nllama-perplexity reported PPL {ll['llama_ppl_reported']} +/- {ll['llama_ppl_err']}; text ids match: "
              f"{ll['text_ids_match']}; prompt ids match llama-tokenize: {ll['prompt_ids_match']}")
    for name, r in res["rows"].items():
        if "first_answer" in r.get("greedy", {}):
            print(f"first prompt, {name}: {r['greedy']['first_answer']!r}")
    print(f"({res['seconds']} s)")


if __name__ == "__main__":
    main()
