"""Checks of the PyTorch reference itself, on checkpoints written here, without megamoe:
the safetensors codecs against known bit patterns, RoPE/YaRN against hand-computed numbers,
the gate variants on hand-made scores, the naive MLA against the cached (absorbed) form, and
BF16/FP8 checkpoints against the float weights they were made from."""
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

import harness
import deepseek_v3
import expert_pools
import safetensors_np
from deepseek_v3 import apply_rope, rms_norm

torch.set_grad_enabled(False)
TOKEN_COUNT = 12


def write_tensor_file(directory, tensors, config=None):
    """A one-file model directory holding `tensors` {name: (dtype, storage array)}."""
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config or {}, f)
    safetensors_np.write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
    return safetensors_np.Checkpoint(directory)


class SafetensorsCodecs(unittest.TestCase):
    def test_e4m3_known_values(self):
        values = safetensors_np.E4M3_VALUES
        expected = {0x00: 0.0, 0x01: 2.0 ** -9, 0x07: 7 / 8 * 2.0 ** -6, 0x08: 2.0 ** -6,
                    0x38: 1.0, 0x3C: 1.5, 0x7E: 448.0, 0xB8: -1.0, 0xFE: -448.0, 0x81: -2.0 ** -9}
        for code, value in expected.items():
            self.assertEqual(values[code], value, hex(code))
        self.assertTrue(np.isnan(values[0x7F]) and np.isnan(values[0xFF]))
        self.assertEqual(np.isnan(values).sum(), 2)
        self.assertTrue(np.all(np.diff(values[:0x7F]) > 0), "positive codes increase")

    def test_e4m3_encoding_rounds_to_nearest_even(self):
        finite = [c for c in range(256) if c not in (0x7F, 0xFF, 0x80)]
        np.testing.assert_array_equal(
            safetensors_np.encode_e4m3(safetensors_np.E4M3_VALUES[finite]), finite)
        # 1 + 1/16 lies halfway between 1 (0x38, even) and 1.125 (0x39): ties go to even.
        np.testing.assert_array_equal(safetensors_np.encode_e4m3([1.0625, 1.1875, -1.07]),
                                      [0x38, 0x3A, 0xB9])

    def test_bf16_e8m0_f16_decoding(self):
        with tempfile.TemporaryDirectory() as d:
            checkpoint = write_tensor_file(d, {
                "bf16": ("BF16", np.array([0x3F80, 0xC000, 0x3EAB], np.uint16)),
                "e8m0": ("F8_E8M0", np.array([127, 0, 130, 255], np.uint8)),
                "f16": ("F16", np.array([1.5, -0.25], np.float16)),
                "i64": ("I64", np.array([[3, -4]], np.int64))})
            np.testing.assert_array_equal(checkpoint.array("bf16"), [1.0, -2.0, 0.333984375])
            np.testing.assert_array_equal(checkpoint.array("e8m0")[:3], [1.0, 2.0 ** -127, 8.0])
            self.assertTrue(np.isnan(checkpoint.array("e8m0")[3]))
            np.testing.assert_array_equal(checkpoint.tensor("f16").numpy(), [1.5, -0.25])
            np.testing.assert_array_equal(checkpoint.array("i64"), [[3, -4]])
        self.assertEqual(safetensors_np.encode_bf16(np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8]))
                         .tolist(), [0x3F80, 0x3F80, 0x3F82])

    def test_fp8_blocks_with_partial_edges(self):
        # Block (i, j) gets magnitude 2^(i + 3j): a scale read from the wrong block shows at once.
        rng = np.random.default_rng(0)
        rows, cols = 200, 260
        magnitude = 2.0 ** (np.arange(rows)[:, None] // 128 + 3 * (np.arange(cols)[None, :] // 128))
        weight = (rng.standard_normal((rows, cols)) * magnitude).astype(np.float32)
        codes, scale_inv = safetensors_np.quantize_fp8_blocks(weight)
        self.assertEqual(scale_inv.shape, (2, 3))
        with tempfile.TemporaryDirectory() as d:
            checkpoint = write_tensor_file(d, {"w": ("F8_E4M3", codes),
                                               "w_scale_inv": ("F32", scale_inv)})
            dequantized = checkpoint.tensor("w").numpy()
        scale = np.kron(scale_inv, np.ones((128, 128)))[:rows, :cols]
        assert_within_fp8_error(self, dequantized, weight, scale, "w")


def assert_within_fp8_error(test, dequantized, weight, scale, name):
    """Half a step of e4m3 rounding: 2^-4 relative for normals, 2^-10 * scale for subnormals."""
    bound = np.maximum(np.abs(weight) * 2.0 ** -4, scale * 2.0 ** -10) * (1 + 1e-6)
    test.assertTrue(np.all(np.abs(dequantized - weight) <= bound), f"{name}: FP8 error too large")


def tiny_config(name):
    return harness.load_json(os.path.join(harness.CONFIG_DIR, name + ".json"))


class RopeAndYarn(unittest.TestCase):
    def test_rope_rotates_interleaved_pairs(self):
        x = torch.zeros(1, 1, 4, dtype=torch.float64)
        x[0, 0, 2] = 1.0  # the first element of pair 1
        freqs = torch.tensor([1.0, 0.25], dtype=torch.float64)
        rotated = apply_rope(x, torch.tensor([2.0], dtype=torch.float64), freqs, 1.0)
        expected = [0.0, 0.0, math.cos(0.5), math.sin(0.5)]
        np.testing.assert_allclose(rotated[0, 0].numpy(), expected, atol=1e-15)

    def test_yarn_numbers_by_hand(self):
        # dr 16, theta 1e4, L0 4096, beta 32/1: c(32) = 2.62 -> lo 2, c(1) = 5.63 -> hi 6.
        config = tiny_config("v2-lite-greedy")
        freqs, rope_scale, softmax_mscale = deepseek_v3.rope_parameters(config)
        base = 10000.0 ** (-np.arange(0, 16, 2) / 16)
        ramp = np.clip((np.arange(8) - 2) / 4, 0, 1)
        np.testing.assert_allclose(freqs.numpy(), base / 40 * ramp + base * (1 - ramp), rtol=1e-15)
        self.assertAlmostEqual(rope_scale, 1.0)
        self.assertAlmostEqual(softmax_mscale, (0.1 * 0.707 * math.log(40) + 1) ** 2)
        # dr 8, theta 5e4, L0 256: lo 0, hi 2; mscale 1 vs mscale_all_dim 0.5 scales cos/sin.
        config = tiny_config("v3-no-qlora-no-shared")
        freqs, rope_scale, softmax_mscale = deepseek_v3.rope_parameters(config)
        base = 50000.0 ** (-np.arange(0, 8, 2) / 8)
        ramp = np.array([0.0, 0.5, 1.0, 1.0])
        np.testing.assert_allclose(freqs.numpy(), base / 8 * ramp + base * (1 - ramp), rtol=1e-15)
        self.assertAlmostEqual(rope_scale, (0.1 * math.log(8) + 1) / (0.05 * math.log(8) + 1))
        self.assertAlmostEqual(softmax_mscale, (0.05 * math.log(8) + 1) ** 2)

    def test_yarn_factor_one_equals_no_yarn(self):
        config = tiny_config("v3-noaux-yarn")
        weights = harness.random_v3_weights(config, seed=5)
        tokens = harness.random_tokens(config["vocab_size"], TOKEN_COUNT, seed=5)
        variants = {"none": None, "factor 1": dict(config["rope_scaling"], factor=1.0),
                    "factor 40": config["rope_scaling"]}
        logits = {}
        with tempfile.TemporaryDirectory() as d:
            for label, rope_scaling in variants.items():
                directory = os.path.join(d, label.replace(" ", "-"))
                harness.write_v3_checkpoint(directory, dict(config, rope_scaling=rope_scaling),
                                            weights, "f32")
                logits[label] = deepseek_v3.logits(directory, tokens)
        np.testing.assert_allclose(logits["factor 1"], logits["none"], rtol=0, atol=1e-6)
        self.assertGreater(harness.relative_max_error(logits["factor 40"], logits["none"]), 1e-3,
                           "YaRN with factor 40 changes the logits")


class GateVariants(unittest.TestCase):
    """Router on hand-made gate logits (gate weight = identity, so logits = x)."""

    def route(self, x, bias=None, **settings):
        experts = len(x)
        config = dict(tiny_config("v3-noaux-yarn"), hidden_size=experts, n_routed_experts=experts,
                      first_k_dense_replace=0, routed_scaling_factor=2.0, **settings)
        tensors = {"model.layers.0.mlp.gate.weight": ("F32", np.eye(experts, dtype=np.float32))}
        if bias is not None:
            tensors["model.layers.0.mlp.gate.e_score_correction_bias"] = \
                ("F32", np.array(bias, np.float32))
        with tempfile.TemporaryDirectory() as d:
            write_tensor_file(d, tensors, config)
            reference = deepseek_v3.DeepseekV3Reference(d)
            weights, chosen = reference.route(0, torch.tensor([x], dtype=torch.float64))
        order = chosen[0].argsort()
        return chosen[0][order].tolist(), weights[0][order].numpy()

    def test_noaux_tc_groups_by_top2_sum_and_biases_selection_only(self):
        # Groups of 2: expert 0 is the single best but its group (3, -5) sums low.
        x = [3.0, -5.0, 1.0, 0.9, 0.8, 0.7, -1.0, -1.0]
        sigmoid = 1 / (1 + np.exp(-np.array(x)))
        settings = dict(scoring_func="sigmoid", topk_method="noaux_tc", n_group=4, topk_group=2,
                        num_experts_per_tok=2, norm_topk_prob=True)
        chosen, weights = self.route(x, **settings)
        self.assertEqual(chosen, [2, 3])
        np.testing.assert_allclose(weights, 2 * sigmoid[[2, 3]] / sigmoid[[2, 3]].sum())
        # +0.1 on expert 5 lifts it above expert 3; its weight stays the unbiased sigmoid.
        chosen, weights = self.route(x, bias=[0, 0, 0, 0, 0, 0.1, 0, 0], **settings)
        self.assertEqual(chosen, [2, 5])
        np.testing.assert_allclose(weights, 2 * sigmoid[[2, 5]] / sigmoid[[2, 5]].sum())

    def test_group_limited_greedy_groups_by_max(self):
        # Group maxima 3, 1.9, 2.5, 0 keep groups 0 and 2 (sums would keep groups 1 and 2).
        x = [3.0, -4.0, 1.9, 1.8, 2.5, 0.0, 0.0, -1.0]
        softmax = np.exp(x) / np.exp(x).sum()
        chosen, weights = self.route(x, scoring_func="softmax", topk_method="group_limited_greedy",
                                     n_group=4, topk_group=2, num_experts_per_tok=3,
                                     norm_topk_prob=False)
        self.assertEqual(chosen, [0, 4, 5])
        np.testing.assert_allclose(weights, 2 * softmax[[0, 4, 5]])

    def test_greedy_ignores_groups(self):
        x = [3.0, -4.0, 1.9, 1.8, 2.5, 0.0, 0.0, -1.0]
        softmax = np.exp(x) / np.exp(x).sum()
        chosen, weights = self.route(x, scoring_func="softmax", topk_method="greedy", n_group=1,
                                     topk_group=1, num_experts_per_tok=3, norm_topk_prob=False)
        self.assertEqual(chosen, [0, 2, 4])
        np.testing.assert_allclose(weights, 2 * softmax[[0, 2, 4]])


def absorbed_attention(reference, layer, x):
    """MLA decoded token by token from a cache of only rms(c) and the roped k_pe: W_UK is
    folded into the query, W_UV into the output (docs/models.md#2-deepseek-v2v3)."""
    c = reference.config
    heads, dn, dr, dv = (c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"],
                         c["v_head_dim"])
    p = f"model.layers.{layer}.self_attn."
    kv_b = reference.weight(p + "kv_b_proj.weight").view(heads, dn + dv, c["kv_lora_rank"])
    w_uk, w_uv = kv_b[:, :dn], kv_b[:, dn:]
    latent_cache, rope_key_cache, outputs = [], [], []
    for t in range(x.shape[0]):
        position = torch.tensor([float(t)], dtype=torch.float64)
        token = x[t:t + 1]
        if c["q_lora_rank"] is None:
            q = token @ reference.weight(p + "q_proj.weight").T
        else:
            q_latent = rms_norm(token @ reference.weight(p + "q_a_proj.weight").T,
                                reference.weight(p + "q_a_layernorm.weight"), reference.eps)
            q = q_latent @ reference.weight(p + "q_b_proj.weight").T
        q_nope, q_pe = q.view(1, heads, dn + dr).split([dn, dr], dim=-1)
        q_pe = apply_rope(q_pe, position, reference.freqs, reference.rope_scale)[0]
        latent, k_pe = (token @ reference.weight(p + "kv_a_proj_with_mqa.weight").T).split(
            [c["kv_lora_rank"], dr], dim=-1)
        latent_cache.append(rms_norm(latent, reference.weight(p + "kv_a_layernorm.weight"),
                                     reference.eps)[0])
        rope_key_cache.append(apply_rope(k_pe.view(1, 1, dr), position, reference.freqs,
                                         reference.rope_scale)[0, 0])
        latents, rope_keys = torch.stack(latent_cache), torch.stack(rope_key_cache)
        q_absorbed = torch.einsum("hd,hdc->hc", q_nope[0], w_uk)
        scores = (q_absorbed @ latents.T + q_pe @ rope_keys.T) * (dn + dr) ** -0.5 \
            * reference.softmax_mscale
        attended_latent = scores.softmax(dim=-1) @ latents
        outputs.append(torch.einsum("hc,hdc->hd", attended_latent, w_uv).reshape(heads * dv))
    return torch.stack(outputs) @ reference.weight(p + "o_proj.weight").T


class ReferenceModel(unittest.TestCase):
    def test_naive_mla_equals_absorbed_form(self):
        for name, path in harness.tiny_v3_configs():
            config = harness.load_json(path)
            with self.subTest(config=name), tempfile.TemporaryDirectory() as d:
                harness.write_v3_checkpoint(d, config, harness.random_v3_weights(config, 7), "f32")
                reference = deepseek_v3.DeepseekV3Reference(d)
                x = torch.randn(TOKEN_COUNT, config["hidden_size"], dtype=torch.float64,
                                generator=torch.Generator().manual_seed(7))
                for layer in range(config["num_hidden_layers"]):
                    naive = reference.attention(layer, x)
                    absorbed = absorbed_attention(reference, layer, x)
                    np.testing.assert_allclose(naive.numpy(), absorbed.numpy(),
                                               rtol=1e-10, atol=1e-12)

    def test_quantized_weights_follow_the_float_weights(self):
        """Every BF16/FP8 tensor as read back is within rounding of the float it was made from,
        and a forward without routing (routing flips under quantization) stays close."""
        for name, path in harness.tiny_v3_configs():
            config = harness.load_json(path)
            weights = harness.random_v3_weights(config, seed=3)
            with self.subTest(config=name), tempfile.TemporaryDirectory() as d:
                for dtype in ("bf16", "fp8"):
                    checkpoint = safetensors_np.Checkpoint(self.write(d, config, weights, dtype))
                    for tensor_name, weight in weights.items():
                        read = checkpoint.tensor(tensor_name).numpy()
                        kind = harness.stored_dtype(tensor_name, dtype)
                        self.assertEqual(checkpoint.dtype(tensor_name), kind)
                        if kind == "F8_E4M3":
                            scale_inv = checkpoint.array(tensor_name + "_scale_inv")
                            scale = np.kron(scale_inv, np.ones((128, 128)))[:weight.shape[0],
                                                                             :weight.shape[1]]
                            assert_within_fp8_error(self, read, weight, scale, tensor_name)
                        elif kind == "BF16":
                            self.assertTrue(np.all(np.abs(read - weight) <=
                                                   np.abs(weight) * 2.0 ** -8), tensor_name)
                        else:
                            np.testing.assert_array_equal(read, weight)

                dense = dict(config, first_k_dense_replace=config["num_hidden_layers"])
                dense_weights = harness.random_v3_weights(dense, seed=3)
                tokens = harness.random_tokens(config["vocab_size"], TOKEN_COUNT, seed=3)
                logits = {dtype: deepseek_v3.logits(
                    self.write(d, dense, dense_weights, dtype, "dense-"), tokens)
                    for dtype in ("f32", "bf16", "fp8")}
                # Measured about 8e-3 and 8e-2: e4m3 keeps 4 mantissa bits fewer than bf16.
                for dtype, tolerance in (("bf16", 2e-2), ("fp8", 2e-1)):
                    harness.assert_logits_close(self, logits[dtype], logits["f32"], tolerance,
                                                f"{name} dense {dtype} vs f32")

    @staticmethod
    def write(directory, config, weights, dtype, prefix=""):
        path = os.path.join(directory, prefix + dtype)
        harness.write_v3_checkpoint(path, config, weights, dtype, shards=3 if dtype == "fp8" else 1)
        return path

    def test_sharded_and_single_file_checkpoints_agree(self):
        config = tiny_config("v2-group-limited")
        weights = harness.random_v3_weights(config, seed=11)
        tokens = harness.random_tokens(config["vocab_size"], TOKEN_COUNT, seed=11)
        with tempfile.TemporaryDirectory() as d:
            for shards in (1, 3):
                harness.write_v3_checkpoint(os.path.join(d, str(shards)), config, weights, "bf16",
                                            shards)
            np.testing.assert_array_equal(deepseek_v3.logits(os.path.join(d, "1"), tokens),
                                          deepseek_v3.logits(os.path.join(d, "3"), tokens))

    def test_expert_pool_equals_copied_experts(self):
        # A pooled checkpoint computes what a per-layer one does when each layer holds a copy of
        # its group's first layer's routed and shared experts (docs/models.md#4-mega-moe-extensions).
        for name in ("v3-pool-shared", "v2-pool-layer-freq"):
            config = tiny_config(name)
            pooled = harness.random_v3_weights(config, seed=17)
            per_layer = dict(config, expert_sharing_group_size=1, share_shared_experts=False)
            copied = {}
            for tensor in harness.v3_tensor_shapes(per_layer):
                source = tensor
                for layer, (routed, shared) in expert_pools.expert_owners(config).items():
                    prefix = f"model.layers.{layer}.mlp."
                    for kind, owner in (("experts.", routed), ("shared_experts.", shared)):
                        if tensor.startswith(prefix + kind):
                            source = tensor.replace(prefix, f"model.layers.{owner}.mlp.")
                copied[tensor] = pooled[source]
            tokens = harness.random_tokens(config["vocab_size"], TOKEN_COUNT, seed=17)
            with self.subTest(config=name), tempfile.TemporaryDirectory() as d:
                harness.write_v3_checkpoint(d + "/pooled", config, pooled, "f32")
                harness.write_v3_checkpoint(d + "/copied", per_layer, copied, "f32")
                np.testing.assert_array_equal(deepseek_v3.logits(d + "/pooled", tokens),
                                              deepseek_v3.logits(d + "/copied", tokens))

    def test_command_line_writes_the_module_logits(self):
        config = tiny_config("v2-lite-greedy")
        tokens = harness.random_tokens(config["vocab_size"], TOKEN_COUNT, seed=13)
        with tempfile.TemporaryDirectory() as d:
            harness.write_v3_checkpoint(d, config, harness.random_v3_weights(config, 13), "bf16")
            output = os.path.join(d, "logits.npy")
            subprocess.run([sys.executable, os.path.join(harness.REFERENCE_DIR, "deepseek_v3.py"),
                            "--model", d, "--tokens", ",".join(map(str, tokens)),
                            "--output", output], check=True)
            written = np.load(output)
            self.assertEqual(written.dtype, np.float32)
            self.assertEqual(written.shape, (TOKEN_COUNT, config["vocab_size"]))
            np.testing.assert_array_equal(written, deepseek_v3.logits(d, tokens))


if __name__ == "__main__":
    unittest.main()
