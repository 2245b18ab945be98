"""Independent float64 reference of the DeepSeek-V4.1-Flash text model.

Written from /work/shared/spec/DEEPSEEK_V41.md alone (sections 1-4 and 3.7), not from megamoe's C++:
the official checkpoint layout (config.json with `text_config`, F8_E4M3 weights with F8_E8M0 `X.scale`
per 32x32 block, FP4 experts as I8 nibble pairs with per-row-and-32 scales, Engram tables with
per-row-and-32 scales) or a plain layout (any of those BF16 / F32 without a scale); lagged
hyper-connections with Sinkhorn mixing; interleaved RoPE on the last rd dims with YaRN on ratio > 0
layers; shared-KV attention with window, selected compressed entries, sink, inverse RoPE and grouped
output LoRA; non-overlapping compressors (r = 1 and r > 1); index keys, the indexer with the
Full / Reuse / Reindex roles through the four shared slots (published compressed KV, published index
keys, published selection, candidate mask) and the candidate-block top-k; sqrt-softplus MoE with a
selection-only bias, the routing weight applied before w2 and the clamp L on routed and shared
experts; Engram (token map from tokenizer.json, primes, offsets, SeedSequence + PCG64 + Lemire
multipliers in pure Python checked against numpy, hashing, the gated addition per hc copy). Text
only: no image positions, no DSpark drafting (`mtp.*`, `vision.*`, `aligner.*`, `image_*` are ignored).

Everything is float64 except the round trips of spec 3.7 (Q8, Q4e8, Q4e4), which are exact and always
applied, whatever the storage dtype: they define the model. The official code's bf16 activations and
bf16 attention probabilities are NOT emulated (the engine under test keeps fp32 activations).

Two attention paths that share nothing but per-token projections and the small top-k helper:
`logits` (whole prompt, prefill semantics, visibility by masks) and `Decoder` (token by token with
window rings, partial compressor groups, compressed entries, index keys and Engram history).
`Decoder(ref, published_index_keys=True)` reproduces the upstream decode quirk of spec 4 (an index-key
owner republishes its keys only in steps where its compressor emits); with False ("own keys at every
step") it equals prefill.

    /usr/bin/python3 tests/reference/deepseek_v41.py --model DIR --tokens 1,2,3 --output FILE.npy
writes float32 logits [T, vocab].

Decisions where the spec leaves room:
- Every top-k (indexer entries, candidate blocks, routed experts) breaks exact ties towards the lower
  index. Scores at -inf are never selected: the selection is the top min(index_topk, n_p) among the
  finite scores, so with a candidate mask holding fewer than that many visible entries fewer entries
  are attended (the spec's "minus those with t >= n_p" does not say what happens to -inf entries left
  in the top-k by the mask; configs with (candidate_topk_blocks - 1) * candidate_block_size + 1 >=
  index_topk never meet the case). Fewer than index_topk visible entries: all of them are attended.
- The candidate source does not apply its own mask; only index sources strictly after it do (by
  layer index, so a mask published in the previous decode step never affects earlier layers).
- Every kv source must be an index source (no role of spec 2 covers a kv-only source); every ratio > 0
  layer must follow a kv source of the same ratio; index sources after the candidate source must have
  its ratio; the candidate source must be an index source. Violations raise ValueError naming the key.
- All-zero blocks: Q8 / Q4e8 / Q4e4 floor the block maximum (1e-4, 6*2^-126, 6*2^-9), so they stay zero.
- Q8 / Q4e8 scales follow the spec's fp32 arithmetic: fp32(a * fp32(1/448)) (resp. 1/6) of the float64
  block maximum, then the power of two at or above. Q4e4's scale is e4m3(a / 6) with a / 6 in float64.
- rms_norm_eps is used by every RMSNorm and by the hc and Engram statistics; the router's
  denominator uses the literal 1e-20. Routing weights are normalised iff num_experts_per_tok > 1
  (norm_topk_prob is not consulted). swiglu_limit 0 or absent: no clamp. rope_scaling absent: no YaRN.
- Engram token map: ids 0..|tok|-1 where |tok| = 1 + the largest id of model.vocab and added_tokens;
  added tokens decode to their content, other ids through the GPT-2 byte map (a token with a character
  outside the map decodes to its own UTF-8 bytes, as HF's ByteLevel decoder does), bytes as UTF-8
  with replacement, no clean-up of tokenization spaces. Keys of all three kinds (raw string, N(text),
  text) share one namespace. White_Space is the Unicode property (not str.isspace). A prompt token
  without a class (id >= |tok|) is an error. engram_compressed_vocab_size, when given, must equal the
  number of classes.
- Near ties (`near_ties`, by kind in `near_tie_kinds`): Q8 / Q4e8 / Q4e4 values within NEAR_TIE
  (relative) of a grid midpoint; power-of-two scales whose fp32 product lies within NEAR_TIE of a power
  of two (not exactly on it, not at the floor); Q4e4 scales a/6 within NEAR_TIE of an e4m3 midpoint;
  indexer / candidate top-k cuts whose two scores differ by at most NEAR_TIE times the largest finite
  |score| of that query (a score near zero from a relu input near zero counts). Exact ties at a cut are
  not counted: they are decided by the index (the spec's "choose lowest index"), the same in fp32.
  Router top-k, a relu input near zero inside an exact tie and the Engram sign(dot) are not counted.
  Each counted tie also records the earliest position whose logits it can change (`near_tie_positions`,
  a Counter position -> ties; `logits_and_first_tie` gives the smallest): a per-token rounding (Q8 of a
  linear's input row, window keys, indexer queries, expert hidden rows, Engram rows) its token's
  position; a compressed entry or index key of group g (ratio r) (g+1) r - 1, the first query that sees
  it; a top-k cut (indexer selection, candidate blocks) its query's position. A round trip or top-k
  called without positions (outside a forward) records 0, the conservative answer.
- Tensor names: spec 1.4's modules with `.weight` / `.scale` (`attn.wq_a.weight`, `attn.compressor.norm.weight`,
  `attn.indexer.k_norm.weight`, `engram.wkv.scale`, ...); bare parameters without (`hc_attn_fn`,
  `attn.attn_sink`, `ffn.gate.bias`, `engram.q_weight`, `engram.k_weight`).
- `Decoder` starts at position 0 (it does not continue a prefill); multi-token forwards, rollback,
  images and DSpark are out of scope.
"""
import argparse
import collections
import functools
import json
import math
import os
import re
import unicodedata

import numpy as np
import torch

import safetensors_np

NEAR_TIE = 1e-6
near_ties = 0
near_tie_kinds = collections.Counter()  # the same by kind: q8, q4e8, q4e4 (grid), *_scale, top_k
near_tie_positions = collections.Counter()  # the same by earliest affected position

E4M3_GRID = torch.from_numpy(safetensors_np.E4M3_VALUES[:0x7F].astype(np.float64))  # 0 .. 448, codes 0..0x7E
E2M1_GRID = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6], dtype=torch.float64)       # codes 0..7
F32_INV448 = float(np.float32(1 / 448))
F32_INV6 = float(np.float32(1 / 6))
Q8_FLOOR, Q4E8_FLOOR, Q4E4_FLOOR = 1e-4, 6 * 2.0 ** -126, 6 * 2.0 ** -9
SCALE_BLOCK = 32
ARCHITECTURE = "DeepseekV41ForCausalLM"


# ---- the quantization round trips of spec 3.7 (exact) ----

def _reset_near_ties():
    global near_ties
    near_ties = 0
    near_tie_kinds.clear()
    near_tie_positions.clear()


def _count(mask, kind, positions=None):
    """Counts the True entries of `mask`; `positions` (one per row of mask's first dimension, e.g. a
    tensor [T]) gives each row's earliest affected position, None: position 0."""
    global near_ties
    count = int(mask.sum())
    near_ties += count
    if count:
        near_tie_kinds[kind] += count
        if positions is None:
            near_tie_positions[0] += count
        else:
            positions = torch.as_tensor(positions).reshape(-1)
            per_row = mask.reshape(mask.shape[0], -1).sum(-1) if mask.dim() else mask.reshape(1)
            if per_row.shape[0] != positions.shape[0]:
                raise ValueError(f"{positions.shape[0]} tie positions for {per_row.shape[0]} rows")
            for row in per_row.nonzero().flatten().tolist():
                near_tie_positions[int(positions[row])] += int(per_row[row])


def round_to_grid(v, grid, count=None, positions=None):
    """Nearest value of `grid` (magnitudes, increasing, index = code) to v elementwise, ties to the
    even code, saturating at the largest value; sign kept. Counts values within NEAR_TIE (relative)
    of a midpoint under the kind `count` (None: not counted), at the `positions` of v's rows."""
    mids = (grid[1:] + grid[:-1]) / 2
    magnitude = v.abs()
    index = torch.searchsorted(mids, magnitude.contiguous())  # mids[index-1] < |v| <= mids[index]
    last = len(mids) - 1
    upper, lower = mids[index.clamp(max=last)], mids[(index - 1).clamp(min=0)]
    distance = torch.minimum((magnitude - upper).abs(), (magnitude - lower).abs())
    if count:
        _count(distance <= NEAR_TIE * magnitude, count, positions)
    tie = (index <= last) & (magnitude == upper)
    code = torch.where(tie & (index % 2 == 1), index + 1, index)
    rounded = grid[code]
    return torch.where(v < 0, -rounded, rounded)


def _blocks(x, size):
    if x.shape[-1] % size:
        raise ValueError(f"round trip of {x.shape[-1]} values in blocks of {size}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // size, size)


def _power_of_two_scale(a, factor, floor, kind, positions=None):
    """2^ceil(log2(fp32(a * factor))) per block, counting products near a power of two."""
    product = (a * factor).float().double()
    mantissa, exponent = torch.frexp(product)  # product = m 2^e, m in [0.5, 1)
    near = ((mantissa - 0.5 <= 0.5 * NEAR_TIE) | (1 - mantissa <= NEAR_TIE)) & (mantissa != 0.5) & (a > floor)
    _count(near, kind, positions)
    return torch.ldexp(torch.ones_like(product), exponent - (mantissa == 0.5).long())


def q8(x, positions=None):
    """Blocks of 32: s = 2^ceil(log2 fp32(a fp32(1/448))), a = max(max|x|, 1e-4); e4m3(x/s) s.
    `positions`: the earliest affected position of each row of x (x.shape[0] of them) for near ties."""
    blocks = _blocks(x, 32)
    a = blocks.abs().amax(-1, keepdim=True).clamp(min=Q8_FLOOR)
    scale = _power_of_two_scale(a, F32_INV448, Q8_FLOOR, "q8_scale", positions)
    return (round_to_grid(blocks / scale, E4M3_GRID, "q8", positions) * scale).reshape(x.shape)


def q4e8(x, positions=None):
    """Blocks of 32: s = 2^ceil(log2 fp32(a fp32(1/6))), a = max(max|x|, 6 2^-126); e2m1(clip(x/s)) s."""
    blocks = _blocks(x, 32)
    a = blocks.abs().amax(-1, keepdim=True).clamp(min=Q4E8_FLOOR)
    scale = _power_of_two_scale(a, F32_INV6, Q4E8_FLOOR, "q4e8_scale", positions)
    return (round_to_grid((blocks / scale).clamp(-6, 6), E2M1_GRID, "q4e8", positions) * scale).reshape(x.shape)


def q4e4(x, positions=None):
    """Blocks of 16: s = e4m3(a/6), a = max(max|x|, 6 2^-9); e2m1(clip(x/s, +-6)) s."""
    blocks = _blocks(x, 16)
    a = blocks.abs().amax(-1, keepdim=True).clamp(min=Q4E4_FLOOR)
    scale = round_to_grid(a / 6, E4M3_GRID, "q4e4_scale", positions)
    return (round_to_grid((blocks / scale).clamp(-6, 6), E2M1_GRID, "q4e4", positions) * scale).reshape(x.shape)


# ---- small pieces ----

def rms_norm(x, weight, eps):
    normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return normed if weight is None else normed * weight


def rope_frequencies(rd, theta, yarn):
    """f_k = theta^(-2k/rd), k < rd/2, YaRN-interpolated when `yarn` (rope_scaling) is given."""
    freqs = theta ** (-torch.arange(0, rd, 2, dtype=torch.float64) / rd)
    if not yarn:
        return freqs
    factor, original = yarn["factor"], yarn["original_max_position_embeddings"]

    def c(rho):
        return rd * math.log(original / (2 * math.pi * rho)) / (2 * math.log(theta))

    lo = max(math.floor(c(yarn.get("beta_fast", 32))), 0)
    hi = min(math.ceil(c(yarn.get("beta_slow", 1))), rd - 1)
    ramp = ((torch.arange(rd // 2, dtype=torch.float64) - lo) / max(hi - lo, 0.001)).clamp(0, 1)
    return freqs * (1 - ramp) + freqs * ramp / factor


def rope(x, positions, freqs, inverse=False):
    """Interleaved RoPE on the last 2 len(freqs) dims of x [T, ..., d]; positions [T]."""
    rd = 2 * freqs.shape[0]
    angles = torch.as_tensor(positions, dtype=torch.float64)[:, None] * freqs[None, :] * (-1 if inverse else 1)
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (rd // 2,)
    cos, sin = torch.cos(angles).view(shape), torch.sin(angles).view(shape)
    head, tail = x[..., :-rd], x[..., -rd:]
    even, odd = tail[..., 0::2], tail[..., 1::2]
    turned = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
    return torch.cat([head, turned], dim=-1)


def top_k(scores, k, position=None):
    """Indices (ascending) of the k largest scores that are not -inf, exact ties to the lower index.
    A cut whose two scores are finite, different and within NEAR_TIE of max(|a|, |b|, the largest
    finite |score| of the vector) counts as a near tie (an exact tie is decided by the index alone)
    at `position`, the query's."""
    values = [float(s) for s in scores]
    ranked = sorted(((s, i) for i, s in enumerate(values) if s != -math.inf), key=lambda t: (-t[0], t[1]))
    if 0 < k < len(ranked):
        a, b = ranked[k - 1][0], ranked[k][0]
        scale = max([abs(s) for s in values if math.isfinite(s)] + [0.0])
        if math.isfinite(a) and math.isfinite(b) and a != b and a - b <= NEAR_TIE * scale:
            _count(torch.ones(1), "top_k", None if position is None else [position])
    return sorted(i for _, i in ranked[:max(k, 0)])


def candidate_entries(scores, n_visible, block_size, n_blocks, position=None):
    """The candidate mask (a set of entry indices) from one query's entry scores (length >= n_visible,
    -inf past n_visible): blocks scored by their best entry, the block of entry n_visible-1 pinned.
    `position`: the query's, for near ties."""
    blocks = -(-len(scores) // block_size)
    block_scores = [max(float(s) for s in scores[b * block_size:(b + 1) * block_size]) for b in range(blocks)]
    if n_visible > 0:
        block_scores[(n_visible - 1) // block_size] = math.inf
    chosen = top_k(block_scores, n_blocks, position)
    return {t for b in chosen for t in range(b * block_size, min((b + 1) * block_size, len(scores)))}


# ---- config ----

def text_config(config):
    """The model settings: config["text_config"] of the official root layout (a dict already holding
    the settings, e.g. one that has `hidden_size`, is returned as is)."""
    if "text_config" in config:
        return config["text_config"]
    if "hidden_size" in config:
        return config
    raise ValueError("config.json: no text_config")


class TextConfig:
    """Parsed and validated text_config, with the layer roles of spec 2."""

    def __init__(self, config):
        self.root = config if "text_config" in config else {"text_config": config}
        c = self.c = text_config(config)

        def need(key):
            if key not in c or c[key] is None:
                raise ValueError(f"text_config.{key} is missing")
            return c[key]

        self.V, self.D, self.L = need("vocab_size"), need("hidden_size"), need("num_hidden_layers")
        self.H, self.hd, self.rd = need("num_attention_heads"), need("head_dim"), need("qk_rope_head_dim")
        self.q_rank, self.G, self.R = need("q_lora_rank"), need("o_groups"), need("o_lora_rank")
        self.eps, self.win = need("rms_norm_eps"), need("sliding_window")
        self.hc, self.hc_iters, self.hc_eps = need("hc_mult"), need("hc_sinkhorn_iters"), need("hc_eps")
        self.E, self.k = need("n_routed_experts"), need("num_experts_per_tok")
        self.inter = need("moe_intermediate_size")
        self.n_shared = c.get("n_shared_experts") or 0
        self.route_scale = c.get("routed_scaling_factor", 1.0)
        self.limit = c.get("swiglu_limit") or 0
        self.rope_theta = need("rope_theta")
        self.compress_theta = c.get("compress_rope_theta", self.rope_theta)
        self.yarn = c.get("rope_scaling")
        if self.yarn and self.yarn.get("type", self.yarn.get("rope_type")) not in ("yarn", None):
            raise ValueError(f"text_config.rope_scaling: only yarn is supported, got {self.yarn}")
        ratios = need("compress_ratios")
        if len(ratios) < self.L:
            raise ValueError(f"text_config.compress_ratios has {len(ratios)} entries for {self.L} layers")
        self.ratios = list(ratios[:self.L])
        if any(r < 0 for r in self.ratios):
            raise ValueError("text_config.compress_ratios: negative ratio")
        self.kv_sources = list(c.get("kv_source_layer_ids") or [])
        self.index_sources = list(c.get("index_source_layer_ids") or [])
        self.candidate = c.get("candidate_source_layer_id")
        self.IH, self.ID = c.get("index_n_heads"), c.get("index_head_dim")
        self.index_topk = c.get("index_topk")
        self.block_size, self.n_blocks = c.get("candidate_block_size"), c.get("candidate_topk_blocks")
        self.engram_layers = list(c.get("engram_layer_ids") or [])
        self.n_mtp = c.get("num_nextn_predict_layers") or 0
        self._validate()

    def _validate(self):
        c, L = self.c, self.L
        for key, ids in (("kv_source_layer_ids", self.kv_sources), ("index_source_layer_ids", self.index_sources),
                         ("engram_layer_ids", self.engram_layers)):
            for l in ids:
                if not (isinstance(l, int) and 0 <= l < L):
                    raise ValueError(f"text_config.{key}: entry {l} is not a layer id below {L}")
            if len(set(ids)) != len(ids):
                raise ValueError(f"text_config.{key}: repeated entries {ids}")
        for key, ids in (("kv_source_layer_ids", self.kv_sources), ("index_source_layer_ids", self.index_sources)):
            for l in ids:
                if self.ratios[l] == 0:
                    raise ValueError(f"text_config.{key}: entry {l} has compress ratio 0")
        for l in self.kv_sources:
            if l not in self.index_sources:
                raise ValueError(f"text_config.kv_source_layer_ids: entry {l} is not in index_source_layer_ids "
                                 "(no role of spec 2 covers a kv source without an indexer)")
        if self.index_sources:
            for key in ("index_n_heads", "index_head_dim", "index_topk"):
                if not c.get(key):
                    raise ValueError(f"text_config.{key} is missing (index sources exist)")
            if self.ID % 32 or self.ID < self.rd:
                raise ValueError(f"text_config.index_head_dim {self.ID}: must be a multiple of 32 and "
                                 ">= qk_rope_head_dim")
        if self.candidate is not None:
            if self.candidate not in self.index_sources:
                raise ValueError(f"text_config.candidate_source_layer_id {self.candidate} is not an index source")
            for key in ("candidate_block_size", "candidate_topk_blocks"):
                if not c.get(key) or c[key] < 1:
                    raise ValueError(f"text_config.{key} must be >= 1 with a candidate source")
            for l in self.index_sources:
                if l > self.candidate and self.ratios[l] != self.ratios[self.candidate]:
                    raise ValueError(f"text_config.compress_ratios: index source {l} after the candidate source "
                                     f"{self.candidate} has ratio {self.ratios[l]}, not {self.ratios[self.candidate]}")
        source = None
        for l in range(L):
            if l in self.kv_sources:
                source = l
            if self.ratios[l] == 0:
                continue
            if source is None:
                raise ValueError(f"text_config.kv_source_layer_ids: layer {l} has compress ratio {self.ratios[l]} "
                                 "but no kv source at or before it")
            if self.ratios[source] != self.ratios[l]:
                raise ValueError(f"text_config.compress_ratios: layer {l} has ratio {self.ratios[l]} but its kv "
                                 f"source {source} has ratio {self.ratios[source]}")
        for name, value, multiple in (("hidden_size", self.D, 32), ("q_lora_rank", self.q_rank, 32),
                                      ("head_dim", self.hd, 32), ("moe_intermediate_size", self.inter, 32)):
            if value % multiple:
                raise ValueError(f"text_config.{name} {value} is not a multiple of {multiple}")
        if self.rd % 2 or self.rd > self.hd:
            raise ValueError(f"text_config.qk_rope_head_dim {self.rd}: must be even and <= head_dim")
        if self.H % self.G or (self.G * self.R) % 32:
            raise ValueError(f"text_config.o_groups {self.G}: must divide num_attention_heads and o_groups * "
                             "o_lora_rank must be a multiple of 32")
        if self.k > self.E:
            raise ValueError("text_config.num_experts_per_tok exceeds n_routed_experts")
        if self.engram_layers:
            for key in ("engram_num_embeddings", "engram_max_ngram_size", "engram_vocab_size", "engram_n_heads",
                        "engram_head_dim", "engram_pad_token_id"):
                if c.get(key) is None:
                    raise ValueError(f"text_config.{key} is missing (engram_layer_ids is not empty)")
            self.N, self.e_heads, self.ehd = c["engram_max_ngram_size"], c["engram_n_heads"], c["engram_head_dim"]
            if self.N < 2:
                raise ValueError("text_config.engram_max_ngram_size must be >= 2")
            if self.ehd % 32:
                raise ValueError(f"text_config.engram_head_dim {self.ehd} is not a multiple of 32")
            sizes = c["engram_num_embeddings"]
            sizes = sizes if isinstance(sizes, list) else [sizes]
            primes = primes_per_layer(len(self.engram_layers), self.N, self.e_heads, c["engram_vocab_size"])
            sums = [sum(p) for p in primes]
            if sizes != sums:
                raise ValueError(f"text_config.engram_num_embeddings {sizes}: the primes of engram_layer_ids "
                                 f"sum to {sums}")
            self.engram_primes, self.engram_sizes = primes, sums

    def freqs(self, layer):
        if self.ratios[layer]:
            return rope_frequencies(self.rd, self.compress_theta, self.yarn)
        return rope_frequencies(self.rd, self.rope_theta, None)


# ---- tensors (spec 1.4 / 1.5) ----

FP8, FP4, BF16, F32, E8M0 = "F8_E4M3", "I8", "BF16", "F32", "F8_E8M0"


def _fp8(specs, name, shape):
    specs.append((name + ".weight", shape, FP8))
    specs.append((name + ".scale", [-(-shape[0] // 32), -(-shape[1] // 32)], E8M0))


def _block_specs(t, prefix, ratio, kv, index, engram_rows, experts):
    D, H, hd, hc = t.D, t.H, t.hd, t.hc
    s = [(prefix + "attn_norm.weight", [D], BF16), (prefix + "ffn_norm.weight", [D], BF16)]
    for sub in ("attn", "ffn"):
        s += [(f"{prefix}hc_{sub}_fn", [(2 + hc) * hc, hc * D], F32), (f"{prefix}hc_{sub}_base", [(2 + hc) * hc], F32),
              (f"{prefix}hc_{sub}_scale", [3], F32)]
    a = prefix + "attn."
    s.append((a + "attn_sink", [H], F32))
    _fp8(s, a + "wq_a", [t.q_rank, D])
    s.append((a + "q_norm.weight", [t.q_rank], BF16))
    _fp8(s, a + "wq_b", [H * hd, t.q_rank])
    _fp8(s, a + "wkv", [hd, D])
    s.append((a + "kv_norm.weight", [hd], BF16))
    _fp8(s, a + "wo_a", [t.G * t.R, H * hd // t.G])
    _fp8(s, a + "wo_b", [D, t.G * t.R])
    if kv:
        s.append((a + "compressor.wkv.weight", [hd, D], BF16))
        if ratio > 1:
            s.append((a + "compressor.wgate.weight", [hd, D], BF16))
        s.append((a + "compressor.norm.weight", [hd], BF16))
    if index:
        _fp8(s, a + "indexer.wq_b", [t.IH * t.ID, t.q_rank])
        s.append((a + "indexer.weights_proj.weight", [t.IH, D], BF16))
        if kv:
            s += [(a + "indexer.wk.weight", [t.ID, hd], BF16), (a + "indexer.k_norm.weight", [t.ID], BF16)]
    f = prefix + "ffn."
    s += [(f + "gate.weight", [experts, D], BF16), (f + "gate.bias", [experts], F32),
          (f + "gate.bias_vl", [experts], F32)]
    for e in range(experts):
        for w, shape in (("w1", [t.inter, D]), ("w2", [D, t.inter]), ("w3", [t.inter, D])):
            s += [(f"{f}experts.{e}.{w}.weight", [shape[0], shape[1] // 2], FP4),
                  (f"{f}experts.{e}.{w}.scale", [shape[0], shape[1] // 32], E8M0)]
    if t.n_shared:
        width = t.n_shared * t.inter
        for w, shape in (("w1", [width, D]), ("w2", [D, width]), ("w3", [width, D])):
            _fp8(s, f"{f}shared_experts.{w}", shape)
    if engram_rows is not None:
        g = prefix + "engram."
        s += [(g + "embed.weight", [engram_rows, t.ehd], FP8), (g + "embed.scale", [engram_rows, t.ehd // 32], E8M0)]
        _fp8(s, g + "wkv", [(hc + 1) * D, (t.N - 1) * t.e_heads * t.ehd])
        s += [(g + "q_weight", [hc, D], BF16), (g + "k_weight", [hc, D], BF16)]
    return s


def tensor_specs(config, include_mtp=False):
    """[(name, stored shape, dtype in the official layout)] of every tensor of the text model (scales
    included, right after their weight; FP4 experts with their packed I8 shape), in a stable order:
    embed, layers 0..L-1, norm, head, then with `include_mtp` the DSpark stages of spec 1.5."""
    t = config if isinstance(config, TextConfig) else TextConfig(config)
    specs = [("embed.weight", [t.V, t.D], BF16)]
    for l in range(t.L):
        rows = t.engram_sizes[t.engram_layers.index(l)] if l in t.engram_layers else None
        specs += _block_specs(t, f"layers.{l}.", t.ratios[l], l in t.kv_sources, l in t.index_sources, rows, t.E)
    specs += [("norm.weight", [t.D], BF16), ("head.weight", [t.V, t.D], BF16)]
    if include_mtp:
        c = t.c
        targets, rank = c.get("dspark_target_layer_ids") or [], c.get("dspark_markov_rank")
        experts = c.get("dspark_n_routed_experts", t.E)
        for stage in range(t.n_mtp):
            p = f"mtp.{stage}."
            specs += _block_specs(t, p, 0, False, False, None, experts)
            if stage == 0:
                _fp8(specs, p + "main_proj", [t.D, t.D * len(targets)])
                specs.append((p + "main_norm.weight", [t.D], BF16))
            if stage == t.n_mtp - 1:
                specs += [(p + "norm.weight", [t.D], BF16), (p + "markov_head.embed.weight", [t.V, rank], BF16),
                          (p + "markov_head.head.weight", [t.V, rank], BF16),
                          (p + "confidence_head.proj.weight", [1, t.D + rank], BF16)]
    return specs


def logical_shapes(config, include_mtp=False):
    """{weight name: dequantized shape} (no scales)."""
    shapes = {}
    for name, shape, dtype in tensor_specs(config, include_mtp):
        if dtype == E8M0:
            continue
        shapes[name] = [shape[0], shape[1] * 2] if dtype == FP4 else list(shape)
    return shapes


def _scale_name(name):
    return name[:-len(".weight")] + ".scale" if name.endswith(".weight") else None


def _expand(scale, rows, cols, block_rows, block_cols):
    return np.repeat(np.repeat(scale, block_rows, 0), block_cols, 1)[:rows, :cols]


class CheckpointWeights:
    """name -> float64 torch tensor of a model directory, dequantized (official or plain layout)."""

    def __init__(self, model_dir, config):
        self.checkpoint = safetensors_np.Checkpoint(model_dir)
        self.shapes = logical_shapes(config)
        quantization = config.root.get("quantization_config") or {}
        self.block = tuple(quantization.get("weight_block_size", (32, 32)))
        self.cache = {}

    def __call__(self, name):
        if name not in self.cache:
            self.cache[name] = torch.from_numpy(self.load(name).astype(np.float64))
        return self.cache[name]

    def load(self, name):
        ck = self.checkpoint
        if name not in ck:
            raise ValueError(f"checkpoint has no tensor {name}")
        dtype, values, scale_name = ck.dtype(name), ck.array(name), _scale_name(name)
        has_scale = scale_name is not None and scale_name in ck
        if dtype == FP8:
            if not has_scale:
                raise ValueError(f"{name} is F8_E4M3 without {scale_name}")
            scale, (rows, cols) = ck.array(scale_name).astype(np.float64), values.shape
            block = (1, SCALE_BLOCK) if name.endswith("engram.embed.weight") else self.block
            expected = (-(-rows // block[0]), -(-cols // block[1]))
            if scale.shape != expected:
                raise ValueError(f"{scale_name} has shape {list(scale.shape)}, expected {list(expected)}")
            values = values.astype(np.float64) * _expand(scale, rows, cols, *block)
        elif dtype == FP4 and has_scale:
            scale, (rows, half) = ck.array(scale_name).astype(np.float64), values.shape
            if scale.shape != (rows, 2 * half // SCALE_BLOCK):
                raise ValueError(f"{scale_name} has shape {list(scale.shape)}, expected {[rows, 2 * half // 32]}")
            codes = values.view(np.uint8)
            nibbles = np.stack([codes & 15, codes >> 4], axis=-1).reshape(rows, 2 * half)
            values = safetensors_np.E2M1_VALUES[nibbles].astype(np.float64) * np.repeat(scale, SCALE_BLOCK, axis=1)
        elif dtype in ("BF16", "F32", "F16"):
            if has_scale:
                raise ValueError(f"{name} is {dtype} but {scale_name} exists")
        else:
            raise ValueError(f"{name}: unexpected dtype {dtype}")
        expected = self.shapes.get(name)
        if expected is not None and list(values.shape) != expected:
            raise ValueError(f"{name} has shape {list(values.shape)}, expected {expected}")
        return values


# ---- Engram: token map, primes, multipliers, hashing (spec 3.6) ----

def _bytes_to_unicode():
    """GPT-2's byte -> printable character map of byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {ch: b for b, ch in BYTE_TO_CHAR.items()}
WHITE_SPACE = "".join(map(chr, [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                                0x2028, 0x2029, 0x202F, 0x205F, 0x3000]))


def byte_level_decode(token):
    """One vocabulary string decoded alone: GPT-2 byte map, then UTF-8 with U+FFFD for bad bytes."""
    if all(ch in CHAR_TO_BYTE for ch in token):
        data = bytes(CHAR_TO_BYTE[ch] for ch in token)
    else:
        data = token.encode("utf-8")
    return data.decode("utf-8", errors="replace")


def normalize_text(text):
    """N of spec 3.6: NFKC, NFD, combining marks dropped, per-character lowercase, runs of [ \\t\\r\\n]
    to one space, " " stays " ", Unicode White_Space stripped at both ends."""
    text = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text))
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("M"))
    text = "".join(ch.lower() for ch in text)
    text = re.sub(r"[ \t\r\n]+", " ", text)
    if text == " ":
        return text
    return text.strip(WHITE_SPACE)


def token_key(decoded, raw):
    """The class key of a token: its raw vocabulary string when the decode has U+FFFD, else N(text),
    else (N empty) the text itself."""
    if "\ufffd" in decoded:
        return raw
    return normalize_text(decoded) or decoded


def vocabulary_strings(tokenizer_path):
    """[(raw vocabulary string, decoded text)] per id 0..|tok|-1 of a byte-level BPE tokenizer.json."""
    with open(tokenizer_path, encoding="utf-8") as f:
        tok = json.load(f)
    raw, decoded = {}, {}
    for string, i in tok["model"]["vocab"].items():
        raw[i], decoded[i] = string, byte_level_decode(string)
    for added in tok.get("added_tokens", []):
        raw[added["id"]] = decoded[added["id"]] = added["content"]
    size = max(raw) + 1 if raw else 0
    return [(raw.get(i, ""), decoded.get(i, "")) for i in range(size)]


@functools.lru_cache(maxsize=8)
def _token_classes(tokenizer_path, _modified, _size):
    classes, ids = [], {}
    for raw, decoded in vocabulary_strings(tokenizer_path):
        classes.append(ids.setdefault(token_key(decoded, raw), len(ids)))
    return tuple(classes), len(ids)


def token_classes(tokenizer_path):
    """(list of the class of each token id, number of classes), classes in first-seen order."""
    stat = os.stat(tokenizer_path)
    classes, n = _token_classes(os.path.abspath(tokenizer_path), stat.st_mtime_ns, stat.st_size)
    return list(classes), n


def _is_prime(n):
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):  # deterministic below 3.3e24
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def primes_per_layer(n_layers, N, n_heads, vocab):
    """Per Engram layer (config order) its primes in column order (n = 2..N, head h): each the
    smallest prime above the previous one (above vocab-1 at each new n) not used before."""
    used, layers = set(), []
    for _ in range(n_layers):
        primes = []
        for _n in range(2, N + 1):
            current = vocab - 1
            for _h in range(n_heads):
                current += 1
                while current in used or not _is_prime(current):
                    current += 1
                used.add(current)
                primes.append(current)
        layers.append(primes)
    return layers


def engram_primes(config):
    """Per Engram layer, the list of its primes in column order ((n-2) n_heads + h)."""
    c = text_config(config)
    return primes_per_layer(len(c["engram_layer_ids"]), c["engram_max_ngram_size"], c["engram_n_heads"],
                            c["engram_vocab_size"])


M32, M64, M128 = (1 << 32) - 1, (1 << 64) - 1, (1 << 128) - 1
PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645


def seed_sequence_words(entropy, n_words):
    """numpy's SeedSequence(entropy).generate_state(n_words, uint64), in pure Python."""
    words = []
    while True:
        words.append(entropy & M32)
        entropy >>= 32
        if not entropy:
            break
    hash_a = [0x43B0D7E5]

    def hashmix(v):
        v ^= hash_a[0]
        hash_a[0] = hash_a[0] * 0x931E8875 & M32
        v = v * hash_a[0] & M32
        return v ^ (v >> 16)

    def mix(x, y):
        r = (0xCA01F9DD * x - 0x4973F715 * y) & M32
        return r ^ (r >> 16)

    pool = [hashmix(words[i] if i < len(words) else 0) for i in range(4)]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(4, len(words)):
        for dst in range(4):
            pool[dst] = mix(pool[dst], hashmix(words[src]))
    hash_b, out = 0x8B51F9DD, []
    for i in range(2 * n_words):
        v = pool[i % 4] ^ hash_b
        hash_b = hash_b * 0x58F38DED & M32
        v = v * hash_b & M32
        out.append(v ^ (v >> 16))
    return [out[2 * i] | out[2 * i + 1] << 32 for i in range(n_words)]


class PCG64:
    """numpy's PCG64 (XSL-RR 128/64) seeded from a SeedSequence, with its 32-bit buffering."""

    def __init__(self, entropy):
        v = seed_sequence_words(entropy, 4)
        seed, self.inc = v[0] << 64 | v[1], ((v[2] << 64 | v[3]) * 2 + 1) & M128
        self.state = (self.inc + seed) & M128
        self.state = (self.state * PCG_MULT + self.inc) & M128
        self.half = None

    def next64(self):
        self.state = (self.state * PCG_MULT + self.inc) & M128
        x, rot = ((self.state >> 64) ^ self.state) & M64, self.state >> 122
        return ((x >> rot) | (x << (64 - rot))) & M64

    def next32(self):
        if self.half is not None:
            value, self.half = self.half, None
            return value
        value = self.next64()
        self.half = value >> 32
        return value & M32

    def integers(self, bound, count):
        """numpy Generator.integers(0, bound, count): Lemire's bounded draw (64- or 32-bit)."""
        rng = bound - 1
        if rng == 0:
            return [0] * count
        bits, draw = (32, self.next32) if rng <= M32 else (64, self.next64)
        mask = (1 << bits) - 1
        if rng == mask:
            return [draw() for _ in range(count)]
        out = []
        for _ in range(count):
            m = draw() * bound
            if m & mask < bound:
                threshold = (mask + 1 - bound) % bound
                while m & mask < threshold:
                    m = draw() * bound
            out.append(m >> bits)
        return out


def engram_multipliers(layer_id, n_classes, N):
    """m[s] = 2 u_s + 1, u = default_rng(10007 layer_id).integers(0, B, N), computed in pure Python
    and checked against numpy."""
    B = max(1, ((2 ** 63 - 1) // n_classes) // 2)
    u = PCG64(10007 * layer_id).integers(B, N)
    expected = np.random.default_rng(10007 * layer_id).integers(0, B, N).tolist()
    assert u == expected, f"pure-Python multipliers {u} differ from numpy's {expected}"
    return [2 * x + 1 for x in u]


class EngramHash:
    """Row indices of the Engram tables from the classes of the last N tokens (spec 3.6)."""

    def __init__(self, config, n_classes, pad):
        t = config
        self.N, self.heads, self.pad = t.N, t.e_heads, pad
        self.primes = t.engram_primes
        self.offsets = [np.concatenate([[0], np.cumsum(p)[:-1]]).astype(np.int64).tolist() for p in self.primes]
        self.multipliers = [engram_multipliers(l, n_classes, t.N) for l in t.engram_layers]

    def rows(self, index, back):
        """back[s] = class at p - s (pad before the prompt), s < N: the rows of Engram layer number
        `index` (config order), column (n-2) n_heads + h."""
        m, out, R = self.multipliers[index], [], None
        for i in range(1, self.N):
            R = (back[0] * m[0]) ^ (back[1] * m[1]) if i == 1 else R ^ (back[i] * m[i])
            for h in range(self.heads):
                column = (i - 1) * self.heads + h
                out.append(R % self.primes[index][column] + self.offsets[index][column])
        return out


def engram_rows(config, tokenizer_path, tokens):
    """np.ndarray [T, n_engram_layers, (N-1) n_heads] of table rows for a prompt."""
    t = config if isinstance(config, TextConfig) else TextConfig(config)
    classes, n = token_classes(tokenizer_path)
    hasher = EngramHash(t, n, classes[t.c["engram_pad_token_id"]])
    cls = [_class_of(classes, tok) for tok in tokens]
    out = np.zeros((len(tokens), len(t.engram_layers), (t.N - 1) * t.e_heads), np.int64)
    for p in range(len(tokens)):
        back = [cls[p - s] if p - s >= 0 else hasher.pad for s in range(t.N)]
        for i in range(len(t.engram_layers)):
            out[p, i] = hasher.rows(i, back)
    return out


def _class_of(classes, token):
    if not 0 <= token < len(classes):
        raise ValueError(f"token {token} has no Engram class (the tokenizer has {len(classes)} ids)")
    return classes[token]


# ---- the model ----

class Reference:
    def __init__(self, config, tensor, tokenizer_path=None):
        """`config`: the root config (or text_config) dict; `tensor(name)`: float64 torch tensor of the
        dequantized weight; `tokenizer_path`: tokenizer.json, needed with Engram layers."""
        self.t = config if isinstance(config, TextConfig) else TextConfig(config)
        self.tensor = tensor
        t = self.t
        self.freqs = [t.freqs(l) for l in range(t.L)]
        self.engram = None
        self.row_positions = None  # the position of each row of the activations (set per forward / step)
        if t.engram_layers:
            if tokenizer_path is None or not os.path.exists(tokenizer_path):
                raise ValueError(f"Engram layers need tokenizer.json (not found: {tokenizer_path})")
            self.classes, n_classes = token_classes(tokenizer_path)
            expected = t.c.get("engram_compressed_vocab_size")
            if expected is not None and expected != n_classes:
                raise ValueError(f"text_config.engram_compressed_vocab_size {expected}: the token map of "
                                 f"{tokenizer_path} has {n_classes} classes")
            pad_id = t.c["engram_pad_token_id"]
            if not 0 <= pad_id < len(self.classes):
                raise ValueError(f"text_config.engram_pad_token_id {pad_id} is not a tokenizer id")
            self.engram = EngramHash(t, n_classes, self.classes[pad_id])

    @classmethod
    def from_dir(cls, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            config = TextConfig(json.load(f))
        return cls(config, CheckpointWeights(model_dir, config), os.path.join(model_dir, "tokenizer.json"))

    def norm(self, x, name):
        return rms_norm(x, self.tensor(name), self.t.eps)

    def linear(self, x, name):
        return x @ self.tensor(name).T

    # ---- hyper-connections (spec 3.2) ----

    def hc_mix(self, X, prefix):
        """(pre [T, hc], post [T, hc], comb [T, hc, hc]) of the streams X [T, hc, D]."""
        t, hc = self.t, self.t.hc
        flat = X.reshape(X.shape[0], -1)
        m = (flat @ self.tensor(prefix + "fn").T) / torch.sqrt(flat.pow(2).mean(-1, keepdim=True) + t.eps)
        scale, base = self.tensor(prefix + "scale"), self.tensor(prefix + "base")
        pre = torch.sigmoid(m[:, :hc] * scale[0] + base[:hc]) + t.hc_eps
        post = 2 * torch.sigmoid(m[:, hc:2 * hc] * scale[1] + base[hc:2 * hc])
        C = (m[:, 2 * hc:] * scale[2] + base[2 * hc:]).view(-1, hc, hc)
        C = C.softmax(dim=-1) + t.hc_eps
        C = C / (C.sum(dim=-2, keepdim=True) + t.hc_eps)
        for _ in range(t.hc_iters - 1):
            C = C / (C.sum(dim=-1, keepdim=True) + t.hc_eps)
            C = C / (C.sum(dim=-2, keepdim=True) + t.hc_eps)
        return pre, post, C

    @staticmethod
    def collapse(X, a):
        return (a[:, :, None] * X).sum(1)

    @staticmethod
    def hc_post(X, y, post, comb):
        return post[:, :, None] * y[:, None, :] + torch.einsum("tij,tid->tjd", comb, X)

    def block(self, l, X, a, attention, record):
        """(X'', a2) of spec 3.2; `attention(x)` maps attn_norm outputs [T, D] to y [T, D]."""
        p = f"layers.{l}."
        a1, post, comb = self.hc_mix(X, p + "hc_attn_")
        h = self.collapse(X, a)
        record("attn_in", l, h)
        y = attention(self.norm(h, p + "attn_norm.weight"))
        record("attn_out", l, y)
        X = self.hc_post(X, y, post, comb)
        a2, post, comb = self.hc_mix(X, p + "hc_ffn_")
        h = self.collapse(X, a1)
        record("ffn_in", l, h)
        z = self.moe(l, self.norm(h, p + "ffn_norm.weight"))
        record("ffn_out", l, z)
        X = self.hc_post(X, z, post, comb)
        record("streams", l, X.reshape(X.shape[0], -1))
        return X, a2

    def embed(self, tokens):
        for token in tokens:
            if not 0 <= token < self.t.V:
                raise ValueError(f"token {token} outside the vocabulary of {self.t.V}")
        h = self.tensor("embed.weight")[torch.as_tensor(tokens, dtype=torch.long)]
        X = h[:, None, :].repeat(1, self.t.hc, 1)
        a = torch.zeros(len(tokens), self.t.hc, dtype=torch.float64)
        a[:, 0] = 1
        return X, a

    def final(self, X, a, record):
        hn = self.norm(self.collapse(X, a), "norm.weight")
        record("final_norm", -1, hn)
        return self.linear(hn, "head.weight")

    # ---- per-token projections of attention (spec 3.4) ----

    def projections(self, l, x, positions):
        """(q [T, H, hd] roped, Q8(qr) [T, q_lora_rank], window keys [T, hd]) of attention inputs x;
        Q8(x) and Q8(qr) are computed once and feed every linear that reads them."""
        t, p = self.t, f"layers.{l}.attn."
        xq = q8(x, positions)
        qr = self.norm(self.linear(xq, p + "wq_a.weight"), p + "q_norm.weight")
        qrq = q8(qr, positions)
        q = self.linear(qrq, p + "wq_b.weight").view(x.shape[0], t.H, t.hd)
        kv = self.norm(self.linear(xq, p + "wkv.weight"), p + "kv_norm.weight")
        return rope(q, positions, self.freqs[l]), qrq, q8(rope(kv, positions, self.freqs[l]), positions)

    def compressor_rows(self, l, x):
        """(A = Wkv x, B = Wgate x or None) per token, unrounded inputs."""
        p = f"layers.{l}.attn.compressor."
        return self.linear(x, p + "wkv.weight"), (self.linear(x, p + "wgate.weight") if self.t.ratios[l] > 1 else None)

    def pool(self, l, A, B):
        """One group's un-rotated c_g [hd] from its r rows A, B [r, hd]."""
        c = A[0] if B is None else (A * B.softmax(dim=0)).sum(0)
        return self.norm(c, f"layers.{l}.attn.compressor.norm.weight")

    def finish_groups(self, l, c, first_positions):
        """(compressed entries Q4e4 [n, hd], index keys Q4e8 [n, ID] or None) from c [n, hd]; a group's
        near ties are at its last token's position, the first that sees it."""
        p = f"layers.{l}.attn."
        first_positions = torch.as_tensor(first_positions)
        seen = first_positions + self.t.ratios[l] - 1
        entries = q4e4(rope(c, first_positions, self.freqs[l]), seen)
        if l not in self.t.index_sources:
            return entries, None
        k = self.norm(self.linear(c, p + "indexer.wk.weight"), p + "indexer.k_norm.weight")
        return entries, q4e8(rope(k, first_positions, self.freqs[l]), seen)

    def index_queries(self, l, x, qrq, positions):
        """(qI [T, IH, ID], wI [T, IH]) from x and Q8(qr)."""
        t, p = self.t, f"layers.{l}.attn.indexer."
        qi = self.linear(qrq, p + "wq_b.weight").view(x.shape[0], t.IH, t.ID)
        qi = q4e8(rope(qi, positions, self.freqs[l]), positions)
        w = self.linear(x, p + "weights_proj.weight") * t.ID ** -0.5 * t.IH ** -0.5
        return qi, w

    @staticmethod
    def index_scores(qi, w, keys):
        """score[t, s] = sum_h w_h max(0, qI_h . k_s): qi [T, IH, ID], w [T, IH], keys [S, ID] -> [T, S]."""
        return (torch.einsum("thd,sd->ths", qi, keys).clamp(min=0) * w[:, :, None]).sum(1)

    def attend(self, l, q, keys, visible, positions):
        """o [T, H, hd] (rope rotated back) from q [T, H, hd], keys = values [S, hd], visible [T, S]."""
        sink = self.tensor(f"layers.{l}.attn.attn_sink")
        scores = torch.einsum("thd,sd->ths", q, keys) / math.sqrt(self.t.hd)
        scores = scores.masked_fill(~visible[:, None, :], -math.inf)
        top = torch.maximum(scores.amax(-1), sink[None, :])
        weights = torch.exp(scores - top[..., None])
        o = torch.einsum("ths,sd->thd", weights, keys) / (weights.sum(-1) + torch.exp(sink[None, :] - top))[..., None]
        return rope(o, positions, self.freqs[l], inverse=True)

    def output(self, l, o):
        """Grouped output LoRA then wo_b: o [T, H, hd] -> [T, D]."""
        t, p = self.t, f"layers.{l}.attn."
        T = o.shape[0]
        groups = o.reshape(T, t.G, -1)
        wo_a = self.tensor(p + "wo_a.weight").view(t.G, t.R, -1)
        low = torch.einsum("tgi,gri->tgr", groups, wo_a).reshape(T, t.G * t.R)
        return self.linear(q8(low, self.row_positions), p + "wo_b.weight")

    # ---- MoE (spec 3.5) ----

    def swiglu(self, xq, prefix):
        gate, up = self.linear(xq, prefix + "w1.weight"), self.linear(xq, prefix + "w3.weight")
        if self.t.limit:
            gate, up = gate.clamp(max=self.t.limit), up.clamp(-self.t.limit, self.t.limit)
        return torch.nn.functional.silu(gate) * up

    def moe(self, l, x):
        t, p = self.t, f"layers.{l}.ffn."
        positions = self.row_positions
        xq = q8(x, positions)
        s = torch.sqrt(torch.logaddexp(self.linear(x, p + "gate.weight"), torch.zeros((), dtype=torch.float64)))
        choice = s + self.tensor(p + "gate.bias")
        experts = torch.sort(choice, dim=-1, descending=True, stable=True).indices[:, :t.k]
        chosen = s.gather(1, experts)
        weights = t.route_scale * (chosen / (chosen.sum(-1, keepdim=True) + 1e-20) if t.k > 1 else chosen)
        out = torch.zeros_like(x)
        for e in sorted(set(experts.flatten().tolist())):
            rows, slots = (experts == e).nonzero(as_tuple=True)
            h = weights[rows, slots, None] * self.swiglu(xq[rows], f"{p}experts.{e}.")
            out[rows] += self.linear(q8(h, None if positions is None else positions[rows]), f"{p}experts.{e}.w2.weight")
        if t.n_shared:
            shared = q8(self.swiglu(xq, p + "shared_experts."), positions)
            out = out + self.linear(shared, p + "shared_experts.w2.weight")
        return out

    # ---- Engram (spec 3.6) ----

    def engram_layer(self, l, X, rows):
        """X [T, hc, D] + g_c V with the table rows [T, (N-1) n_heads]."""
        t, p = self.t, f"layers.{l}.engram."
        T = X.shape[0]
        e = self.tensor(p + "embed.weight")[torch.as_tensor(rows, dtype=torch.long)].reshape(T, -1)
        kv = self.linear(q8(e, self.row_positions), p + "wkv.weight")
        K, V = kv[:, :t.hc * t.D].view(T, t.hc, t.D), kv[:, t.hc * t.D:]
        qk = self.tensor(p + "q_weight") * self.tensor(p + "k_weight")  # [hc, D]
        dot = (X * qk[None] * K).sum(-1) / (torch.sqrt(X.pow(2).mean(-1) + t.eps) *
                                             torch.sqrt(K.pow(2).mean(-1) + t.eps) * math.sqrt(t.D))
        g = torch.sigmoid(torch.sign(dot) * torch.sqrt(dot.abs().clamp(min=1e-6)))
        return X + g[..., None] * V[:, None, :]

    def token_class(self, token):
        return _class_of(self.classes, token)

    # ---- whole prompt (prefill semantics) ----

    def forward(self, tokens, record=lambda *a: None):
        tokens = [int(x) for x in tokens]
        self.row_positions = torch.arange(len(tokens))
        try:
            return self._forward(tokens, record)
        finally:
            self.row_positions = None

    def _forward(self, tokens, record):
        t = self.t
        X, a = self.embed(tokens)
        rows = None
        if self.engram:
            cls = [self.token_class(tok) for tok in tokens]
            rows = [[self.engram.rows(i, [cls[p - s] if p >= s else self.engram.pad for s in range(t.N)])
                     for i in range(len(t.engram_layers))] for p in range(len(tokens))]
        slots = {}
        for l in range(t.L):
            if l in t.engram_layers:
                i = t.engram_layers.index(l)
                X = self.engram_layer(l, X, [r[i] for r in rows])
                record("engram_out", l, X.reshape(X.shape[0], -1))
            X, a = self.block(l, X, a, lambda x: self.attention(l, x, slots), record)
        return self.final(X, a, record)

    def attention(self, l, x, slots):
        t, T, r = self.t, x.shape[0], self.t.ratios[l]
        positions = torch.arange(T)
        q, qr, keys = self.projections(l, x, positions)
        i, j = positions[:, None], positions[None, :]
        visible = (j <= i) & (j > i - t.win)
        if r:
            if l in t.kv_sources:
                A, B = self.compressor_rows(l, x)
                n = T // r
                c = [self.pool(l, A[g * r:(g + 1) * r], None if B is None else B[g * r:(g + 1) * r]) for g in range(n)]
                c = torch.stack(c) if c else torch.zeros(0, t.hd, dtype=torch.float64)
                entries, index_keys = self.finish_groups(l, c, torch.arange(n) * r)
                slots["cache"] = entries
                if index_keys is not None:
                    slots["keys"] = index_keys
            if l in t.index_sources:
                slots["selection"] = self.select_prefill(l, x, qr, positions, slots)
            keys = torch.cat([keys, slots["cache"]])
            visible = torch.cat([visible, slots["selection"]], dim=1)
        return self.output(l, self.attend(l, q, keys, visible, positions))

    def select_prefill(self, l, x, qr, positions, slots):
        """The selection [T, n entries] of index source l; publishes the candidate mask if l is the
        candidate source."""
        t, T, r = self.t, x.shape[0], self.t.ratios[l]
        index_keys = slots["keys"]
        n = index_keys.shape[0]
        selected = torch.zeros(T, n, dtype=torch.bool)
        if n == 0:
            if l == t.candidate:
                slots["mask"] = selected.clone()
            return selected
        qi, w = self.index_queries(l, x, qr, positions)
        scores = self.index_scores(qi, w, index_keys)
        future = torch.arange(n)[None, :] >= ((positions + 1) // r)[:, None]
        scores = scores.masked_fill(future, -math.inf)
        if t.candidate is not None and l > t.candidate:
            scores = scores.masked_fill(~slots["mask"], -math.inf)
        if l == t.candidate:
            mask = torch.zeros(T, n, dtype=torch.bool)
            for p in range(T):
                chosen = candidate_entries(scores[p].tolist(), (p + 1) // r, t.block_size, t.n_blocks, p)
                mask[p, sorted(chosen)] = True
            slots["mask"] = mask
        k = min(t.index_topk, n)
        for p in range(T):
            selected[p, top_k(scores[p].tolist(), k, p)] = True
        return selected


class Decoder:
    """Token-by-token decoding (spec 4): per layer a ring of `sliding_window` window keys; per kv
    source its compressed entries, index keys and the partial group; the Engram class history; the
    four shared slots, kept across steps. `published_index_keys=True` reproduces the upstream quirk:
    an index-key owner republishes its keys only in steps where its compressor emits."""

    def __init__(self, reference, published_index_keys=False):
        """`reference`: a Reference or a model directory."""
        if isinstance(reference, (str, os.PathLike)):
            reference = Reference.from_dir(reference)
        self.ref, self.t = reference, reference.t
        self.published_index_keys = published_index_keys
        self.position = 0
        self.history = []  # Engram classes of the last N-1 tokens
        self.rings = [[] for _ in range(self.t.L)]
        self.sources = {l: {"entries": [], "keys": [], "partial": []} for l in self.t.kv_sources}
        self.slots = {}

    def step(self, token):
        """float64 logits [V] of the next position."""
        self.ref.row_positions = torch.tensor([self.position])
        try:
            return self._step(int(token))
        finally:
            self.ref.row_positions = None

    def _step(self, token):
        ref, t = self.ref, self.t
        X, a = ref.embed([token])
        if ref.engram:
            cls = ref.token_class(token)
            back = [cls] + [self.history[-s] if s <= len(self.history) else ref.engram.pad for s in range(1, t.N)]
            self.history = (self.history + [cls])[-(t.N - 1):]
        for l in range(t.L):
            if l in t.engram_layers:
                i = t.engram_layers.index(l)
                X = ref.engram_layer(l, X, [ref.engram.rows(i, back)])
            X, a = ref.block(l, X, a, lambda x: self.attention_step(l, x), lambda *args: None)
        self.position += 1
        return ref.final(X, a, lambda *args: None)[0]

    def attention_step(self, l, x):
        ref, t, p, r = self.ref, self.t, self.position, self.t.ratios[l]
        positions = torch.tensor([p])
        q, qr, key = ref.projections(l, x, positions)
        self.rings[l] = (self.rings[l] + [key[0]])[-t.win:]
        keys = list(self.rings[l])
        if r:
            if l in t.kv_sources:
                source = self.sources[l]
                A, B = ref.compressor_rows(l, x)
                source["partial"].append((A[0], None if B is None else B[0]))
                emitted = len(source["partial"]) == r
                if emitted:
                    rows_a = torch.stack([row[0] for row in source["partial"]])
                    rows_b = None if B is None else torch.stack([row[1] for row in source["partial"]])
                    c = ref.pool(l, rows_a, rows_b)[None]
                    entry, index_key = ref.finish_groups(l, c, torch.tensor([p + 1 - r]))
                    source["entries"].append(entry[0])
                    if index_key is not None:
                        source["keys"].append(index_key[0])
                    source["partial"] = []
                self.slots["cache"] = source["entries"]
                if l in t.index_sources and (emitted or not self.published_index_keys):
                    self.slots["keys"] = source["keys"]
            if l in t.index_sources:
                self.slots["selection"] = self.select_step(l, x, qr, positions)
            cache = self.slots["cache"]
            keys += [cache[s] for s in self.slots["selection"]]
        keys = torch.stack(keys)
        visible = torch.ones(1, keys.shape[0], dtype=torch.bool)
        return ref.output(l, ref.attend(l, q, keys, visible, positions))

    def select_step(self, l, x, qr, positions):
        ref, t, p, r = self.ref, self.t, self.position, self.t.ratios[l]
        n = (p + 1) // r
        published = self.slots.get("keys", [])
        if len(published) < n:
            raise ValueError(f"layer {l} at position {p}: {n} entries visible but the published index keys "
                             f"hold {len(published)}")
        if n == 0:
            scores = []
        else:
            qi, w = ref.index_queries(l, x, qr, positions)
            scores = ref.index_scores(qi, w, torch.stack(published[:n]))[0].tolist()
        if t.candidate is not None and l > t.candidate:
            mask = self.slots["mask"]
            scores = [s if i in mask else -math.inf for i, s in enumerate(scores)]
        if l == t.candidate:
            self.slots["mask"] = candidate_entries(scores, n, t.block_size, t.n_blocks, p)
        return top_k(scores, min(t.index_topk, n), p)


# ---- checkpoints for tests: random weights in the official layout ----

def _quantize_pow2_blocks(values, block_rows, block_cols, maximum, grid):
    """(codes as grid values, E8M0 bytes) with each block's scale the power of two at or above amax/max."""
    rows, cols = values.shape
    br, bc = -(-rows // block_rows), -(-cols // block_cols)
    padded = np.zeros((br * block_rows, bc * block_cols))
    padded[:rows, :cols] = values
    blocks = np.abs(padded.reshape(br, block_rows, bc, block_cols)).max(axis=(1, 3))
    exponent = np.where(blocks > 0, np.ceil(np.log2(np.maximum(blocks, 1e-300) / maximum)), 0).astype(np.int64)
    exponent = np.clip(exponent, -127, 127)
    scale = np.ldexp(1.0, exponent)
    scaled = values / _expand(scale, rows, cols, block_rows, block_cols)
    rounded = round_to_grid(torch.from_numpy(np.clip(scaled, -maximum, maximum)), grid).numpy()
    return rounded, (exponent + 127).astype(np.uint8)


def quantize_fp8(values, block_rows=32, block_cols=32):
    """float matrix -> (e4m3 codes uint8, E8M0 scale bytes) of the official layout."""
    rounded, scale = _quantize_pow2_blocks(values, block_rows, block_cols, 448.0, E4M3_GRID)
    return safetensors_np.encode_e4m3(rounded), scale


def quantize_fp4(values):
    """float matrix [out, in] -> (I8 [out, in/2] two e2m1 codes per byte, low nibble even column;
    E8M0 scale bytes [out, in/32])."""
    rounded, scale = _quantize_pow2_blocks(values, 1, SCALE_BLOCK, 6.0, E2M1_GRID)
    magnitude = np.searchsorted(E2M1_GRID.numpy(), np.abs(rounded))
    codes = (magnitude | np.where(np.signbit(rounded), 8, 0)).astype(np.uint8)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).view(np.int8), scale


def dequantize(dtype, name, values):
    """The values a tensor of `dtype` holds after writing `values` (float64) in the official layout."""
    if dtype == FP8:
        block = (1, SCALE_BLOCK) if name.endswith("engram.embed.weight") else (32, 32)
        codes, scale = quantize_fp8(values, *block)
        rows, cols = values.shape
        return safetensors_np.E4M3_VALUES[codes].astype(np.float64) * \
            _expand(np.ldexp(1.0, scale.astype(np.int64) - 127), rows, cols, *block)
    if dtype == FP4:
        rounded, scale = _quantize_pow2_blocks(values, 1, SCALE_BLOCK, 6.0, E2M1_GRID)
        return rounded * np.repeat(np.ldexp(1.0, scale.astype(np.int64) - 127), SCALE_BLOCK, axis=1)
    if dtype == BF16:
        bits = safetensors_np.encode_bf16(values.astype(np.float32))
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return values.astype(np.float32).astype(np.float64)


def random_weights(config, seed, include_mtp=False):
    """{name: float64 numpy array of the dequantized weight} with scales that keep activations of
    order one, already exactly representable in the official layout's dtypes."""
    t = config if isinstance(config, TextConfig) else TextConfig(config)
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape, dtype in tensor_specs(t, include_mtp):
        if dtype == E8M0:
            continue
        if dtype == FP4:
            shape = [shape[0], shape[1] * 2]
        if name.endswith("norm.weight"):
            values = 1 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(("_base", "_scale", "attn_sink")):
            values = 0.5 * rng.standard_normal(shape)
        elif name.endswith(("gate.bias", "gate.bias_vl")):
            values = 0.05 * rng.standard_normal(shape)
        elif name.endswith(("q_weight", "k_weight")):
            values = 1 + 0.3 * rng.standard_normal(shape)
        elif name in ("embed.weight",) or name.endswith("engram.embed.weight"):
            values = rng.standard_normal(shape)
        else:
            values = rng.standard_normal(shape) / np.sqrt(shape[1])
        weights[name] = dequantize(dtype, name, values)
    return weights


DEFAULT_SPECIALS = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>")
DEFAULT_WORDS = (" the", " The", "THE", "the", "é", "É", "e\u0301", "Ａ", "ﬁ", "  ", "\n\n", " \t", "\u00a0x",
                 "Straße", "ΣΑΣ", "\u3000", "İ", "x\x1c", " hello", " world", "ing", " and")


def byte_level_tokenizer(words=DEFAULT_WORDS, specials=DEFAULT_SPECIALS):
    """A Hugging Face byte-level BPE tokenizer.json (as a dict) for tests: the specials at ids 0..,
    the 256 byte tokens (GPT-2 byte map) after them, then every prefix of each word's bytes as a merge."""
    vocab = {}
    for b in range(256):
        vocab[BYTE_TO_CHAR[b]] = len(specials) + b
    merges = []
    for word in words:
        chars = "".join(BYTE_TO_CHAR[b] for b in word.encode("utf-8"))
        for k in range(2, len(chars) + 1):
            if chars[:k] not in vocab:
                merges.append(f"{chars[:k - 1]} {chars[k - 1]}")
                vocab[chars[:k]] = len(specials) + len(vocab)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(specials)]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                                "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                      "merges": merges}}


PLAIN_DTYPES = {FP8: BF16, FP4: F32}


def write_checkpoint(directory, config, weights, layout="official", tokenizer=None, shards=1, extra=None):
    """Writes config.json (root layout), the weights (official: F8_E4M3 / I8 with F8_E8M0 scales; plain:
    BF16 for FP8 weights and F32 for FP4 experts, no scales), tokenizer.json (a dict) if given and
    `extra` tensors {name: (dtype, storage array)} (e.g. vision tensors the loader must ignore)."""
    os.makedirs(directory, exist_ok=True)
    root = config if "text_config" in config else {"architectures": [ARCHITECTURE], "text_config": config}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(root, f, indent=2)
    if tokenizer is not None:
        with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer, f, ensure_ascii=False)
    t = TextConfig(root)
    dtypes = {name: dtype for name, _, dtype in tensor_specs(t, include_mtp=True)}
    tensors = {}
    for name, values in weights.items():
        dtype = dtypes[name]
        if layout == "plain":
            dtype = PLAIN_DTYPES.get(dtype, dtype)
        if dtype == FP8:
            block = (1, SCALE_BLOCK) if name.endswith("engram.embed.weight") else (32, 32)
            codes, scale = quantize_fp8(values, *block)
            tensors[name], tensors[_scale_name(name)] = (FP8, codes), (E8M0, scale)
        elif dtype == FP4:
            packed, scale = quantize_fp4(values)
            tensors[name], tensors[_scale_name(name)] = (FP4, packed), (E8M0, scale)
        elif dtype == BF16:
            tensors[name] = (BF16, safetensors_np.encode_bf16(values.astype(np.float32)))
        else:
            tensors[name] = (F32, values.astype(np.float32))
        if not np.array_equal(dequantize(dtype, name, values), values):
            raise ValueError(f"{name} is not representable as {dtype}")
    tensors.update(extra or {})
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)] if shards > 1 \
        else ["model.safetensors"]
    contents = [{} for _ in files]
    for i, (name, value) in enumerate(tensors.items()):
        contents[i % len(files)][name] = value
    for file, part in zip(files, contents):
        safetensors_np.write_safetensors(os.path.join(directory, file), part, metadata={"format": "pt"})
    if shards > 1:
        weight_map = {n: file for file, part in zip(files, contents) for n in part}
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)


# ---- module API ----

def logits(model_dir, tokens):
    """float32 logits [T, vocab] for the token ids at positions 0..T-1."""
    return Reference.from_dir(model_dir).forward(list(tokens)).float().numpy()


def logits_and_near_ties(model_dir, tokens):
    """(logits, how many rounding / top-k decisions lay within NEAR_TIE of a boundary)."""
    _reset_near_ties()
    result = logits(model_dir, tokens)
    return result, near_ties


def first_tie_position():
    """The smallest earliest-affected position of the near ties counted since the last reset, or None."""
    return min(near_tie_positions) if near_tie_positions else None


def logits_and_first_tie(model_dir, tokens):
    """(float32 logits [T, vocab], the first position whose logits a near tie can change, or None when
    the forward had none): the logits before that position do not depend on any near tie."""
    _reset_near_ties()
    result = logits(model_dir, tokens)
    return result, first_tie_position()


def taps(model_dir, tokens):
    """({(name, layer): float64 array [T, width]}, near ties): engram_out, attn_in, attn_out, ffn_in,
    ffn_out, streams per layer and final_norm (layer -1)."""
    _reset_near_ties()
    recorded = {}
    Reference.from_dir(model_dir).forward(list(tokens), lambda name, layer, x: recorded.__setitem__((name, layer), x))
    return {key: value.numpy() for key, value in recorded.items()}, near_ties


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="DeepSeek-V4.1 model directory")
    parser.add_argument("--tokens", required=True, help="comma separated token ids")
    parser.add_argument("--output", required=True, help=".npy file for float32 logits [T, vocab]")
    args = parser.parse_args()
    np.save(args.output, logits(args.model, [int(x) for x in args.tokens.split(",")]))


if __name__ == "__main__":
    main()
