"""reference.py - float64 numpy forward pass of a llama GGUF, the yardstick for every conversion.

Weights are dequantized once by gguf's own reference code (not by convert_gguf.py, so a mapping
bug in the converter cannot hide here) and kept as float64. llama.cpp's conventions are used
as stored: raw GGUF Q/K rows and interleaved (adjacent-pair) RoPE, so the comparison also
checks the converter's Q/K row permutation. A KV cache makes greedy generation affordable
(one position per step instead of a full recompute).

    ref = FloatReference("model.gguf")
    logits = ref.logits(ids)                 # [len(ids), vocab], no cache
    out = ref.greedy(prompt_ids, 64, stop)   # generated ids, with a KV cache
"""
from __future__ import annotations

import numpy as np


class FloatReference:
    def __init__(self, gguf_path):
        import gguf
        from gguf import GGUFReader

        r = GGUFReader(gguf_path)
        f = {k: v.contents() for k, v in r.fields.items() if k.startswith("llama.")}
        tensors = {t.name: t for t in r.tensors}

        def W(name):  # [N, K] float64
            t = tensors[name]
            a = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            return np.asarray(a, dtype=np.float64).reshape(int(np.prod(t.shape[1:])), int(t.shape[0]))

        self.n_head = int(f["llama.attention.head_count"])
        self.n_kv = int(f["llama.attention.head_count_kv"])
        self.d = int(f["llama.embedding_length"])
        self.hd = self.d // self.n_head
        self.eps = float(f["llama.attention.layer_norm_rms_epsilon"])
        self.theta = float(f["llama.rope.freq_base"])
        self.n_layer = int(f["llama.block_count"])
        self.emb = W("token_embd.weight")
        self.head = W("output.weight") if "output.weight" in tensors else self.emb
        self.out_norm = W("output_norm.weight")[0]
        self.layers = []
        for i in range(self.n_layer):
            p = f"blk.{i}"
            self.layers.append({k: W(f"{p}.{k}.weight") for k in (
                "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")})
            self.layers[-1]["attn_norm"] = W(f"{p}.attn_norm.weight")[0]
            self.layers[-1]["ffn_norm"] = W(f"{p}.ffn_norm.weight")[0]

    def _rope(self, x, pos):
        """x [S, H, hd] at positions pos [S]: llama.cpp NORM rope rotates adjacent pairs."""
        ang = np.outer(pos.astype(np.float64), self.theta ** (-np.arange(0, self.hd, 2, dtype=np.float64) / self.hd))
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y = np.empty_like(x)
        y[..., 0::2] = x0 * cos - x1 * sin
        y[..., 1::2] = x0 * sin + x1 * cos
        return y

    def _rms(self, x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * g

    def forward(self, ids, cache=None):
        """Logits [len(ids), vocab] for ids following `cache` (a list of per-layer (K, V), updated
        in place; None = no past and nothing kept)."""
        S = len(ids)
        past = 0 if not cache else cache[0][0].shape[0]
        pos = np.arange(past, past + S)
        h = self.emb[np.asarray(ids)]
        mask = np.triu(np.full((S, past + S), -np.inf), past + 1)
        rep = self.n_head // self.n_kv
        for i, L in enumerate(self.layers):
            x = self._rms(h, L["attn_norm"])
            q = self._rope((x @ L["attn_q"].T).reshape(S, self.n_head, self.hd), pos)
            k = self._rope((x @ L["attn_k"].T).reshape(S, self.n_kv, self.hd), pos)
            v = (x @ L["attn_v"].T).reshape(S, self.n_kv, self.hd)
            if cache is not None:
                if len(cache) <= i:
                    cache.append((k, v))
                else:
                    k = np.concatenate([cache[i][0], k])
                    v = np.concatenate([cache[i][1], v])
                    cache[i] = (k, v)
            kk, vv = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
            att = np.einsum("shd,thd->hst", q, kk) / np.sqrt(self.hd) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("hst,thd->shd", att, vv).reshape(S, self.d)
            h = h + o @ L["attn_output"].T
            x = self._rms(h, L["ffn_norm"])
            gt, up = x @ L["ffn_gate"].T, x @ L["ffn_up"].T
            h = h + (gt / (1 + np.exp(-gt)) * up) @ L["ffn_down"].T
        return self._rms(h, self.out_norm) @ self.head.T

    def logits(self, ids):
        return self.forward(ids)

    def greedy(self, prompt_ids, n, stop=()):
        """Greedy continuation (at most n tokens, ends after a stop id, which is included)."""
        cache = []
        logits = self.forward(prompt_ids, cache)
        out = []
        for _ in range(n):
            t = int(np.argmax(logits[-1]))
            out.append(t)
            if t in stop:
                break
            logits = self.forward([t], cache)
        return out
