#!/usr/bin/env python3
"""convert_gguf.py - convert a llama-architecture GGUF file into an ONNX decoder.

    python convert_gguf.py MODEL.gguf OUTDIR [--exact | --accuracy-level N] [--max-positions N] [--genai-config]

Writes into OUTDIR (created if needed, files replaced atomically):
  model.onnx        decoder with KV cache, HF export names:
                      input_ids i64 [B,S], attention_mask i64 [B,P+S], position_ids i64 [B,S],
                      past_key_values.{i}.key/.value f32 [B,kv_heads,P,head_dim],
                      optional num_logits_to_keep i64 scalar or [1] (default 0 = every position)
                    -> logits f32 [B,K or S,vocab], present.{i}.key/.value f32 [B,kv_heads,P+S,head_dim]
                    (model.onnx.data next to it only if the weights exceed 2 GB)
  tokenizer.json    Hugging Face `tokenizers` file (byte-level BPE) built from the GGUF vocab/merges
  generation.json   bos/eos/stop ids, chat template (simple prefix/suffix form + raw jinja),
                    context length, vocab size, layer/head geometry, model name
  (with --genai-config also genai_config.json + tokenizer_config.json for onnxruntime-genai)

Needs only numpy, onnx and gguf (PyPI). No torch, nothing downloaded. The output is
deterministic (same input and converter -> byte-identical files).

Weights are kept exactly as stored in the GGUF (no re-quantization):
  Q4_0, Q4_1, Q4_K      -> com.microsoft.MatMulNBits bits=4, block 32
  Q8_0, Q5_0, Q5_1, Q5_K -> MatMulNBits bits=8, block 32 (the 5-bit codes fit in 8 bits)
  Q6_K                  -> MatMulNBits bits=8, block 16
  F32, F16, BF16        -> float32 MatMul
  anything else         -> dequantized to float32 MatMul (exact, but large; a warning is printed)
onnxruntime's CPU MatMulNBits has no fast float32-activation kernel for bits=8 (it dequantizes
the whole matrix on every call), so with the default accuracy level an 8-bit matrix is split
exactly into its two nibbles and run as one 4-bit MatMulNBits over [x, x] (K doubled).
GGUF block formats with a per-block minimum (w = d*q + m: Q4_1, Q4_K, Q5_1, Q5_K) use zero
point 0 plus the exact correction term blocksum(A) @ M^T (M = per-block minimums), computed as
MatMul(x, E) with a 0/1 block-indicator E and one Gemm that adds it to the MatMulNBits output;
the residual stream is kept 2-D [tokens, hidden] for that (GroupQueryAttention sees 3-D).
Float zero points (z = -m/d, --min-form float-zp) avoid the correction and are exact to ~1 ulp,
but onnxruntime 1.31.1's CPU kernel dequantizes the whole matrix on every call for them, at
accuracy level 0 and 4 alike (measured 30x slower per matmul or worse), so the correction stays.
The token embedding is gathered with com.microsoft.GatherBlockQuantized when its format has no
minimums (e.g. Q8_0), else from a float32 table; a missing output.weight means tied embeddings.

Math (llama): RMSNorm, RoPE (theta, optional rope_freqs / linear scaling from the GGUF), grouped
query attention (com.microsoft.GroupQueryAttention, rotary applied inside from position_ids),
SiLU-gated MLP. GGUF stores the Q/K projection rows permuted for llama.cpp's interleaved rotary;
they are permuted back to the Hugging Face order here, so the rotation is the usual rotate-half
and present.* tensors have the same layout as an HF export.

Tokenizer: only GGUF `tokenizer.ggml.model == "gpt2"` (byte-level BPE) is supported, with the
pre-tokenizers smollm/starcoder-style (single digits + GPT-2 regex), gpt-2/default, and llama3
(`--pre-tokenizer` overrides the choice). SentencePiece ("llama") vocabularies are refused.

Numerics: by default (--accuracy-level 4) MatMulNBits quantizes activations to int8 per block of
32, as llama.cpp's own Q4/Q8 dot products do: about 2x faster decode, lossy (perplexity and KL
in models/llm/README.md, "Numerics"). --exact (accuracy level 0) keeps float32 activations:
logits then match a float64 reference to ~1e-4. generation.json records the form ("numerics").

The graph uses com.microsoft contrib ops (MatMulNBits, GroupQueryAttention with position_ids,
SkipSimplifiedLayerNormalization, GatherBlockQuantized, QuickGelu): tested with onnxruntime
1.31.1 and 1.32.0 (CPU), opset 17, IR 8.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (genai_files is also used through this module by benches/llm_peers.py)
from gguf_meta import LOGITS_TO_KEEP, Meta, build_generation, build_tokenizer, genai_files  # noqa: F401

try:
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFReader
except ImportError:  # pragma: no cover - message for users
    sys.exit("convert_gguf.py: the `gguf` package is missing: pip install gguf")

OPSET = 17
IR_VERSION = 8
MS = "com.microsoft"
SUPPORTED_ARCHS = ("llama",)
# int8 activations inside MatMulNBits (what llama.cpp's own Q4/Q8 dot products do): 2x faster
# decode on x86 than float32 activations; lossy, see models/llm/README.md ("Numerics").
DEFAULT_ACCURACY_LEVEL = 4


def numerics_name(accuracy_level, min_form):
    """The label generation.json records ("int8-activations" or "exact") for the chosen form."""
    base = "int8-activations" if accuracy_level == 4 else "exact"
    return base if min_form == "correction" else f"{base}+{min_form}"


def keep_last_positions(g, x, shape_bsx, hidden):
    """x [tokens, hidden] -> the last num_logits_to_keep positions of each sequence, 2-D again.
    Slice starts at -K along the sequence axis: K = 0 (the default) starts at 0 and keeps every
    position, K > seq is clamped to the whole sequence."""
    k = g.node("Reshape", [LOGITS_TO_KEEP, g.const_i64([1])], name="logits_to_keep_1d")
    start = g.node("Neg", [k], name="logits_start")
    x3 = g.node("Reshape", [x, shape_bsx], name="final_norm_3d")
    big = g.const_i64([np.iinfo(np.int64).max])
    kept = g.node("Slice", [x3, start, big, g.const_i64([1])], name="keep_last_positions")
    return g.node("Reshape", [kept, g.const_i64([-1, hidden])], name="kept_2d")

# ---------------------------------------------------------------------------------------------
# Weight representations
# ---------------------------------------------------------------------------------------------


class QWeight:
    """Block-quantized matrix: w[n, k] = (u[n, k] - z) * scale[n, k // bs] + mins[n, k // bs],
    z = zps[n, k // bs] when per-block zero points are given, else the shared int zp.

    u holds the unpacked integer codes (uint8, one per weight), bits is 4 or 8; mins is None
    when the format has no per-block minimum.
    """

    def __init__(self, u, bits, bs, zp, scale, mins, src, zps=None):
        self.u, self.bits, self.bs, self.zp = u, bits, bs, zp
        self.scale = scale.astype(np.float32)
        self.mins = None if mins is None else mins.astype(np.float32)
        self.src = src  # GGUF type name, for the summary
        self.zps = zps

    @property
    def shape(self):
        return self.u.shape

    def rows(self, idx):
        return QWeight(self.u[idx], self.bits, self.bs, self.zp, self.scale[idx],
                       None if self.mins is None else self.mins[idx], self.src,
                       None if self.zps is None else self.zps[idx])

    def zero_points(self):
        """[n, k // bs] float32 zero point of every block"""
        if self.zps is not None:
            return self.zps.astype(np.float32)
        return np.full(self.scale.shape, self.zp, np.float32)

    def dequantize(self):
        n, k = self.u.shape
        nb = k // self.bs
        q = (self.u.astype(np.float32).reshape(n, nb, self.bs) - self.zero_points()[:, :, None])
        w = q * self.scale[:, :, None]
        if self.mins is not None:
            w = w + self.mins[:, :, None]
        return w.reshape(n, k)


class DWeight:
    """Dense float32 matrix [N, K]."""

    def __init__(self, w, src):
        self.w = np.ascontiguousarray(w, dtype=np.float32)
        self.src = src

    @property
    def shape(self):
        return self.w.shape

    def rows(self, idx):
        return DWeight(self.w[idx], self.src)

    def dequantize(self):
        return self.w


def centre_minimums(u, d, m, src):
    """w = d*q + m (q in 0..15) rewritten as d*(q - z) + r with the integer zero point per block
    z = round(-m/d) in 0..15 and the residual minimum r = m + z*d (|r| <= d/2 when z is not
    clipped). Same weights, exactly (d*z is exact in float32, the sum is exact unless the
    exponents are far apart: then r is rounded to float32), and the MatMulNBits part carries a
    centred weight. That matters with int8 activations: their rounding error multiplies the
    MatMulNBits weight only (the correction uses float activations), and d*q alone, all of one
    sign, is several times larger than the weight it helps to form; centred, the error is about
    that of llama.cpp, whose Q8_1 block sums put the minimums on the rounded activations too.
    (Measured on SmolLM2-135M Q4_1: mean KL to the float reference 0.043 -> see README.)"""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(d != 0, np.rint(-m / d), 0)
    z = np.clip(z, 0, 15).astype(np.uint8)
    r = m.astype(np.float32) + z.astype(np.float32) * d.astype(np.float32)
    return QWeight(u, 4, 32, 0, d, r, src, zps=z)


def _f16(b):
    """bytes [..., 2] (uint8) -> float32 [...]"""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _k_scale_min(scales):
    """Q4_K/Q5_K 6-bit scales and mins: [n, 12] uint8 -> ([n, 8], [n, 8])"""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def decode_blocks(qtype, raw, n, k):
    """Decode GGUF block-quantized rows. raw: uint8 [n, row_bytes]. Returns a QWeight or None
    when the type has no exact MatMulNBits mapping here."""
    name = QT(qtype).name
    if qtype in (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0):
        nb = k // 32
        if qtype == QT.Q8_0:
            b = raw.reshape(n, nb, 34)
            d = _f16(b[..., 0:2])
            q = b[..., 2:].view(np.int8).astype(np.int16) + 128
            return QWeight(q.astype(np.uint8).reshape(n, k), 8, 32, 128, d, None, name)
        has_min = qtype in (QT.Q4_1, QT.Q5_1)
        five = qtype in (QT.Q5_0, QT.Q5_1)
        size = 2 + (2 if has_min else 0) + (4 if five else 0) + 16
        b = raw.reshape(n, nb, size)
        d = _f16(b[..., 0:2])
        off = 2
        m = None
        if has_min:
            m = _f16(b[..., 2:4])
            off = 4
        qh = None
        if five:
            qh = np.ascontiguousarray(b[..., off:off + 4]).view(np.uint32)[..., 0]  # [n, nb]
            off += 4
        qs = b[..., off:off + 16]
        lo = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # [n, nb, 32]: elements 0..15, 16..31
        if not five:
            if has_min:  # Q4_1: w = d*q + m
                return centre_minimums(lo.reshape(n, k), d, m, name)
            return QWeight(lo.reshape(n, k), 4, 32, 8, d, None, name)  # Q4_0: w = d*(q-8)
        hi = ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        q5 = lo | (hi << 4)  # 0..31
        if has_min:  # Q5_1: w = d*q + m  -> 8 bit, u = q + 128, zp 128
            return QWeight((q5 + 128).reshape(n, k), 8, 32, 128, d, m, name)
        return QWeight((q5 + 112).reshape(n, k), 8, 32, 128, d, None, name)  # Q5_0: d*(q-16)
    if qtype in (QT.Q4_K, QT.Q5_K):
        nsb = k // 256
        size = 144 if qtype == QT.Q4_K else 176
        b = raw.reshape(n * nsb, size)
        d = _f16(b[:, 0:2])[:, None]
        dmin = _f16(b[:, 2:4])[:, None]
        sc, mn = _k_scale_min(b[:, 4:16])
        scale = d * sc.astype(np.float32)  # exact: f16 * 6-bit integer
        mins = -(dmin * mn.astype(np.float32))
        if qtype == QT.Q4_K:
            qs = b[:, 16:144].reshape(-1, 4, 1, 32)
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 256)
            return centre_minimums(q.reshape(n, k), scale.reshape(n, -1), mins.reshape(n, -1), name)
        qh = b[:, 16:48].reshape(-1, 1, 32)
        qs = b[:, 48:176].reshape(-1, 4, 1, 32)
        ql = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32)
        hb = (qh >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
        q = (ql | (hb << 4)).reshape(-1, 256)
        return QWeight((q + 128).reshape(n, k), 8, 32, 128, scale.reshape(n, -1), mins.reshape(n, -1), name)
    if qtype == QT.Q6_K:
        nsb = k // 256
        b = raw.reshape(n * nsb, 210)
        ql = b[:, 0:128].reshape(-1, 2, 1, 64)
        qh = b[:, 128:192].reshape(-1, 2, 1, 32)
        sc = b[:, 192:208].view(np.int8).astype(np.float32)
        d = _f16(b[:, 208:210])[:, None]
        lo = np.concatenate([ql & 0x0F, ql >> 4], axis=2).reshape(-1, 2, 4, 32)
        hi = ((qh >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3)
        q6 = (lo | (hi << 4)).reshape(-1, 256)  # 0..63, w = d*sc*(q6-32)
        return QWeight((q6 + 96).reshape(n, k), 8, 16, 128, (d * sc).reshape(n, -1), None, name)
    return None


def load_matrix(t):
    """ReaderTensor (GGUF shape [K, N]) -> QWeight or DWeight with shape [N, K]."""
    k = int(t.shape[0])
    n = int(np.prod(t.shape[1:]))
    qt = t.tensor_type
    if qt == QT.F32:
        return DWeight(np.asarray(t.data, dtype=np.float32).reshape(n, k), "F32")
    if qt == QT.F16:
        return DWeight(np.asarray(t.data).view(np.float16).reshape(n, k), "F16")
    raw = np.asarray(t.data).view(np.uint8).reshape(n, -1)
    if qt == QT.BF16:
        return DWeight(gguf.quants.dequantize(raw, qt).reshape(n, k), "BF16")
    w = decode_blocks(qt, raw, n, k)
    if w is not None:
        return w
    print(f"  warning: {t.name}: {qt.name} has no exact 4/8-bit mapping here; "
          f"storing it dequantized as float32", file=sys.stderr)
    return DWeight(gguf.quants.dequantize(raw, qt).reshape(n, k), qt.name + "->F32")


def load_vector(t):
    if t.tensor_type == QT.F32:
        return np.asarray(t.data, dtype=np.float32).reshape(-1)
    raw = np.asarray(t.data)
    if t.tensor_type == QT.F16:
        return raw.view(np.float16).astype(np.float32).reshape(-1)
    return gguf.quants.dequantize(raw.view(np.uint8), t.tensor_type).astype(np.float32).reshape(-1)


def unpermute_rope_rows(w, n_head):
    """GGUF (llama.cpp) Q/K row order -> Hugging Face order (inverse of convert_hf_to_gguf's permute)."""
    n = w.shape[0]
    hd = n // n_head
    idx = np.arange(n).reshape(n_head, hd // 2, 2).swapaxes(1, 2).reshape(-1)
    return w.rows(idx)


# ---------------------------------------------------------------------------------------------
# ONNX graph construction
# ---------------------------------------------------------------------------------------------


class Graph:
    def __init__(self, accuracy_level, min_form="correction"):
        self.nodes, self.inits = [], []
        self.acc = accuracy_level
        self.min_form = min_form
        self._n = 0
        self._consts = {}
        self.counts = {}

    def uniq(self, base):
        self._n += 1
        return f"{base}_{self._n}"

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const_i64(self, values):
        key = ("i64", tuple(values))
        if key not in self._consts:
            self._consts[key] = self.init(f"const_i64_{len(self._consts)}", np.array(values, dtype=np.int64))
        return self._consts[key]

    def node(self, op, inputs, outputs=None, name=None, domain="", **attrs):
        name = name or self.uniq(op)
        if outputs is None:
            outputs = [name + "_out"]
        elif isinstance(outputs, int):
            outputs = [f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        self.counts[op] = self.counts.get(op, 0) + 1
        return outputs if len(outputs) > 1 else outputs[0]

    # --- linear layers -----------------------------------------------------------------------

    def linear(self, x, weights, prefix):
        """y = x @ concat(weights)^T. Fuses the list into one matmul when the formats agree,
        else returns one output per weight (list). Returns a list of output names."""
        groups = []
        for w in weights:
            if groups and _fusable(groups[-1][-1], w):
                groups[-1].append(w)
            else:
                groups.append([w])
        outs = []
        for gi, grp in enumerate(groups):
            name = prefix if len(groups) == 1 else f"{prefix}_{gi}"
            y = self._linear_one(x, _concat_rows(grp), name)
            if len(grp) == 1:
                outs.append(y)
            else:
                sizes = [w.shape[0] for w in grp]
                outs.extend(self.node("Split", [y, self.const_i64(sizes)], len(sizes),
                                      name=f"{name}_split", axis=-1))
        return outs

    def concat_self(self, x):
        """[x, x] along the last axis (one node per distinct x)."""
        key = ("concat_self", x)
        if key not in self._consts:
            self._consts[key] = self.node("Concat", [x, x], name=f"{x}_x2", axis=-1)
        return self._consts[key]

    def _linear_one(self, x, w, name):
        n, k = w.shape
        mins, bs = w.mins, w.bs
        if isinstance(w, DWeight):
            return self.node("MatMul", [x, self.init(f"{name}.weight_t", w.w.T)], name=name)
        if mins is not None and self.min_form == "float-zp":
            return self._linear_float_zp(x, w, name)
        nb = k // w.bs
        a, kk = x, k
        if w.bits == 8 and self.acc != 4:
            # onnxruntime's CPU MatMulNBits has no fast float32-activation kernel for 8 bits. Split
            # each 8-bit code exactly into two nibbles, u = 16*hi + lo, and run one 4-bit matmul on
            # [x, x] (K doubled): (u - 128)*s = (hi - 8)*(16 s) + (lo - 0)*s.
            assert w.zp == 128
            u = w.u.reshape(n, nb, w.bs)
            q4 = np.concatenate([u >> 4, u & 0x0F], axis=1).reshape(n, 2 * k)
            scale = np.concatenate([w.scale * np.float32(16), w.scale], axis=1)
            zps = np.concatenate([np.full((n, nb), 8, np.uint8), np.zeros((n, nb), np.uint8)], axis=1)
            w4 = QWeight(q4, 4, w.bs, None, scale, None, w.src, zps)
            a = self.concat_self(x)
            w, kk = w4, 2 * k
        nbq = kk // w.bs
        if w.bits == 4:
            u = w.u.reshape(n, nbq, w.bs // 2, 2)
            packed = (u[..., 0] | (u[..., 1] << 4)).astype(np.uint8)
        else:
            packed = w.u.reshape(n, nbq, w.bs).astype(np.uint8)
        ins = [a, self.init(f"{name}.qweight", packed), self.init(f"{name}.scales", w.scale)]
        default_zp = 1 << (w.bits - 1)
        zps = w.zps
        if zps is None and w.zp != default_zp:
            zps = np.full((n, nbq), w.zp, np.uint8)
        if zps is not None:
            if w.bits == 4:
                if nbq % 2:
                    zps = np.concatenate([zps, np.zeros((n, 1), np.uint8)], axis=1)
                zps = (zps[:, 0::2] | (zps[:, 1::2] << 4)).astype(np.uint8)
            ins.append(self.init(f"{name}.qzeros", zps))
        y = self.node("MatMulNBits", ins, name=name if mins is None else name + "_q", domain=MS,
                      K=kk, N=n, bits=w.bits, block_size=w.bs, accuracy_level=self.acc)
        if mins is None:
            return y
        # exact min term, sum_b blocksum_b(x) * mins[n, b]: blocksums as x @ E (E[k, b] = 1 when
        # k // bs == b), then one Gemm adds blocksums @ mins^T to the MatMulNBits output.
        bsum = self.node("MatMul", [x, self.block_indicator(k, bs)], name=name + "_blocksum")
        return self.node("Gemm", [bsum, self.init(f"{name}.mins_t", mins.T), y], name=name, alpha=1.0, beta=1.0)

    def _linear_float_zp(self, x, w, name):
        """w = d*q + m as one MatMulNBits with float zero points z = -m/d: (q - z)*d. Exact to
        ~1 ulp, no extra nodes, but onnxruntime 1.31.1's CPU kernel dequantizes the whole matrix
        on every call for float zero points (at any accuracy level): 30x slower per matmul or worse.
        Kept so the form can be re-measured on newer runtimes (--min-form float-zp)."""
        n, k = w.shape
        if (w.scale == 0).any():
            sys.exit(f"convert_gguf.py: {name}: a block with scale 0 cannot use float zero points")
        # (u - z)*d + r = (u - (z - r/d))*d; 8-bit codes carry their +128 offset in z
        zp = (w.zero_points() - w.mins / w.scale).astype(np.float32)
        u = w.u.reshape(n, k // w.bs, w.bs // 2, 2) if w.bits == 4 else w.u.reshape(n, k // w.bs, w.bs)
        packed = (u[..., 0] | (u[..., 1] << 4)).astype(np.uint8) if w.bits == 4 else u.astype(np.uint8)
        ins = [x, self.init(f"{name}.qweight", packed), self.init(f"{name}.scales", w.scale),
               self.init(f"{name}.fzeros", zp)]
        return self.node("MatMulNBits", ins, name=name, domain=MS, K=k, N=n, bits=w.bits,
                         block_size=w.bs, accuracy_level=self.acc)

    def block_indicator(self, k, bs):
        key = ("E", k, bs)
        if key not in self._consts:
            e = (np.arange(k)[:, None] // bs == np.arange(k // bs)[None, :]).astype(np.float32)
            self._consts[key] = self.init(f"block_indicator_{k}_{bs}", e)
        return self._consts[key]


def _fusable(a, b):
    if isinstance(a, DWeight) or isinstance(b, DWeight):
        return isinstance(a, DWeight) and isinstance(b, DWeight) and a.shape[1] == b.shape[1]
    return ((a.bits, a.bs, a.zp, a.shape[1], a.zps is None) == (b.bits, b.bs, b.zp, b.shape[1], b.zps is None))


def _concat_rows(ws):
    if len(ws) == 1:
        return ws[0]
    if isinstance(ws[0], DWeight):
        return DWeight(np.concatenate([w.w for w in ws]), ws[0].src)
    mins = None
    if any(w.mins is not None for w in ws):
        mins = np.concatenate([w.mins if w.mins is not None else np.zeros_like(w.scale) for w in ws])
    a = ws[0]
    zps = None if a.zps is None else np.concatenate([w.zps for w in ws])  # _fusable: all or none
    return QWeight(np.concatenate([w.u for w in ws]), a.bits, a.bs, a.zp,
                   np.concatenate([w.scale for w in ws]), mins, "+".join(sorted({w.src for w in ws})), zps)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(gguf_path, outdir, accuracy_level=DEFAULT_ACCURACY_LEVEL, max_positions=None, pre_override="auto",
            quiet=False, genai=False, min_form="correction"):
    t0 = time.time()
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    reader = GGUFReader(gguf_path)
    meta = Meta(reader)
    arch = meta.req("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        sys.exit(f"convert_gguf.py: architecture {arch!r} is not supported (only {', '.join(SUPPORTED_ARCHS)})")
    A = arch
    n_layer = int(meta.req(f"{A}.block_count"))
    n_embd = int(meta.req(f"{A}.embedding_length"))
    n_head = int(meta.req(f"{A}.attention.head_count"))
    n_kv = int(meta.get(f"{A}.attention.head_count_kv", n_head))
    head_dim = int(meta.get(f"{A}.attention.key_length", n_embd // n_head))
    rot_dim = int(meta.get(f"{A}.rope.dimension_count", head_dim))
    theta = float(meta.get(f"{A}.rope.freq_base", 10000.0))
    eps = float(meta.get(f"{A}.attention.layer_norm_rms_epsilon", 1e-5))
    ctx = int(meta.get(f"{A}.context_length", 2048))
    if rot_dim != head_dim:
        sys.exit(f"convert_gguf.py: partial rotary (rope.dimension_count {rot_dim} != head_dim {head_dim}) "
                 "is not supported")
    scaling = meta.get(f"{A}.rope.scaling.type", "none")
    scale_factor = float(meta.get(f"{A}.rope.scaling.factor", 1.0) or 1.0)
    if scaling not in ("none", "linear"):
        sys.exit(f"convert_gguf.py: rope scaling {scaling!r} is not supported (none/linear only)")
    if meta.get(f"{A}.expert_count"):
        sys.exit("convert_gguf.py: mixture-of-experts llama files are not supported")

    tensors = {t.name: t for t in reader.tensors}
    tokens = meta.req("tokenizer.ggml.tokens")
    vocab = len(tokens)
    model_name = meta.get("general.name") or os.path.splitext(os.path.basename(gguf_path))[0]
    max_pos = int(max_positions or ctx)
    log(f"convert_gguf: {os.path.basename(gguf_path)}: {model_name!r}, {arch}, {n_layer} layers, hidden {n_embd}, "
        f"heads {n_head}/{n_kv} x {head_dim}, vocab {vocab}, ctx {ctx}, rope theta {theta:g}, eps {eps:g}")

    def T(name):
        if name not in tensors:
            sys.exit(f"convert_gguf.py: tensor {name!r} missing from the GGUF")
        return tensors[name]

    g = Graph(accuracy_level, min_form)
    types_seen = {}

    def note(w, what):
        types_seen.setdefault(w.src, []).append(what)
        return w

    # ---- inputs / outputs
    B, S, P, TS = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [B, S]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [B, TS]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [B, S]),
              # optional (an initializer of the same name is its default, 0 = every position):
              # scalar or [1], the LM head then runs only on the last K positions
              helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, None)]
    g.init(LOGITS_TO_KEEP, np.array(0, np.int64))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [B, "logits_length", vocab])]
    for i in range(n_layer):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", TensorProto.FLOAT,
                                                        [B, n_kv, P, head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", TensorProto.FLOAT,
                                                         [B, n_kv, TS, head_dim]))

    # ---- embedding
    emb_t = T("token_embd.weight")
    emb = note(load_matrix(emb_t), "token_embd")
    if isinstance(emb, QWeight) and emb.mins is None:
        if emb.bits == 4:
            u = emb.u.reshape(vocab, -1, 2)
            data = (u[..., 0] | (u[..., 1] << 4)).astype(np.uint8)
        else:
            data = emb.u
        # every format without minimums decodes to the operator's default zero point (2^(bits-1))
        assert emb.zp == 1 << (emb.bits - 1)
        gin = [g.init("embed.qweight", data), "input_ids", g.init("embed.scales", emb.scale)]
        h = g.node("GatherBlockQuantized", gin, name="embed", domain=MS, bits=emb.bits,
                   block_size=emb.bs, gather_axis=0, quantize_axis=1)
    else:
        h = g.node("Gather", [g.init("embed.weight", emb.dequantize()), "input_ids"], name="embed", axis=0)
    # The residual stream is kept 2-D [tokens, hidden] so that the minimum corrections can use Gemm;
    # only GroupQueryAttention sees [batch, seq, hidden].
    h = g.node("Reshape", [h, g.const_i64([-1, n_embd])], name="embed_2d")
    ids_shape = g.node("Shape", ["input_ids"], name="ids_shape")
    shape_bsx = g.node("Concat", [ids_shape, g.const_i64([-1])], name="shape_bs_x", axis=0)

    # ---- attention helpers shared by all layers
    mask_sum = g.node("ReduceSum", ["attention_mask", g.const_i64([1])], name="mask_sum", keepdims=0)
    seqlens_k = g.node("Cast", [g.node("Sub", [mask_sum, g.init("one_i64", np.array(1, np.int64))], name="seqlens_m1")],
                       name="seqlens_k", to=TensorProto.INT32)
    total_len = g.node("Cast", [g.node("Gather", [g.node("Shape", ["attention_mask"], name="mask_shape"),
                                                  g.init("idx1", np.array(1, np.int64))], name="mask_len", axis=0)],
                       name="total_len", to=TensorProto.INT32)
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if "rope_freqs.weight" in tensors:
        inv_freq = inv_freq / load_vector(tensors["rope_freqs.weight"]).astype(np.float64)
    pos = np.arange(max_pos, dtype=np.float64) / scale_factor
    ang = np.outer(pos, inv_freq)
    cos_cache = g.init("cos_cache", np.cos(ang).astype(np.float32))
    sin_cache = g.init("sin_cache", np.sin(ang).astype(np.float32))

    # ---- layers
    resid = None
    prev = h
    for i in range(n_layer):
        p = f"blk.{i}"
        attn_norm = g.init(f"{p}.attn_norm", load_vector(T(f"{p}.attn_norm.weight")))
        if resid is None:
            x = g.node("SimplifiedLayerNormalization", [prev, attn_norm], name=f"{p}.attn_norm",
                       axis=-1, epsilon=eps, stash_type=1)
            resid = prev
        else:
            x, _, _, resid = g.node("SkipSimplifiedLayerNormalization", [prev, resid, attn_norm],
                                    [f"{p}.attn_norm_out", "", "", f"{p}.resid_attn"],
                                    name=f"{p}.attn_norm", domain=MS, epsilon=eps)
        wq = note(unpermute_rope_rows(load_matrix(T(f"{p}.attn_q.weight")), n_head), "attn_q")
        wk = note(unpermute_rope_rows(load_matrix(T(f"{p}.attn_k.weight")), n_kv), "attn_k")
        wv = note(load_matrix(T(f"{p}.attn_v.weight")), "attn_v")
        qkv = g.linear(x, [wq, wk, wv], f"{p}.attn_qkv")
        qkv = [g.node("Reshape", [t, shape_bsx], name=f"{t}_3d") for t in qkv]
        gqa_in = qkv + ["", ""] if len(qkv) == 1 else qkv  # packed or separate q/k/v
        gqa_in = gqa_in + [f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total_len,
                           cos_cache, sin_cache, "position_ids"]
        attn, _, _ = g.node("GroupQueryAttention", gqa_in,
                      [f"{p}.attn_out", f"present.{i}.key", f"present.{i}.value"], name=f"{p}.attn",
                      domain=MS, num_heads=n_head, kv_num_heads=n_kv, do_rotary=1, rotary_interleaved=0,
                      scale=float(1.0 / np.sqrt(head_dim)))
        wo = note(load_matrix(T(f"{p}.attn_output.weight")), "attn_output")
        attn = g.node("Reshape", [attn, g.const_i64([-1, n_head * head_dim])], name=f"{p}.attn_out_2d")
        (o,) = g.linear(attn, [wo], f"{p}.attn_output")
        ffn_norm = g.init(f"{p}.ffn_norm", load_vector(T(f"{p}.ffn_norm.weight")))
        x2, _, _, resid = g.node("SkipSimplifiedLayerNormalization", [o, resid, ffn_norm],
                                 [f"{p}.ffn_norm_out", "", "", f"{p}.resid_ffn"],
                                 name=f"{p}.ffn_norm", domain=MS, epsilon=eps)
        wg = note(load_matrix(T(f"{p}.ffn_gate.weight")), "ffn_gate")
        wu = note(load_matrix(T(f"{p}.ffn_up.weight")), "ffn_up")
        gate, up = g.linear(x2, [wg, wu], f"{p}.ffn_gate_up")
        act = g.node("Mul", [g.node("QuickGelu", [gate], name=f"{p}.ffn_silu", domain=MS, alpha=1.0), up],
                     name=f"{p}.ffn_act")
        wd = note(load_matrix(T(f"{p}.ffn_down.weight")), "ffn_down")
        (prev,) = g.linear(act, [wd], f"{p}.ffn_down")
        if not quiet and (i + 1) % 10 == 0:
            log(f"  layers 0..{i} built ({time.time() - t0:.1f} s)")

    out_norm = g.init("output_norm", load_vector(T("output_norm.weight")))
    xf, _, _, _ = g.node("SkipSimplifiedLayerNormalization", [prev, resid, out_norm],
                         ["final_norm_out", "", "", ""], name="output_norm", domain=MS, epsilon=eps)
    xf = keep_last_positions(g, xf, shape_bsx, n_embd)
    if "output.weight" in tensors:
        head = note(load_matrix(tensors["output.weight"]), "output")
        tied = False
    else:
        head = emb
        tied = True
    (logits,) = g.linear(xf, [head], "lm_head")
    batch = g.node("Gather", [ids_shape, g.const_i64([0])], name="batch_dim", axis=0)
    shape_bkv = g.node("Concat", [batch, g.const_i64([-1, vocab])], name="shape_b_k_vocab", axis=0)
    g.node("Reshape", [logits, shape_bkv], ["logits"], name="logits")

    graph = helper.make_graph(g.nodes, "llama_decoder", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              ir_version=IR_VERSION, producer_name="reflexd convert_gguf.py")
    gguf_sha = sha256_file(gguf_path)
    dims = {"context_length": ctx, "max_position_embeddings": max_pos, "vocab_size": vocab,
            "num_layers": n_layer, "hidden_size": n_embd, "intermediate_size": int(meta.get(f"{A}.feed_forward_length", 0)),
            "num_attention_heads": n_head, "num_key_value_heads": n_kv, "head_dim": head_dim,
            "rope_theta": theta, "rms_norm_eps": float(str(np.float32(eps))), "tie_word_embeddings": tied}
    onnx.helper.set_model_props(model, {"model_name": str(model_name), "source_gguf_sha256": gguf_sha,
                                        "converter": "reflexd models/llm/convert_gguf.py"})

    tok_json, family, pre = build_tokenizer(meta, pre_override)
    gen = build_generation(meta, tokens, dims, model_name, os.path.basename(gguf_path), gguf_sha)
    gen["tokenizer"] = {"file": "tokenizer.json", "gguf_pre": pre, "pre_tokenizer": family}
    gen["weights"] = {k: len(v) for k, v in sorted(types_seen.items())}
    gen["accuracy_level"] = accuracy_level
    gen["numerics"] = numerics_name(accuracy_level, min_form)

    os.makedirs(outdir, exist_ok=True)
    size = sum(len(t.raw_data) for t in g.inits)
    onnx_path = os.path.join(outdir, "model.onnx")
    tmp = onnx_path + ".tmp"
    if size > 1_800_000_000:
        data_name = "model.onnx.data"
        onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name + ".tmp", size_threshold=1024)
        os.replace(os.path.join(outdir, data_name + ".tmp"), os.path.join(outdir, data_name))
        # the .onnx file references data_name + ".tmp": rewrite the location
        m2 = onnx.load_model(tmp, load_external_data=False)
        for t in m2.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = data_name
        onnx.save_model(m2, tmp)
    else:
        onnx.save_model(model, tmp)
    os.replace(tmp, onnx_path)
    files = [("tokenizer.json", tok_json), ("generation.json", gen)]
    if genai:
        def tname(key):
            i = meta.get(key)
            return tokens[i] if i is not None else None
        files += [("genai_config.json", genai_files(gen)),
                  ("tokenizer_config.json", {
                      "add_bos_token": gen["add_bos_token"], "add_prefix_space": False,
                      "bos_token": tname("tokenizer.ggml.bos_token_id"), "eos_token": tname("tokenizer.ggml.eos_token_id"),
                      "pad_token": tname("tokenizer.ggml.padding_token_id"), "unk_token": tname("tokenizer.ggml.unknown_token_id"),
                      "clean_up_tokenization_spaces": False, "model_max_length": gen["context_length"],
                      "tokenizer_class": "GPT2Tokenizer"})]
    for fname, obj in files:
        path = os.path.join(outdir, fname)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=None if fname == "tokenizer.json" else 2)
            f.write("\n")
        os.replace(path + ".tmp", path)
    log(f"convert_gguf: weights {', '.join(f'{k}: {len(v)}' for k, v in sorted(types_seen.items()))}; "
        f"tied embeddings: {tied}; tokenizer pre {pre!r} -> {family}")
    log(f"convert_gguf: {len(g.nodes)} nodes ({', '.join(f'{k} {v}' for k, v in sorted(g.counts.items()))})")
    log(f"convert_gguf: wrote {onnx_path} ({os.path.getsize(onnx_path) / 1e6:.1f} MB), tokenizer.json, "
        f"generation.json in {time.time() - t0:.1f} s")
    return gen


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert a llama-architecture GGUF into ONNX (+ tokenizer.json, generation.json)")
    ap.add_argument("gguf", help="input .gguf file")
    ap.add_argument("outdir", help="output directory")
    ap.add_argument("--accuracy-level", type=int, default=DEFAULT_ACCURACY_LEVEL, choices=[0, 1, 4],
                    help="MatMulNBits accuracy_level: 4 = int8 activations (default; lossy like llama.cpp's "
                         "own Q8 activations, ~2x faster decode), 0/1 = float32 activations (exact)")
    ap.add_argument("--exact", action="store_const", const=0, dest="accuracy_level",
                    help="same as --accuracy-level 0: float32 activations, logits match a float reference")
    ap.add_argument("--min-form", default="correction", choices=["correction", "float-zp"],
                    help="Q4_1/Q4_K/Q5_1/Q5_K block minimums: exact correction subgraph (default) or float "
                         "zero points in MatMulNBits (no extra nodes, but 30x slower or worse in onnxruntime 1.31.1)")
    ap.add_argument("--max-positions", type=int, default=None,
                    help="rotary cache length (default: the GGUF context length)")
    ap.add_argument("--pre-tokenizer", default="auto", choices=["auto", "digits+gpt2", "gpt2", "llama3"],
                    help="override the pre-tokenizer chosen from tokenizer.ggml.pre")
    ap.add_argument("--genai-config", action="store_true",
                    help="also write genai_config.json and tokenizer_config.json for onnxruntime-genai")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    convert(a.gguf, a.outdir, a.accuracy_level, a.max_positions, a.pre_tokenizer, a.quiet, a.genai_config,
            a.min_form)


if __name__ == "__main__":
    main()
