"""Independent float64 reference of the DeepSeek-V4 forward pass (docs/models.md sections 1 and 3).

Written from the spec alone: hyper-connection streams with Sinkhorn-normalized mixing, the
shared-KV attention (per-head query normalization, sliding window, attention sink, inverse rope
on the output, grouped low-rank output), compressed entries (overlapping r = 4 with the lightning
indexer, non-overlapping HCA ratios), per-layer rope bases with YaRN on compressed layers,
sqrt-softplus routing with bias or hash tables, clamped SwiGLU. Everything is computed in float64
except the quantization round trips the model was trained with, which are exact.

Two attention paths that share nothing but the per-token projections: `logits` (whole prompt,
visibility by masks) and `Decoder` (token by token, with its own window ring, compressed entries
and compressor partial windows); the self-checks require them to agree.

    /usr/bin/python3 tests/reference/deepseek_v4.py --model DIR --tokens 1,2,3 --output FILE.npy
writes float32 logits [T, vocab]; as a module, `logits(model_dir, tokens)` returns them.

Decisions where the model description leaves room (also in docs/deepseek-v4.md):
- RoPE is interleaved as in V2/V3 and rotates the last `qk_rope_head_dim` dims; YaRN changes the
  frequencies only (no cos/sin magnitude, no softmax factor).
- The indexer's compressor output is rotated and FP4 round-tripped instead of the FP8 round trip.
- An all-zero block stays zero in the FP4 round trip (its scale would be 2^-inf).
- Ties in the indexer's top-k (e.g. several scores exactly 0 after relu) go to the earlier entry.
- Routing weights are always normalized to sum 1 (norm_topk_prob is not consulted).
"""
import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

import safetensors_np

FP8_BLOCK, FP8_MAX = 64, 448.0
FP4_BLOCK, FP4_MAX = 32, 6.0
E2M1_GRID = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6], dtype=torch.float64)
E4M3_GRID = torch.from_numpy(safetensors_np.E4M3_VALUES[:0x7F].astype(np.float64))  # 0 .. 448, increasing


# ---- the quantization round trips (exact) ----

# A rounding decision closer than NEAR_TIE (relative) to a boundary of its grid or of its power-of-two
# scale may go either way in an engine that computes the value in fp32 rather than float64; both are
# right. `near_ties` counts such decisions since the caller last reset it, so that a comparison can
# tell those prompts apart from real disagreements.
NEAR_TIE = 1e-6
near_ties = 0


def count_near_ties(scaled, grid, amax_over_max):
    """scaled: values in units of their block scale; grid: the format's magnitudes, increasing;
    amax_over_max: the blocks' amax / format max, whose power of two above is the scale."""
    global near_ties
    boundaries = (grid[1:] + grid[:-1]) / 2
    magnitude = scaled.abs().reshape(-1)
    above = torch.searchsorted(boundaries, magnitude).clamp(max=len(boundaries) - 1)
    below = (above - 1).clamp(min=0)
    distance = torch.minimum((magnitude - boundaries[above]).abs(), (magnitude - boundaries[below]).abs())
    near_ties += int((distance <= NEAR_TIE * magnitude).sum())
    mantissa, _ = torch.frexp(amax_over_max.reshape(-1))  # in [0.5, 1): near 0.5 or 1 is near a power of two
    near_power = ((mantissa - 0.5).abs() <= NEAR_TIE) | ((1 - mantissa).abs() <= NEAR_TIE)
    near_ties += int((near_power & (mantissa != 0.5)).sum())

def power_of_two_at_least(values):
    """2^ceil(log2(v)) elementwise for v > 0, exactly (frexp instead of a rounded log)."""
    mantissa, exponent = torch.frexp(values)  # v = m * 2^e, m in [0.5, 1)
    return torch.ldexp(torch.ones_like(values), exponent - (mantissa == 0.5).long())


def fp8_round_trip(x):
    """Blocks of 64 along the last dim: scale 2^ceil(log2(max(amax, 1e-4) / 448)), round to the
    nearest e4m3 value (ties to even), multiply back."""
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // FP8_BLOCK, FP8_BLOCK)
    amax = blocks.abs().amax(-1, keepdim=True).clamp(min=1e-4)
    scale = power_of_two_at_least(amax / FP8_MAX)
    count_near_ties(blocks / scale, E4M3_GRID, amax / FP8_MAX)
    codes = safetensors_np.encode_e4m3((blocks / scale).numpy())
    rounded = torch.from_numpy(safetensors_np.E4M3_VALUES[codes].astype(np.float64))
    return (rounded * scale).reshape(x.shape)


def round_to_e2m1(v):
    """Nearest value of the e2m1 grid to |v| <= 6 (ties to the even code), sign kept."""
    magnitude = v.abs()
    code = torch.zeros_like(magnitude, dtype=torch.long)
    for candidate in range(1, 8):
        gap, best_gap = (E2M1_GRID[candidate] - magnitude).abs(), (E2M1_GRID[code] - magnitude).abs()
        code = torch.where((gap < best_gap) | ((gap == best_gap) & (candidate % 2 == 0)), candidate, code)
    return torch.sign(v) * E2M1_GRID[code]


def fp4_round_trip(x):
    """Blocks of 32 along the last dim: scale 2^ceil(log2(amax / 6)), round to the e2m1 grid,
    multiply back; an all-zero block stays zero."""
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // FP4_BLOCK, FP4_BLOCK)
    amax = blocks.abs().amax(-1, keepdim=True)
    scale = power_of_two_at_least(torch.where(amax > 0, amax / FP4_MAX, torch.ones_like(amax)))
    count_near_ties(blocks / scale, E2M1_GRID, torch.where(amax > 0, amax / FP4_MAX, torch.ones_like(amax)))
    return (round_to_e2m1(blocks / scale) * scale).reshape(x.shape)


def hadamard_rotate(x):
    """x @ H^T / sqrt(n) along the last dim, H the Sylvester Hadamard matrix (n a power of 2)."""
    n = x.shape[-1]
    index = torch.arange(n)
    bits = torch.bitwise_and(index[:, None], index[None, :])
    parity = torch.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits = bits >> 1
    H = (1 - 2 * parity).double()
    return x @ H.T / math.sqrt(n)


# ---- small pieces ----

def rms_norm(x, weight, eps):
    normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return normed if weight is None else normed * weight


def rope_frequencies(dim, theta, yarn):
    """f_i = theta^(-2i/dim), YaRN-interpolated when `yarn` (rope_scaling) is given."""
    freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if not yarn:
        return freqs
    s, original_length = yarn["factor"], yarn["original_max_position_embeddings"]

    def correction_dim(rotations):
        return dim * math.log(original_length / (2 * math.pi * rotations)) / (2 * math.log(theta))

    lo = max(math.floor(correction_dim(yarn.get("beta_fast", 32))), 0)
    hi = min(math.ceil(correction_dim(yarn.get("beta_slow", 1))), dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)
    return freqs / s * ramp + freqs * (1 - ramp)


def rope_tail(x, positions, freqs, inverse=False):
    """Interleaved RoPE on the last 2*len(freqs) dims of x [T, ..., d]; positions [T]."""
    dr = 2 * freqs.shape[0]
    angles = positions.double()[:, None] * freqs[None, :] * (-1 if inverse else 1)  # [T, dr/2]
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (dr // 2,)
    cos, sin = torch.cos(angles).view(shape), torch.sin(angles).view(shape)
    head, tail = x[..., :-dr], x[..., -dr:]
    even, odd = tail[..., 0::2], tail[..., 1::2]
    turned = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
    return torch.cat([head, turned], dim=-1)


def top_indices(scores, k):
    """Indices of the k largest scores, ties to the lower index."""
    order = sorted(range(len(scores)), key=lambda s: (-float(scores[s]), s))
    return order[:k]


class DeepseekV4Reference:
    def __init__(self, config, tensor, int8_weights=(), activation_rounding=None):
        """`tensor(name)` returns a float64 tensor (int64 for tid2eid). `activation_rounding`
        "q8_0" rounds the inputs of the `int8_weights` products (FP4, q8_0 and q4_0 weights) as
        megamoe's kernels do in fast numerics (an inference choice, docs/quantization.md#numerics);
        None keeps them exact."""
        self.config, self.tensor = config, tensor
        self.int8_weights, self.activation_rounding = set(int8_weights), activation_rounding
        c = config
        self.layers = c["num_hidden_layers"]
        self.ratios = c["compress_ratios"][:self.layers]
        self.eps, self.hc_eps = c["rms_norm_eps"], c["hc_eps"]
        self.M, self.D = c["hc_mult"], c["hidden_size"]
        self.window_freqs = rope_frequencies(c["qk_rope_head_dim"], c["rope_theta"], None)
        self.compressed_freqs = rope_frequencies(c["qk_rope_head_dim"], c["compress_rope_theta"],
                                                 c.get("rope_scaling"))

    @classmethod
    def from_dir(cls, model_dir, activation_rounding=None):
        checkpoint = safetensors_np.Checkpoint(model_dir)
        loaded = {}

        def tensor(name):
            if name not in loaded:
                t = checkpoint.tensor(name)
                loaded[name] = t if t.dtype == torch.int64 else t.double()
            return loaded[name]
        int8 = [n for n in checkpoint.entries if checkpoint.dtype(n) in ("I8", "U8")]  # FP4 and megamoe blocks
        return cls(checkpoint.config, tensor, int8, activation_rounding)

    def linear(self, x, name):
        if self.activation_rounding == "q8_0" and name in self.int8_weights:
            x = safetensors_np.q8_0_round_trip(x)
        return x @ self.tensor(name).T

    def norm(self, x, name):
        return rms_norm(x, self.tensor(name), self.eps)

    def freqs(self, layer):
        return self.compressed_freqs if self.ratios[layer] else self.window_freqs

    # ---- hyper-connections ----

    def hc_mix(self, X, prefix):
        """(mix over the flattened streams X [T, M, D]) / rms: [T, rows of hc_fn]."""
        flat = X.reshape(X.shape[0], -1)
        return (flat @ self.tensor(prefix + "fn").T) / torch.sqrt(flat.pow(2).mean(-1, keepdim=True) + self.eps)

    def hc_pre(self, X, prefix):
        """(input of the sublayer [T, D], post [T, M], comb [T, M, M])."""
        M, eps = self.M, self.hc_eps
        mix = self.hc_mix(X, prefix)
        scale, base = self.tensor(prefix + "scale"), self.tensor(prefix + "base")
        pre = torch.sigmoid(mix[:, :M] * scale[0] + base[:M]) + eps
        post = 2 * torch.sigmoid(mix[:, M:2 * M] * scale[1] + base[M:2 * M])
        logits = (mix[:, 2 * M:] * scale[2] + base[2 * M:]).view(-1, M, M)
        comb = logits.softmax(dim=-1) + eps
        comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)  # columns
        for _ in range(self.config["hc_sinkhorn_iters"] - 1):
            comb = comb / (comb.sum(dim=-1, keepdim=True) + eps)  # rows
            comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)  # columns
        return (pre[:, :, None] * X).sum(1), post, comb

    @staticmethod
    def hc_post(X, y, post, comb):
        """New streams: X_j = post_j * y + sum_i comb[i, j] X_i."""
        return post[:, :, None] * y[:, None, :] + torch.einsum("tij,tid->tjd", comb, X)

    def head(self, X, record=lambda *a: None):
        mix = self.hc_mix(X, "hc_head_")
        pre = torch.sigmoid(mix * self.tensor("hc_head_scale") + self.tensor("hc_head_base")) + self.hc_eps
        h = self.norm((pre[:, :, None] * X).sum(1), "norm.weight")
        record("final_norm", -1, h)
        return self.linear(h, "head.weight")

    # ---- attention pieces shared by both paths (per token) ----

    def queries(self, layer, x, positions):
        """(q [T, H, hd] normalized and roped, qr [T, q_lora_rank])."""
        c, p = self.config, f"layers.{layer}.attn."
        qr = self.norm(self.linear(x, p + "wq_a.weight"), p + "q_norm.weight")
        q = self.linear(qr, p + "wq_b.weight").view(x.shape[0], c["num_attention_heads"], c["head_dim"])
        q = rms_norm(q, None, self.eps)
        return rope_tail(q, positions, self.freqs(layer)), qr

    def raw_kv(self, layer, x, positions):
        """The window keys (= values) [T, hd]: normalized, roped, non-rope dims FP8 round-tripped."""
        p, dr = f"layers.{layer}.attn.", self.config["qk_rope_head_dim"]
        kv = rope_tail(self.norm(self.linear(x, p + "wkv.weight"), p + "kv_norm.weight"), positions, self.freqs(layer))
        return torch.cat([fp8_round_trip(kv[:, :-dr]), kv[:, -dr:]], dim=-1)

    def compressor_rows(self, prefix, x, positions, ratio):
        """Per token: kv [T, c*d] and gate scores g [T, c*d] (ape added) of a compressor."""
        kv = self.linear(x, prefix + "wkv.weight")
        g = self.linear(x, prefix + "wgate.weight") + self.tensor(prefix + "ape")[positions % ratio]
        return kv, g

    def pool_window(self, ratio, kv_rows, g_rows, previous_kv, previous_g):
        """One compressed entry [d] from its window's rows (r of them) and, for r = 4, the
        previous window's rows (None for window 0): softmax over the pool per feature."""
        d = kv_rows.shape[-1] // (2 if ratio == 4 else 1)
        if ratio == 4:
            kv, g = kv_rows[:, d:], g_rows[:, d:]
            if previous_kv is not None:
                kv, g = torch.cat([previous_kv[:, :d], kv]), torch.cat([previous_g[:, :d], g])
        else:
            kv, g = kv_rows, g_rows
        return (g.softmax(dim=0) * kv).sum(0)

    def finish_entries(self, layer, prefix, pooled, first_positions, indexer):
        """rms, rope at each window's first position, then FP8 (attention) or Hadamard + FP4
        (indexer) round trip. pooled [N, d] -> [N, d]."""
        dr = self.config["qk_rope_head_dim"]
        entries = rope_tail(self.norm(pooled, prefix + "norm.weight"), first_positions, self.freqs(layer))
        if indexer:
            return fp4_round_trip(hadamard_rotate(entries))
        return torch.cat([fp8_round_trip(entries[:, :-dr]), entries[:, -dr:]], dim=-1)

    def index_queries(self, layer, x, qr, positions):
        """(indexer queries [T, nh, dI] roped, rotated, FP4 round-tripped; head weights [T, nh])."""
        c, p = self.config, f"layers.{layer}.attn.indexer."
        nh, dI = c["index_n_heads"], c["index_head_dim"]
        iq = rope_tail(self.linear(qr, p + "wq_b.weight").view(x.shape[0], nh, dI), positions, self.freqs(layer))
        w = self.linear(x, p + "weights_proj.weight") * dI ** -0.5 * nh ** -0.5
        return fp4_round_trip(hadamard_rotate(iq)), w

    @staticmethod
    def index_scores(iq, w, index_keys):
        """I[t, s] = sum_h relu(iq_h . ik_s) * w_h: [T, N]."""
        return (torch.einsum("thd,sd->ths", iq, index_keys).relu() * w[:, :, None]).sum(1)

    def attend(self, layer, q, keys, visible, positions):
        """Softmax with the head's sink in the denominator over `visible` keys; returns
        o [T, H, hd] with the rope dims rotated back. q [T, H, hd], keys [S, hd], visible [T, S]."""
        hd = self.config["head_dim"]
        sink = self.tensor(f"layers.{layer}.attn.attn_sink")  # [H]
        scores = torch.einsum("thd,sd->ths", q, keys) * hd ** -0.5
        scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
        top = torch.maximum(scores.amax(-1), sink[None, :])  # [T, H]
        weights = torch.exp(scores - top[..., None])
        denominator = weights.sum(-1) + torch.exp(sink[None, :] - top)
        o = torch.einsum("ths,sd->thd", weights / denominator[..., None], keys)
        return rope_tail(o, positions, self.freqs(layer), inverse=True)

    def output(self, layer, o):
        """Grouped low-rank output: o [T, H, hd] -> [T, D]."""
        c, p = self.config, f"layers.{layer}.attn."
        G, R, T = c["o_groups"], c["o_lora_rank"], o.shape[0]
        groups = o.reshape(T, G, -1)  # [T, G, H*hd/G]
        if self.activation_rounding == "q8_0" and p + "wo_a.weight" in self.int8_weights:
            groups = safetensors_np.q8_0_round_trip(groups)  # each group is a product of its own
        wo_a = self.tensor(p + "wo_a.weight").view(G, R, -1)
        low_rank = torch.einsum("tgi,gri->tgr", groups, wo_a).reshape(T, G * R)
        return self.linear(low_rank, p + "wo_b.weight")

    # ---- whole-prompt attention: visibility by masks ----

    def attention(self, layer, x):
        c, p = self.config, f"layers.{layer}.attn."
        T, ratio, W = x.shape[0], self.ratios[layer], c["sliding_window"]
        positions = torch.arange(T)
        q, qr = self.queries(layer, x, positions)
        keys = self.raw_kv(layer, x, positions)
        t, s = positions[:, None], positions[None, :]
        visible = (s <= t) & (s > t - W)
        if ratio:
            n_entries = T // ratio
            entries = self.compressed(layer, p + "compressor.", x, positions, ratio, indexer=False)
            seen = torch.arange(n_entries)[None, :] < ((positions + 1) // ratio)[:, None]  # [T, N]
            if ratio == 4 and n_entries:
                index_keys = self.compressed(layer, p + "indexer.compressor.", x, positions, 4, indexer=True)
                iq, w = self.index_queries(layer, x, qr, positions)
                scores = self.index_scores(iq, w, index_keys)
                selected = torch.zeros_like(seen)
                for row in range(T):
                    visible_entries = int(seen[row].sum())
                    chosen = top_indices(scores[row, :visible_entries], c["index_topk"])
                    selected[row, chosen] = True
                seen = selected
            keys = torch.cat([keys, entries])
            visible = torch.cat([visible, seen], dim=1)
        return self.output(layer, self.attend(layer, q, keys, visible, positions))

    def compressed(self, layer, prefix, x, positions, ratio, indexer):
        """Every complete window's entry [T // ratio, d]."""
        kv, g = self.compressor_rows(prefix, x, positions, ratio)
        pooled = []
        for n in range(x.shape[0] // ratio):
            rows = slice(n * ratio, (n + 1) * ratio)
            previous = slice((n - 1) * ratio, n * ratio) if n > 0 else None
            pooled.append(self.pool_window(ratio, kv[rows], g[rows],
                                           kv[previous] if previous else None, g[previous] if previous else None))
        d = kv.shape[-1] // (2 if ratio == 4 else 1)
        pooled = torch.stack(pooled) if pooled else torch.zeros(0, d, dtype=torch.float64)
        first = torch.arange(pooled.shape[0]) * ratio
        return self.finish_entries(layer, prefix, pooled, first, indexer)

    # ---- MoE ----

    def mlp(self, prefix, x):
        limit = self.config.get("swiglu_limit") or 0
        gate, up = self.linear(x, prefix + "w1.weight"), self.linear(x, prefix + "w3.weight")
        if limit:
            gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
        return self.linear(F.silu(gate) * up, prefix + "w2.weight")

    def route(self, layer, x, tokens):
        """(weights [T, k], experts [T, k])."""
        c, p = self.config, f"layers.{layer}.ffn.gate."
        scores = torch.sqrt(torch.logaddexp(self.linear(x, p + "weight"), torch.zeros(())))  # sqrt(softplus)
        if layer < c["num_hash_layers"]:
            experts = self.tensor(p + "tid2eid")[torch.as_tensor(tokens)]
        else:
            choice = scores + self.tensor(p + "bias")  # the bias steers the choice only
            experts = choice.topk(c["num_experts_per_tok"], dim=-1).indices
        weights = scores.gather(1, experts)
        return weights / weights.sum(-1, keepdim=True) * c["routed_scaling_factor"], experts

    def ffn(self, layer, x, tokens):
        c, p = self.config, f"layers.{layer}.ffn."
        weights, experts = self.route(layer, x, tokens)
        out = torch.zeros_like(x)
        for expert in experts.unique().tolist():
            rows, slots = (experts == expert).nonzero(as_tuple=True)
            out[rows] += weights[rows, slots, None] * self.mlp(f"{p}experts.{expert}.", x[rows])
        if c.get("n_shared_experts"):
            out += self.mlp(p + "shared_experts.", x)
        return out

    # ---- the model ----

    def block(self, layer, X, tokens, attention, record=lambda *a: None):
        """`record(name, layer, x)` receives the intermediates megamoe reports with `logits --taps`."""
        p = f"layers.{layer}."
        h, post, comb = self.hc_pre(X, p + "hc_attn_")
        record("attn_in", layer, h)
        y = attention(self.norm(h, p + "attn_norm.weight"))
        record("attn_out", layer, y)
        X = self.hc_post(X, y, post, comb)
        h, post, comb = self.hc_pre(X, p + "hc_ffn_")
        record("ffn_in", layer, h)
        y = self.ffn(layer, self.norm(h, p + "ffn_norm.weight"), tokens)
        record("ffn_out", layer, y)
        X = self.hc_post(X, y, post, comb)
        record("streams", layer, X.reshape(X.shape[0], -1))
        return X

    def embed(self, tokens):
        h = self.tensor("embed.weight")[torch.as_tensor(tokens)]
        return h[:, None, :].repeat(1, self.M, 1)  # [T, M, D]: every stream starts as the embedding

    def logits(self, tokens, taps=None):
        """`taps` (a dict) receives {(name, layer): [T, width]} (layer -1: after the layers)."""
        record = (lambda name, layer, x: taps.__setitem__((name, layer), x)) if taps is not None else (lambda *a: None)
        X = self.embed(tokens)
        for layer in range(self.layers):
            X = self.block(layer, X, tokens, lambda x: self.attention(layer, x), record)
        return self.head(X, record)


class Decoder:
    """Token-by-token decoding with the cache docs/models.md#incremental-decode describes: per layer
    a ring of the last W raw keys, the compressed entries, and each compressor's partial window
    (plus, for r = 4, the previous window's rows) until the window completes."""

    def __init__(self, reference):
        self.ref = reference
        self.position = 0
        self.layers = []
        for ratio in reference.ratios:
            state = {"ring": [], "entries": [], "rows": [], "previous": None}
            if ratio == 4:
                state.update(index_entries=[], index_rows=[], index_previous=None)
            self.layers.append(state)

    def compressor_step(self, layer, prefix, x, position, rows_key, previous_key, entries_key, indexer):
        """Adds this token's compressor rows; completes a window's entry when it is full."""
        ref, state, ratio = self.ref, self.layers[layer], self.ref.ratios[layer]
        kv, g = ref.compressor_rows(prefix, x, torch.tensor([position]), ratio)
        state[rows_key].append((kv[0], g[0]))
        if len(state[rows_key]) < ratio:
            return
        kv_rows = torch.stack([r[0] for r in state[rows_key]])
        g_rows = torch.stack([r[1] for r in state[rows_key]])
        previous = state[previous_key]
        pooled = ref.pool_window(ratio, kv_rows, g_rows,
                                 previous[0] if previous else None, previous[1] if previous else None)
        first = torch.tensor([position - ratio + 1])
        state[entries_key].append(ref.finish_entries(layer, prefix, pooled[None], first, indexer)[0])
        state[previous_key] = (kv_rows, g_rows) if ratio == 4 else None
        state[rows_key] = []

    def attention_step(self, layer, x):
        ref, c, state = self.ref, self.ref.config, self.layers[layer]
        p, t, ratio = f"layers.{layer}.attn.", self.position, ref.ratios[layer]
        positions = torch.tensor([t])
        q, qr = ref.queries(layer, x, positions)
        state["ring"] = (state["ring"] + [ref.raw_kv(layer, x, positions)[0]])[-c["sliding_window"]:]
        keys = list(state["ring"])
        if ratio:
            self.compressor_step(layer, p + "compressor.", x, t, "rows", "previous", "entries", False)
            entries = state["entries"]
            if ratio == 4:
                self.compressor_step(layer, p + "indexer.compressor.", x, t, "index_rows", "index_previous",
                                     "index_entries", True)
                if entries:
                    iq, w = ref.index_queries(layer, x, qr, positions)
                    scores = ref.index_scores(iq, w, torch.stack(state["index_entries"]))[0]
                    entries = [entries[s] for s in sorted(top_indices(scores, c["index_topk"]))]
            keys += entries
        keys = torch.stack(keys)
        visible = torch.ones(1, keys.shape[0], dtype=torch.bool)
        return ref.output(layer, ref.attend(layer, q, keys, visible, positions))

    def step(self, token):
        """Logits [V] of one more token."""
        X = self.ref.embed([token])
        for layer in range(self.ref.layers):
            X = self.ref.block(layer, X, [token], lambda x: self.attention_step(layer, x))
        self.position += 1
        return self.ref.head(X)[0]


def logits(model_dir, tokens, activation_rounding=None):
    """float32 logits [T, vocab] for the token ids at positions 0..T-1."""
    with torch.no_grad():
        return DeepseekV4Reference.from_dir(model_dir, activation_rounding).logits(list(tokens)).float().numpy()


def taps(model_dir, tokens):
    """({(name, layer): float64 array [T, width]} of the named intermediates, near ties seen)."""
    global near_ties
    near_ties = 0
    recorded = {}
    with torch.no_grad():
        DeepseekV4Reference.from_dir(model_dir).logits(list(tokens), recorded)
    return {key: value.numpy() for key, value in recorded.items()}, near_ties


def logits_and_near_ties(model_dir, tokens):
    """(logits, how many round-trip decisions lay within NEAR_TIE of a boundary)."""
    global near_ties
    near_ties = 0
    result = logits(model_dir, tokens)
    return result, near_ties


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="DeepSeek-V4 model directory")
    parser.add_argument("--tokens", required=True, help="comma separated token ids")
    parser.add_argument("--output", required=True, help=".npy file for float32 logits [T, vocab]")
    args = parser.parse_args()
    np.save(args.output, logits(args.model, [int(t) for t in args.tokens.split(",")]))


if __name__ == "__main__":
    main()
