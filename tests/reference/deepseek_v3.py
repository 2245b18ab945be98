"""Independent float64 reference of the DeepSeek-V2/V3 forward pass (docs/models.md sections 1-2).

Whole-prompt prefill, no cache: the naive MLA form, every gate variant, YaRN, cross-layer expert
pools (section 4, expert_pools.py). The MTP layer
(`model.layers.{num_hidden_layers}.*`) is not part of the forward pass.

    /usr/bin/python3 tests/reference/deepseek_v3.py --model DIR --tokens 1,2,3 --output FILE.npy
writes float32 logits [T, vocab]; as a module, `logits(model_dir, tokens)` returns them.
"""
import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

import expert_pools
import safetensors_np


def rms_norm(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_parameters(config):
    """(per-pair frequencies f_i, cos/sin multiplier, softmax scale multiplier m^2)."""
    dr, theta = config["qk_rope_head_dim"], config["rope_theta"]
    freqs = theta ** (-torch.arange(0, dr, 2, dtype=torch.float64) / dr)
    scaling = config.get("rope_scaling")
    if not scaling:
        return freqs, 1.0, 1.0
    if scaling.get("type") != "yarn":
        raise NotImplementedError(f"rope_scaling {scaling}")
    s, original_length = scaling["factor"], scaling["original_max_position_embeddings"]

    def correction_dim(rotations):
        return dr * math.log(original_length / (2 * math.pi * rotations)) / (2 * math.log(theta))

    lo = max(math.floor(correction_dim(scaling["beta_fast"])), 0)
    hi = min(math.ceil(correction_dim(scaling["beta_slow"])), dr - 1)
    if lo == hi:
        hi += 0.001
    ramp = ((torch.arange(dr // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)
    freqs = freqs / s * ramp + freqs * (1 - ramp)

    def m(mscale):
        return 0.1 * mscale * math.log(s) + 1

    # Defaults as in Hugging Face's DeepSeek code: mscale 1, mscale_all_dim 0 (m = 1).
    mscale, mscale_all_dim = scaling.get("mscale", 1.0), scaling.get("mscale_all_dim", 0.0)
    return freqs, m(mscale) / m(mscale_all_dim), m(mscale_all_dim) ** 2


def apply_rope(x, positions, freqs, scale):
    """Interleaved RoPE on x [T, heads, dr]: pair (x[2i], x[2i+1]) turns by pos * f_i."""
    angles = positions[:, None] * freqs[None, :]
    cos = (torch.cos(angles) * scale)[:, None, :]
    sin = (torch.sin(angles) * scale)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


class DeepseekV3Reference:
    def __init__(self, model_dir, activation_rounding=None):
        """`activation_rounding` "q8_0" rounds the inputs of products with megamoe's q8_0 / q4_0
        weights as its int8 kernels do in fast numerics (an inference choice,
        docs/quantization.md#numerics); None keeps them exact. kv_b_proj is exempt: megamoe absorbs
        it into the query and output (docs/models.md#absorbed-mla-cache), so no activation meets it
        in a matrix product."""
        self.activation_rounding = activation_rounding
        self.checkpoint = safetensors_np.Checkpoint(model_dir)
        self.config = self.checkpoint.config
        self.eps = self.config["rms_norm_eps"]
        self.freqs, self.rope_scale, self.softmax_mscale = rope_parameters(self.config)
        self.expert_owners = expert_pools.expert_owners(self.config)

    def weight(self, name):
        return self.checkpoint.tensor(name).double()

    def linear(self, x, name):
        if (self.activation_rounding == "q8_0" and self.checkpoint.dtype(name) == "U8"
                and not name.endswith("kv_b_proj.weight")):
            x = safetensors_np.q8_0_round_trip(x)
        return x @ self.weight(name).T

    def norm(self, x, name):
        return rms_norm(x, self.weight(name), self.eps)

    def attention(self, layer, x):
        """Naive MLA over x [T, D] (already normalized); returns [T, D]."""
        c = self.config
        heads, dn, dr, dv = (c["num_attention_heads"], c["qk_nope_head_dim"],
                             c["qk_rope_head_dim"], c["v_head_dim"])
        p = f"model.layers.{layer}.self_attn."
        T = x.shape[0]
        positions = torch.arange(T, dtype=torch.float64)
        if c["q_lora_rank"] is None:
            q = self.linear(x, p + "q_proj.weight")
        else:
            q_latent = self.norm(self.linear(x, p + "q_a_proj.weight"), p + "q_a_layernorm.weight")
            q = self.linear(q_latent, p + "q_b_proj.weight")
        q_nope, q_pe = q.view(T, heads, dn + dr).split([dn, dr], dim=-1)
        q_pe = apply_rope(q_pe, positions, self.freqs, self.rope_scale)

        latent, k_pe = self.linear(x, p + "kv_a_proj_with_mqa.weight").split(
            [c["kv_lora_rank"], dr], dim=-1)
        k_pe = apply_rope(k_pe.view(T, 1, dr), positions, self.freqs, self.rope_scale)[:, 0]
        kv = self.linear(self.norm(latent, p + "kv_a_layernorm.weight"), p + "kv_b_proj.weight")
        k_nope, v = kv.view(T, heads, dn + dv).split([dn, dv], dim=-1)

        scores = (torch.einsum("thd,shd->hts", q_nope, k_nope) +
                  torch.einsum("thd,sd->hts", q_pe, k_pe))
        scores = scores * (dn + dr) ** -0.5 * self.softmax_mscale
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        out = torch.einsum("hts,shd->thd", probs, v).reshape(T, heads * dv)
        return self.linear(out, p + "o_proj.weight")

    def mlp(self, prefix, x):
        gate = self.linear(x, prefix + "gate_proj.weight")
        return self.linear(F.silu(gate) * self.linear(x, prefix + "up_proj.weight"),
                           prefix + "down_proj.weight")

    def route(self, layer, x):
        """(weights [T, k], expert ids [T, k]) for a MoE layer."""
        c = self.config
        p = f"model.layers.{layer}.mlp.gate."
        logits = self.linear(x, p + "weight")
        if c["scoring_func"] == "sigmoid":
            scores = logits.sigmoid()
        elif c["scoring_func"] == "softmax":
            scores = logits.softmax(dim=-1)
        else:
            raise NotImplementedError(c["scoring_func"])
        # The bias steers the choice only; the weights come from the unbiased scores.
        choice = scores + self.weight(p + "e_score_correction_bias") \
            if p + "e_score_correction_bias" in self.checkpoint else scores
        method = c["topk_method"]
        if method in ("group_limited_greedy", "noaux_tc"):
            T, groups = x.shape[0], c["n_group"]
            per_group = c["n_routed_experts"] // groups
            if method == "noaux_tc":
                group_scores = choice.view(T, groups, per_group).topk(2, dim=-1).values.sum(-1)
            else:
                group_scores = scores.view(T, groups, per_group).max(dim=-1).values
            kept = group_scores.topk(c["topk_group"], dim=-1).indices
            kept_groups = torch.zeros(T, groups, dtype=torch.bool).scatter(1, kept, True)
            kept_experts = kept_groups[:, :, None].expand(T, groups, per_group).reshape(T, -1)
            choice = choice.masked_fill(~kept_experts, float("-inf"))
        elif method != "greedy":
            raise NotImplementedError(method)
        experts = choice.topk(c["num_experts_per_tok"], dim=-1).indices
        weights = scores.gather(1, experts)
        if c["norm_topk_prob"]:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * c["routed_scaling_factor"], experts

    def ffn(self, layer, x):
        c = self.config
        if layer not in self.expert_owners:
            return self.mlp(f"model.layers.{layer}.mlp.", x)
        # The layer's own gate; the experts of its pool (expert_pools.py).
        routed_layer, shared_layer = self.expert_owners[layer]
        weights, experts = self.route(layer, x)
        out = torch.zeros_like(x)
        for expert in experts.unique().tolist():
            tokens, slots = (experts == expert).nonzero(as_tuple=True)
            out[tokens] += weights[tokens, slots, None] * self.mlp(
                f"model.layers.{routed_layer}.mlp.experts.{expert}.", x[tokens])
        if c["n_shared_experts"]:
            out += self.mlp(f"model.layers.{shared_layer}.mlp.shared_experts.", x)
        return out

    def logits(self, tokens, taps=None):
        """`taps` (a dict) receives the named intermediates {(name, layer): [T, width]} that megamoe
        reports with `logits --taps` (layer -1: after the layers)."""
        record = (lambda name, layer, x: taps.__setitem__((name, layer), x)) if taps is not None else (lambda *a: None)
        h = self.weight("model.embed_tokens.weight")[torch.as_tensor(tokens)]
        for layer in range(self.config["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            x = self.norm(h, p + "input_layernorm.weight")
            record("attn_norm", layer, x)
            y = self.attention(layer, x)
            record("attn_out", layer, y)
            h = h + y
            x = self.norm(h, p + "post_attention_layernorm.weight")
            record("ffn_norm", layer, x)
            y = self.ffn(layer, x)
            record("ffn_out", layer, y)
            h = h + y
            record("layer_out", layer, h)
        x = self.norm(h, "model.norm.weight")
        record("final_norm", -1, x)
        return self.linear(x, "lm_head.weight")


def logits(model_dir, tokens, activation_rounding=None):
    """float32 logits [T, vocab] for the token ids at positions 0..T-1."""
    with torch.no_grad():
        return DeepseekV3Reference(model_dir, activation_rounding).logits(list(tokens)).float().numpy()


def taps(model_dir, tokens):
    """{(name, layer): float64 array [T, width]} of the named intermediates (see logits)."""
    recorded = {}
    with torch.no_grad():
        DeepseekV3Reference(model_dir).logits(list(tokens), recorded)
    return {key: value.numpy() for key, value in recorded.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face model directory")
    parser.add_argument("--tokens", required=True, help="comma separated token ids")
    parser.add_argument("--output", required=True, help=".npy file for float32 logits [T, vocab]")
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    np.save(args.output, logits(args.model, tokens))


if __name__ == "__main__":
    main()
