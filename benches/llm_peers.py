#!/usr/bin/env python3
"""llm_peers.py - the Python peers of `cargo bench --bench llm`.

The benchmark compares reflexd's token generation with two Python generate
loops on the same converted model file, each run in its own long-lived
process so the model is loaded once and measured runs can be interleaved with
the Rust ones (noise then hits every contender alike):

  --engine ort     a plain onnxruntime loop: chat template + `tokenizers`
                   encode, prefill with empty pasts, then one `InferenceSession.run`
                   per token, `present.*` fed back as `past_key_values.*`, greedy
                   argmax (the loop check_llm.py uses, run with the project venv);
                   feeds num_logits_to_keep = 1 when the model has that optional
                   input (--all-logits: never, like a loop unaware of it)
  --engine genai   onnxruntime-genai (run with its own venv): its tokenizer,
                   `Generator.append_tokens` + `generate_next_token`, greedy
  --write-genai-config DIR
                   writes genai_config.json + tokenizer_config.json into DIR next
                   to symlinks of model.onnx / tokenizer.json (needs the project
                   venv: the config comes from convert_gguf.genai_files, the one
                   the converter's --genai-config option writes)

Protocol (line-based, so the parent needs no Python-side library): after
loading, one JSON line {"ready": true, ...}; then each stdin line "run" (the
--prompt question) or "run <JSON string>" (that question) gives one JSON line
with the prompt ids, generated ids and timestamps; "quit" or end of input exits. TTFT = tokenize + prefill + first argmax; TPOT = (time of the
last token - time of the first) / (n - 1), the same definitions the Rust side
uses. A watchdog ends the process after --max-seconds whatever the parent does,
so a crashed benchmark never leaves a model-sized process behind.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time


def chat_prompt(gen: dict, question: str) -> str:
    """The prompt reflexd builds for {"prompt": question} (see src/llm/mod.rs)."""
    ct = gen["chat_template"]
    s = ct.get("bos", "")
    if ct.get("default_system"):
        s += ct["system_prefix"] + ct["default_system"] + ct["system_suffix"]
    return s + ct["user_prefix"] + question + ct["user_suffix"] + ct["generation_prompt"]


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class OrtLoop:
    """A plain onnxruntime decode loop, the way a Python user writes it."""

    def __init__(self, model_dir: str, threads: int, spinning: str, all_logits: bool = False):
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.np = np
        self.gen = json.load(open(os.path.join(model_dir, "generation.json")))
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if spinning != "default":
            # Off matches reflexd's default (runtime.intra_op_spinning = false).
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning == "on" else "0")
        t = time.perf_counter()
        self.sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so,
                                         providers=["CPUExecutionProvider"])
        self.load_ms = (time.perf_counter() - t) * 1e3
        self.version = ort.__version__
        self.out_names = [o.name for o in self.sess.get_outputs()]
        # optional input (an initializer-backed graph input): listed as overridable, not as input
        self.keep = None if all_logits or "num_logits_to_keep" not in {
            o.name for o in self.sess.get_overridable_initializers()} else np.array(1, np.int64)
        self.layers = self.gen["num_layers"]
        self.empty = np.zeros((1, self.gen["num_key_value_heads"], 0, self.gen["head_dim"]), np.float32)

    def feed(self, ids, past, past_len):
        np = self.np
        s = len(ids)
        f = {"input_ids": np.array([ids], np.int64),
             "attention_mask": np.ones((1, past_len + s), np.int64),
             "position_ids": np.arange(past_len, past_len + s, dtype=np.int64)[None]}
        if self.keep is not None:
            f["num_logits_to_keep"] = self.keep
        for i in range(self.layers):
            f[f"past_key_values.{i}.key"] = past[2 * i]
            f[f"past_key_values.{i}.value"] = past[2 * i + 1]
        return f

    def run_once(self, question: str, n: int) -> dict:
        np = self.np
        stop = set(self.gen["stop_token_ids"])
        t0 = time.perf_counter()
        ids = self.tok.encode(chat_prompt(self.gen, question), add_special_tokens=False).ids
        t_tok = time.perf_counter()
        past = [self.empty] * (2 * self.layers)
        out = self.sess.run(self.out_names, self.feed(ids, past, 0))
        t_prefill = time.perf_counter()
        past_len = len(ids)
        times, gen_ids = [], []
        while True:
            res = dict(zip(self.out_names, out))
            tok = int(np.argmax(res["logits"][0, -1]))
            times.append(time.perf_counter())
            if tok in stop:
                break
            gen_ids.append(tok)
            if len(gen_ids) >= n:
                break
            past = [res[f"present.{i}.{kv}"] for i in range(self.layers) for kv in ("key", "value")]
            out = self.sess.run(self.out_names, self.feed([tok], past, past_len))
            past_len += 1
        return {"prompt_ids": ids, "ids": gen_ids, "t0": t0, "tokenize_ms": (t_tok - t0) * 1e3,
                "prefill_ms": (t_prefill - t_tok) * 1e3, "token_times": times[:len(gen_ids)]}


class GenaiLoop:
    """onnxruntime-genai's own generate loop on the same model file."""

    def __init__(self, model_dir: str, threads: int, spinning: str):
        import onnxruntime_genai as og

        self.og = og
        self.gen = json.load(open(os.path.join(model_dir, "generation.json")))
        t = time.perf_counter()
        # The thread count is in genai_config.json (session_options).
        self.model = og.Model(model_dir)
        self.tok = og.Tokenizer(self.model)
        self.load_ms = (time.perf_counter() - t) * 1e3
        self.version = og.__version__
        try:
            import onnxruntime
            self.version += f" (onnxruntime {onnxruntime.__version__})"
        except ImportError:
            pass

    def run_once(self, question: str, n: int) -> dict:
        og = self.og
        t0 = time.perf_counter()
        ids = [int(i) for i in self.tok.encode(chat_prompt(self.gen, question))]
        t_tok = time.perf_counter()
        params = og.GeneratorParams(self.model)
        # max_length counts the prompt: exactly n new tokens unless EOS comes first.
        params.set_search_options(do_sample=False, max_length=len(ids) + n)
        g = og.Generator(self.model, params)
        g.append_tokens(ids)
        t_prefill = time.perf_counter()
        times, gen_ids = [], []
        while not g.is_done() and len(gen_ids) < n:
            g.generate_next_token()
            tok = int(g.get_next_tokens()[0])
            times.append(time.perf_counter())
            gen_ids.append(tok)
        # genai returns the EOS it stopped on as a token; the others do not count it.
        if gen_ids and gen_ids[-1] in set(self.gen["stop_token_ids"]):
            gen_ids.pop()
            times.pop()
        del g
        return {"prompt_ids": ids, "ids": gen_ids, "t0": t0, "tokenize_ms": (t_tok - t0) * 1e3,
                "prefill_ms": (t_prefill - t_tok) * 1e3, "token_times": times}


def write_genai_config(model_dir: str, out_dir: str, threads: int) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "models", "llm"))
    import convert_gguf  # noqa: E402  (needs the project venv: numpy, onnx, gguf)

    gen = json.load(open(os.path.join(model_dir, "generation.json")))
    tok = json.load(open(os.path.join(model_dir, "tokenizer.json")))
    names = {t["id"]: t["content"] for t in tok.get("added_tokens", [])}
    os.makedirs(out_dir, exist_ok=True)
    for f in ("model.onnx", "tokenizer.json", "generation.json"):
        link = os.path.join(out_dir, f)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.realpath(os.path.join(model_dir, f)), link)
    # Same fields convert_gguf.py writes with --genai-config; the token names
    # come from tokenizer.json because the GGUF is not needed here.
    tcfg = {"add_bos_token": gen["add_bos_token"], "add_prefix_space": False,
            "bos_token": names.get(gen["bos_token_id"]), "eos_token": names.get(gen["eos_token_id"]),
            "pad_token": names.get(gen["pad_token_id"]), "unk_token": names.get(gen["unk_token_id"]),
            "clean_up_tokenization_spaces": False, "model_max_length": gen["context_length"],
            "tokenizer_class": "GPT2Tokenizer"}
    for fname, obj in (("genai_config.json", convert_gguf.genai_files(gen, threads)),
                       ("tokenizer_config.json", tcfg)):
        with open(os.path.join(out_dir, fname), "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", choices=["ort", "genai"])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spinning", choices=["default", "on", "off"], default="default",
                    help="onnxruntime intra-op spinning (ort engine only; default = the library's)")
    ap.add_argument("--prompt", default="Tell me a long story about a robot.")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--all-logits", action="store_true",
                    help="ort engine: never feed num_logits_to_keep (logits for every prompt position)")
    ap.add_argument("--write-genai-config", metavar="DIR")
    a = ap.parse_args()

    if a.write_genai_config:
        write_genai_config(a.model_dir, a.write_genai_config, a.threads)
        return 0
    if not a.engine:
        ap.error("--engine or --write-genai-config is required")

    # Watchdog: the process never outlives a benchmark that forgot it.
    timer = threading.Timer(a.max_seconds, lambda: os._exit(3))
    timer.daemon = True
    timer.start()

    if a.engine == "ort":
        loop = OrtLoop(a.model_dir, a.threads, a.spinning, a.all_logits)
    else:
        loop = GenaiLoop(a.model_dir, a.threads, a.spinning)
    emit({"ready": True, "engine": a.engine, "version": loop.version, "load_ms": round(loop.load_ms, 1),
          "spinning": a.spinning if a.engine == "ort" else "genai default",
          "logits_to_keep": a.engine == "ort" and loop.keep is not None})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd == "run":
            question = a.prompt
        elif cmd.startswith("run "):
            question = json.loads(cmd[4:])
        else:
            emit({"error": f"unknown command {cmd!r}"})
            continue
        r = loop.run_once(question, a.tokens)
        t0, times = r.pop("t0"), r.pop("token_times")
        n = len(times)
        r["ttft_ms"] = (times[0] - t0) * 1e3 if n else None
        r["tpot_ms"] = (times[-1] - times[0]) * 1e3 / (n - 1) if n > 1 else None
        r["step_ms"] = [(b - a_) * 1e3 for a_, b in zip(times, times[1:])]
        emit(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
