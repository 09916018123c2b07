"""gguf_meta.py - the non-weight half of convert_gguf.py: GGUF metadata access, the tokenizer.json
built from the GGUF vocabulary and merges, generation.json (stop ids, chat template, geometry,
ONNX interface) and onnxruntime-genai's config files. Kept apart so the converter proper is the
weight mapping and the graph; both produce the same files as before the split.
"""
from __future__ import annotations

import re
import sys

LOGITS_TO_KEEP = "num_logits_to_keep"  # Hugging Face's name for the optional input


# ---------------------------------------------------------------------------------------------
# GGUF metadata
# ---------------------------------------------------------------------------------------------


class Meta:
    def __init__(self, reader):
        self.fields = {}
        for key, f in reader.fields.items():
            try:
                self.fields[key] = f.contents()
            except Exception:  # noqa: BLE001 - skip fields gguf cannot decode
                pass

    def get(self, key, default=None):
        return self.fields.get(key, default)

    def req(self, key):
        if key not in self.fields:
            sys.exit(f"convert_gguf.py: GGUF lacks required metadata '{key}'")
        return self.fields[key]


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) -> our three families
PRE_FAMILIES = {
    "digits+gpt2": {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"},
    "gpt2": {"gpt-2", "default", "gpt2"},
    "llama3": {"llama3", "llama-bpe", "llama-v3", "smaug-bpe"},
}


def build_tokenizer(meta, pre_override):
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        sys.exit(f"convert_gguf.py: tokenizer.ggml.model = {model!r}: only byte-level BPE ('gpt2') "
                 "vocabularies are supported (SentencePiece 'llama' vocabularies are not)")
    tokens = meta.req("tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = meta.req("tokenizer.ggml.merges")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre_override and pre_override != "auto":
        family = pre_override
    else:
        family = next((f for f, names in PRE_FAMILIES.items() if pre in names), None)
        if family is None:
            sys.exit(f"convert_gguf.py: unknown pre-tokenizer tokenizer.ggml.pre = {pre!r}; pass "
                     "--pre-tokenizer digits+gpt2|gpt2|llama3 if you know which one it is")
    if family == "digits+gpt2":
        pre_tok = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    elif family == "gpt2":
        pre_tok = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    else:
        pre_tok = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}

    added = []
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty in (3, 4):  # CONTROL, USER_DEFINED
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": ty == 3})
    pairs = [m.split(" ", 1) for m in merges]
    if any(len(p) != 2 for p in pairs):
        sys.exit("convert_gguf.py: malformed merges in the GGUF")
    merges_out = merges if all(" " not in a and " " not in b for a, b in pairs) else pairs
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    if add_bos and bos_id is not None:
        bos = tokens[bos_id]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    else:
        post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    tok_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tok,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None,
            "unk_token": tokens[unk_id] if unk_id is not None and family != "llama3" else None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": family == "llama3",
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": merges_out,
        },
    }
    return tok_json, family, pre


# ---------------------------------------------------------------------------------------------
# Generation config / chat template
# ---------------------------------------------------------------------------------------------

EOG_TEXTS = {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
             "<|end_of_text|>", "<EOT>", "</s>"}


def simple_chat_template(tmpl, tokens, bos_text, add_bos):
    """Recognise the common template families and express them as prefixes/suffixes."""
    if not tmpl:
        return None
    if "<|im_start|>" in tmpl:
        m = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", tmpl, re.S)
        default_system = m.group(1) if m and "messages[0]['role'] != 'system'" in tmpl.replace('"', "'") else None
        return {
            "format": "chatml",
            "bos": bos_text if add_bos else "",
            "default_system": default_system,
            "system_prefix": "<|im_start|>system\n", "system_suffix": "<|im_end|>\n",
            "user_prefix": "<|im_start|>user\n", "user_suffix": "<|im_end|>\n",
            "assistant_prefix": "<|im_start|>assistant\n", "assistant_suffix": "<|im_end|>\n",
            "generation_prompt": "<|im_start|>assistant\n",
        }
    if "<|start_header_id|>" in tmpl:
        h = "<|start_header_id|>{}<|end_header_id|>\n\n"
        return {
            "format": "llama3",
            "bos": bos_text if add_bos else "",
            "default_system": None,
            "system_prefix": h.format("system"), "system_suffix": "<|eot_id|>",
            "user_prefix": h.format("user"), "user_suffix": "<|eot_id|>",
            "assistant_prefix": h.format("assistant"), "assistant_suffix": "<|eot_id|>",
            "generation_prompt": h.format("assistant"),
        }
    return None


def build_generation(meta, tokens, dims, model_name, gguf_name, gguf_sha):
    eos = meta.get("tokenizer.ggml.eos_token_id")
    bos = meta.get("tokenizer.ggml.bos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    stop = set()
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        if meta.get(key) is not None:
            stop.add(int(meta.get(key)))
    stop |= {i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3 and t in EOG_TEXTS}
    tmpl = meta.get("tokenizer.chat_template")
    bos_text = tokens[bos] if bos is not None else ""
    return {
        "model_name": model_name,
        "architecture": "llama",
        "bos_token_id": bos,
        "add_bos_token": add_bos,
        "eos_token_id": eos,
        "stop_token_ids": sorted(stop),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "unk_token_id": meta.get("tokenizer.ggml.unknown_token_id"),
        "chat_template": simple_chat_template(tmpl, tokens, bos_text, add_bos),
        "chat_template_jinja": tmpl,
        **dims,
        "onnx": {
            "file": "model.onnx",
            "inputs": ["input_ids", "attention_mask", "position_ids",
                       "past_key_values.{i}.key", "past_key_values.{i}.value"],
            "optional_inputs": {LOGITS_TO_KEEP: {"dtype": "int64", "shape": "[] or [1]", "default": 0,
                                                 "meaning": "logits for the last K positions only; 0 = all"}},
            "outputs": ["logits", "present.{i}.key", "present.{i}.value"],
            "logits_shape": "[batch, K or sequence_length, vocab_size]",
            "kv_layout": "[batch, num_key_value_heads, seq, head_dim] float32",
        },
        "source": {"gguf_file": gguf_name, "gguf_sha256": gguf_sha, "converter": "models/llm/convert_gguf.py"},
    }


# ---------------------------------------------------------------------------------------------
# main conversion
# ---------------------------------------------------------------------------------------------


def genai_files(gen, threads=2):
    """genai_config.json + tokenizer_config.json for onnxruntime-genai (tested with 0.18.0)."""
    cfg = {
        "model": {
            "bos_token_id": gen["bos_token_id"],
            "context_length": gen["context_length"],
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "intra_op_num_threads": threads,
                                    "provider_options": []},
                "filename": "model.onnx",
                "head_size": gen["head_dim"],
                "hidden_size": gen["hidden_size"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": gen["num_attention_heads"],
                "num_hidden_layers": gen["num_layers"],
                "num_key_value_heads": gen["num_key_value_heads"],
            },
            "eos_token_id": gen["stop_token_ids"],
            "pad_token_id": gen["pad_token_id"] if gen["pad_token_id"] is not None else gen["eos_token_id"],
            "type": "llama",
            "vocab_size": gen["vocab_size"],
        },
        "search": {"do_sample": False, "max_length": gen["context_length"], "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0, "early_stopping": True, "length_penalty": 1.0,
                   "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }
    return cfg
