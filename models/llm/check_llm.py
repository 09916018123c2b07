#!/usr/bin/env python3
"""check_llm.py - verify a model directory written by convert_gguf.py.

    python check_llm.py MODEL_DIR [--gguf MODEL.gguf] [--threads 2] [--json results.json]

Default MODEL_DIR: models/llm/fetched (provisioned SmolLM2-135M-Instruct). Needs numpy,
onnxruntime, tokenizers and (for the reference and format checks) gguf.

  (a) chat answer: greedy answer to "What is the capital of France?" must contain "Paris"
      (a lossy form - int8 activations, the default conversion - must give a non-empty answer)
  (b) conversion quality: perplexity of a fixed answer and of a passage, top-1 agreement, max
      logit error and mean KL against a float64 numpy forward pass (reference.py) over the GGUF
      weights dequantized by gguf's own reference code, using llama.cpp's conventions (raw GGUF
      Q/K rows, interleaved RoPE) - so it checks the row permutation and the exact weight
      mapping at the same time; a lossy form must stay inside LOSSY_BOUNDS
  (c) KV cache: logits of a step with past (1 token, and a 5-token chunk) == full recompute
      (lossy form: KL between them within LOSSY_BOUNDS)
  (d) timing: prefill of the chat prompt and ms/token over 64 greedy decode steps
  (e) formats: every GGUF block format the converter maps exactly, decoded and run through the
      same MatMulNBits construction on random data, against gguf's dequantizer
Exits non-zero if (a), (c) or (e) fails, or (b) for a lossy form; (d) is reported.
The form is read from generation.json (accuracy_level 4 = int8 activations = lossy).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
QUESTION = "What is the capital of France?"
FIXED_ANSWER = "The capital of France is Paris."
# a second, longer fixed text (plain, no chat template) for a less noisy perplexity figure
PASSAGE = ("Water boils at 100 degrees Celsius at sea level. At higher altitudes the air pressure is lower, "
           "so water boils at a lower temperature and food takes longer to cook. This is why pressure "
           "cookers are popular in mountain towns: by raising the pressure inside the pot, they raise the "
           "boiling point and shorten the cooking time.")


# A lossy form (int8 activations: generation.json accuracy_level 4) is held to bounds instead
# of equality. They sit about 2x above what SmolLM2-135M Q4_1 measures (README, "Numerics"):
# loose enough for kernel noise, far below what a mapping or cache bug does (KL > 1).
LOSSY_BOUNDS = {"passage_ppl_ratio": 1.06, "mean_kl": 0.05, "top1": 0.80, "kv_kl": 0.05,
                "matmul_rel_err": 3e-2}


# ---------------------------------------------------------------------------------------------
# prompt + session helpers
# ---------------------------------------------------------------------------------------------

def chat_prompt(gen, messages, add_generation_prompt=True):
    """Apply generation.json's simple chat template (what the Rust side is expected to do)."""
    ct = gen["chat_template"]
    if ct is None:
        raise SystemExit("generation.json has no simple chat template for this model")
    out = ct.get("bos", "")
    if messages and messages[0]["role"] != "system" and ct.get("default_system"):
        out += ct["system_prefix"] + ct["default_system"] + ct["system_suffix"]
    for m in messages:
        out += ct[m["role"] + "_prefix"] + m["content"] + ct[m["role"] + "_suffix"]
    if add_generation_prompt:
        out += ct["generation_prompt"]
    return out


class Decoder:
    def __init__(self, model_dir, threads, spinning=None):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if spinning is not None:  # None = the library's default (spinning on)
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        t = time.perf_counter()
        self.sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so,
                                         providers=["CPUExecutionProvider"])
        self.load_ms = (time.perf_counter() - t) * 1e3
        gen = json.load(open(os.path.join(model_dir, "generation.json")))
        self.L, self.kv, self.hd = gen["num_layers"], gen["num_key_value_heads"], gen["head_dim"]
        self.out_names = [o.name for o in self.sess.get_outputs()]
        # optional input (an overridable initializer): absent from get_inputs()
        self.has_keep = any(o.name == "num_logits_to_keep" for o in self.sess.get_overridable_initializers())

    def empty_past(self):
        z = np.zeros((1, self.kv, 0, self.hd), np.float32)
        return [(z, z) for _ in range(self.L)]

    def run(self, ids, past, keep=0):
        """ids: list of new token ids; past: list of (k, v). Returns (logits [S,V], present);
        keep=K > 0 asks for the last K positions only (models without the input give all)."""
        p = past[0][0].shape[2]
        s = len(ids)
        feed = {"input_ids": np.array([ids], np.int64),
                "attention_mask": np.ones((1, p + s), np.int64),
                "position_ids": np.arange(p, p + s, dtype=np.int64)[None]}
        if keep and self.has_keep:
            feed["num_logits_to_keep"] = np.array(keep, np.int64)
        for i, (k, v) in enumerate(past):
            feed[f"past_key_values.{i}.key"] = k
            feed[f"past_key_values.{i}.value"] = v
        out = self.sess.run(None, feed)
        res = dict(zip(self.out_names, out))
        present = [(res[f"present.{i}.key"], res[f"present.{i}.value"]) for i in range(self.L)]
        return res["logits"][0], present

    def greedy(self, ids, n, stop=(), timing=False):
        t0 = time.perf_counter()
        logits, past = self.run(ids, self.empty_past(), keep=1)
        t_prefill = time.perf_counter() - t0
        out, steps = [], []
        for _ in range(n):
            nxt = int(np.argmax(logits[-1]))
            out.append(nxt)
            if nxt in stop:
                break
            t = time.perf_counter()
            logits, past = self.run([nxt], past, keep=1)
            steps.append(time.perf_counter() - t)
        return out, t_prefill, steps


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# ---------------------------------------------------------------------------------------------
# (b) float reference straight from the GGUF (llama.cpp conventions)
# ---------------------------------------------------------------------------------------------

def mean_kl(ref_logits, logits):
    """mean over positions of KL(P_ref || P) in nats"""
    lr, lp = log_softmax(ref_logits), log_softmax(logits)
    return float((np.exp(lr) * (lr - lp)).sum(-1).mean())


# ---------------------------------------------------------------------------------------------
# (e) every exactly-mapped block format through the converter's MatMulNBits construction
# ---------------------------------------------------------------------------------------------

def format_checks(accuracy_level=0):
    import gguf
    import onnxruntime as ort
    from gguf import GGMLQuantizationType as QT
    from onnx import TensorProto, helper
    sys.path.insert(0, HERE)
    import convert_gguf as cg

    rng = np.random.default_rng(1234)
    # byte offsets of the float16 fields inside one block, so random bytes get sane scales
    f16_fields = {QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
                  QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208]}
    n, k, m = 48, 512, 3
    results = {}
    for qt, offs in f16_fields.items():
        blk, tsz = gguf.GGML_QUANT_SIZES[qt]
        raw = rng.integers(0, 256, (n, k // blk, tsz), dtype=np.uint8)
        for o in offs:
            val = (rng.random((n, k // blk)) * 0.02 + 0.001) * rng.choice([-1, 1], (n, k // blk))
            raw[:, :, o:o + 2] = val.astype(np.float16)[..., None].view(np.uint8)
        raw = raw.reshape(n, -1)
        ref = np.asarray(gguf.quants.dequantize(raw, qt), np.float32).reshape(n, k)
        w = cg.decode_blocks(qt, raw, n, k)
        dec_err = float(np.abs(w.dequantize() - ref).max())
        g = cg.Graph(accuracy_level)
        (y,) = g.linear("x", [w], "w")
        g.nodes.append(helper.make_node("Identity", [y], ["y"]))
        graph = helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", cg.OPSET),
                                                        helper.make_opsetid(cg.MS, 1)], ir_version=cg.IR_VERSION)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        x = rng.standard_normal((m, k)).astype(np.float32)
        yo = sess.run(None, {"x": x})[0]
        yr = x.astype(np.float64) @ ref.astype(np.float64).T
        rel = float(np.abs(yo - yr).max() / np.abs(yr).max())
        results[QT(qt).name] = {"decode_max_abs_err": dec_err, "matmul_rel_err": rel,
                                "onnx": f"{w.bits}-bit block {w.bs}" + (" + mins" if w.mins is not None else "")}
    return results


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", default=os.path.join(HERE, "fetched"))
    ap.add_argument("--gguf", help="source GGUF for the float reference (b); skipped if not given/found")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()

    from tokenizers import Tokenizer
    md = a.model_dir
    gen = json.load(open(os.path.join(md, "generation.json")))
    tok = Tokenizer.from_file(os.path.join(md, "tokenizer.json"))
    stop = set(gen["stop_token_ids"])
    res = {"model_dir": os.path.realpath(md), "model_name": gen["model_name"], "threads": a.threads}
    failures = []

    lossy = gen.get("accuracy_level", 0) == 4
    res["numerics"] = gen.get("numerics", "int8-activations" if lossy else "exact")
    dec = Decoder(md, a.threads)
    res["session_load_ms"] = round(dec.load_ms, 1)
    prompt = chat_prompt(gen, [{"role": "user", "content": QUESTION}])
    p_ids = tok.encode(prompt, add_special_tokens=True).ids
    res["prompt_tokens"] = len(p_ids)

    # (a) greedy chat answer
    dec.greedy(p_ids, 2, stop)  # warm-up
    out, _, _ = dec.greedy(p_ids, 64, stop)
    answer = tok.decode([t for t in out if t not in stop], skip_special_tokens=False)
    ended = bool(out) and out[-1] in stop
    res["a_answer"] = answer
    res["a_answer_ids"] = out
    res["a_stopped_on"] = tok.id_to_token(out[-1]) if ended else None
    if lossy:
        # The exact answer sits on a 0.08-logit knife edge (see README): a lossy form, like
        # llama.cpp on the same GGUF, answers "L'Étoile, la Marseillaise, ..." and may not end
        # within 64 tokens. Only an empty answer fails here; the quality gate is (b).
        ok_a = bool(answer.strip())
        why = "empty answer"
    else:
        ok_a = "Paris" in answer
        why = "answer does not contain 'Paris'"
    res["a_ok"] = ok_a
    if not ok_a:
        failures.append(f"(a) {why}")
    print(f"(a) answer: {answer!r} (then {res['a_stopped_on']}) -> {'OK' if ok_a else 'FAIL'}", flush=True)

    # (b) quality vs float reference
    ans_ids = tok.encode(FIXED_ANSWER, add_special_tokens=False).ids + [gen["eos_token_id"]]
    seq = p_ids + ans_ids
    logits_onnx, _ = dec.run(seq, dec.empty_past())
    lp = log_softmax(logits_onnx)
    tgt_pos = np.arange(len(p_ids) - 1, len(seq) - 1)
    nll_onnx = -lp[tgt_pos, ans_ids].mean()
    res["b_answer_tokens"] = len(ans_ids)
    res["b_ppl_onnx"] = round(float(np.exp(nll_onnx)), 4)
    first = np.sort(logits_onnx[len(p_ids) - 1])[::-1]
    res["b_first_token_margin_onnx"] = round(float(first[0] - first[1]), 4)
    pas_ids = tok.encode(PASSAGE, add_special_tokens=True).ids
    logits_pas, _ = dec.run(pas_ids, dec.empty_past())
    res["b_passage_tokens"] = len(pas_ids)
    res["b_passage_ppl_onnx"] = round(float(np.exp(-log_softmax(logits_pas)[np.arange(len(pas_ids) - 1), pas_ids[1:]].mean())), 4)
    gguf_path = a.gguf
    if not gguf_path and gen.get("source", {}).get("gguf_file"):
        for cand in (os.path.join(md, gen["source"]["gguf_file"]), os.path.join(md, "..", gen["source"]["gguf_file"])):
            if os.path.exists(cand):
                gguf_path = cand
                break
    if gguf_path and os.path.exists(gguf_path):
        t = time.perf_counter()
        sys.path.insert(0, HERE)
        from reference import FloatReference
        reference = FloatReference(gguf_path)
        ref = reference.logits(seq)
        lr = log_softmax(ref)
        nll_ref = -lr[tgt_pos, ans_ids].mean()
        res["b_ppl_reference"] = round(float(np.exp(nll_ref)), 4)
        res["b_top1_agreement"] = round(float((ref.argmax(-1) == logits_onnx.argmax(-1)).mean()), 4)
        res["b_positions"] = len(seq)
        res["b_max_abs_logit_diff"] = float(np.abs(ref - logits_onnx).max())
        first_r = np.sort(ref[len(p_ids) - 1])[::-1]
        res["b_first_token_margin_reference"] = round(float(first_r[0] - first_r[1]), 4)
        ref_pas = reference.logits(pas_ids)
        res["b_passage_ppl_reference"] = round(float(np.exp(-log_softmax(ref_pas)[np.arange(len(pas_ids) - 1), pas_ids[1:]].mean())), 4)
        res["b_passage_top1_agreement"] = round(float((ref_pas.argmax(-1) == logits_pas.argmax(-1)).mean()), 4)
        res["b_passage_max_abs_logit_diff"] = float(np.abs(ref_pas - logits_pas).max())
        res["b_mean_kl"] = mean_kl(np.concatenate([ref, ref_pas]), np.concatenate([logits_onnx, logits_pas]))
        if lossy:
            bad = []
            ratio = res["b_passage_ppl_onnx"] / res["b_passage_ppl_reference"]
            if ratio > LOSSY_BOUNDS["passage_ppl_ratio"]:
                bad.append(f"passage perplexity {ratio:.3f} x the reference")
            if res["b_mean_kl"] > LOSSY_BOUNDS["mean_kl"]:
                bad.append(f"mean KL {res['b_mean_kl']:.4f}")
            if res["b_passage_top1_agreement"] < LOSSY_BOUNDS["top1"]:
                bad.append(f"top-1 agreement {res['b_passage_top1_agreement']:.3f}")
            if bad:
                failures.append("(b) lossy form outside its quality bounds: " + ", ".join(bad))
        res["b_reference_s"] = round(time.perf_counter() - t, 1)
        print(f"(b) perplexity of {FIXED_ANSWER!r}+eos ({len(ans_ids)} tokens): onnx {res['b_ppl_onnx']:.4f}, "
              f"float reference {res['b_ppl_reference']:.4f}; top-1 agreement {res['b_top1_agreement'] * 100:.1f}% "
              f"over {len(seq)} positions; max |logit diff| {res['b_max_abs_logit_diff']:.2e}; logit margin top-1 over "
              f"runner-up at the first answer position {res['b_first_token_margin_onnx']:.3f} (reference "
              f"{res['b_first_token_margin_reference']:.3f})", flush=True)
        print(f"    fixed passage ({len(pas_ids)} tokens): perplexity onnx {res['b_passage_ppl_onnx']:.4f}, reference "
              f"{res['b_passage_ppl_reference']:.4f}; top-1 agreement {res['b_passage_top1_agreement'] * 100:.1f}%; "
              f"max |logit diff| {res['b_passage_max_abs_logit_diff']:.2e}; mean KL(reference || onnx) over both "
              f"{res['b_mean_kl']:.4f} nats" + (f" (lossy bounds {LOSSY_BOUNDS})" if lossy else ""), flush=True)
    else:
        print(f"(b) perplexity of the fixed answer: onnx {res['b_ppl_onnx']:.4f}, fixed passage "
              f"{res['b_passage_ppl_onnx']:.4f} (no GGUF found: float reference skipped)")

    # (c) KV cache consistency
    full, _ = dec.run(seq, dec.empty_past())
    _, past = dec.run(seq[:-1], dec.empty_past())
    step, _ = dec.run(seq[-1:], past)
    _, past20 = dec.run(seq[:20], dec.empty_past())
    chunk, past_c = dec.run(seq[20:25], past20)
    chunk_step, _ = dec.run(seq[25:30], past_c)
    d1 = float(np.abs(step[-1] - full[-1]).max())
    d2 = max(float(np.abs(chunk - full[20:25]).max()), float(np.abs(chunk_step - full[25:30]).max()))
    same_argmax = bool(step[-1].argmax() == full[-1].argmax()) and bool(
        (chunk.argmax(-1) == full[20:25].argmax(-1)).all())
    if lossy:
        # int8 activations: the one-row kernel rounds differently from the many-row one, so a
        # step differs from a recompute by kernel noise; a cache bug (wrong positions or K/V)
        # would show as a distribution far away, which the KL bound catches.
        kl_c = max(mean_kl(full[-1:], step[-1:]), mean_kl(full[20:30], np.concatenate([chunk, chunk_step])))
        res["c_max_kl"] = kl_c
        ok_c = kl_c <= LOSSY_BOUNDS["kv_kl"]
    else:
        ok_c = d1 < 2e-3 and d2 < 2e-3 and same_argmax
    res["c_step_vs_full_max_abs"] = d1
    res["c_chunks_vs_full_max_abs"] = d2
    res["c_ok"] = ok_c
    if not ok_c:
        failures.append("(c) KV-cache step differs from full recompute")
    kl_txt = f"; max KL {res['c_max_kl']:.4f} (bound {LOSSY_BOUNDS['kv_kl']})" if lossy else ""
    print(f"(c) KV cache: 1-token step vs full recompute max |diff| {d1:.2e}; 5-token chunks {d2:.2e}{kl_txt} "
          f"-> {'OK' if ok_c else 'FAIL'}", flush=True)

    # (d) timing
    pre = []
    for _ in range(5):
        t = time.perf_counter()
        dec.run(p_ids, dec.empty_past(), keep=1)
        pre.append(time.perf_counter() - t)
    _, _, steps = dec.greedy(p_ids, a.decode_tokens + 1, stop=())
    steps = np.array(steps[:a.decode_tokens]) * 1e3
    res["d_prefill_ms_median"] = round(float(np.median(pre)) * 1e3, 1)
    res["d_decode_ms_per_token_mean"] = round(float(steps.mean()), 2)
    res["d_decode_ms_per_token_median"] = round(float(np.median(steps)), 2)
    res["d_decode_tokens"] = int(len(steps))
    try:
        res["d_loadavg"] = os.getloadavg()[0]
    except OSError:
        pass
    print(f"(d) timing ({a.threads} threads): prefill {len(p_ids)} tokens {res['d_prefill_ms_median']} ms (median of 5); "
          f"decode {len(steps)} tokens {res['d_decode_ms_per_token_mean']} ms/token mean, "
          f"{res['d_decode_ms_per_token_median']} median; load average {res.get('d_loadavg', '?')}", flush=True)

    # (e) block formats
    try:
        fr = format_checks(gen.get("accuracy_level", 0))
        res["e_formats"] = fr
        tol = LOSSY_BOUNDS["matmul_rel_err"] if lossy else 1e-5
        bad = [k for k, v in fr.items() if v["decode_max_abs_err"] != 0.0 or v["matmul_rel_err"] > tol]
        if bad:
            failures.append(f"(e) formats {bad}")
        print("(e) formats: " + ", ".join(f"{k} ({v['onnx']}) decode err {v['decode_max_abs_err']:.0e}, "
                                          f"matmul rel err {v['matmul_rel_err']:.1e}" for k, v in fr.items())
              + (" -> OK" if not bad else f" -> FAIL {bad}"), flush=True)
    except ImportError as e:
        print(f"(e) formats: skipped ({e})")

    res["failures"] = failures
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    print("check_llm: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
