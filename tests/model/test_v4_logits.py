"""megamoe against the DeepSeek-V4 PyTorch reference on the tiny V4 configs in tests/configs
(together: window-only, CSA and HCA layers, hash-routed and biased layers, an active SwiGLU clamp,
2, 3 and 4 hyper-connection streams, FP8 wo_a groups that start inside a 128-row scale block, YaRN
on and off, 1 and several output groups, MTP modules or none), in BF16 and in the official layout
(FP8 with ue8m0 scales, FP4 experts); incremental decoding against prefill over prompts longer than
the window and several compressed windows; the checkpoint layout synth writes; bad checkpoints named.

The comparison with the reference runs megamoe with --numerics exact (fp32 activations in every
product) on every prompt (harness.assert_matches_reference_on_every_prompt: the V4 round trips
excuse only prompts where the reference saw a value within 1e-6 of a rounding boundary). The fast
default, whose FP4 products round activations to q8_0 blocks, is held to a bound against exact mode
that a broken kernel cannot meet. Prefill against incremental decoding needs no allowance in either
mode: megamoe computes a token's row bit for bit the same whatever the batch.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_v4_logits
"""
import json
import math
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

import numpy as np

import harness  # first: puts tests/reference on the path
import deepseek_v4
import safetensors_np

DTYPES = ("bf16", "fp8")
INCREMENTAL_TOKENS = 70  # > every window, several compressed windows of every ratio
# Fast against exact mode with FP4 experts, on these random models where a rounded activation can
# change a routing choice (measured: median position 7e-4 to 1.4e-2, ||fast - exact|| / ||exact||
# up to 9e-2); a broken kernel is off by the size of the logits.
FAST_MEDIAN_POSITION_BOUND = 5e-2
FAST_NORM_BOUND = 2e-1


class V4Models(unittest.TestCase):
    """One checkpoint per tiny config and dtype, shared by the tests."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-v4-")
        cls.models = {}
        for i, (name, path) in enumerate(harness.tiny_v4_configs()):
            for j, dtype in enumerate(DTYPES):
                cls.models[name, dtype] = os.path.join(cls.tmp.name, f"{name}-{dtype}")
                harness.synth(path, dtype, 10 * i + j, cls.models[name, dtype])

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def logits(self, model, tokens, chunk=None, numerics="exact"):
        out = os.path.join(self.tmp.name, "logits.npy")
        return harness.megamoe_logits(model, tokens, out, "--numerics", numerics,
                                      *(["--chunk-size", chunk] if chunk else []))


class V4Logits(V4Models):
    def test_logits_match_reference(self):
        for (name, dtype), model in self.models.items():
            with self.subTest(config=name, dtype=dtype):
                config = harness.load_json(harness.config_path(name))
                harness.assert_matches_reference_on_every_prompt(
                    self, f"{name} {dtype}", config["vocab_size"], lambda tokens: self.logits(model, tokens),
                    lambda tokens: deepseek_v4.logits_and_near_ties(model, tokens))

    def test_fast_numerics_stay_near_exact(self):
        for (name, dtype), model in self.models.items():
            with self.subTest(config=name, dtype=dtype):
                config = harness.load_json(harness.config_path(name))
                tokens = harness.random_tokens(config["vocab_size"], 40, 2)
                exact = self.logits(model, tokens).astype(np.float64)
                fast = self.logits(model, tokens, numerics="fast")
                if dtype == "bf16":  # no int8 products: the modes are the same computation
                    np.testing.assert_array_equal(fast, exact)
                    continue
                per_position = np.abs(fast - exact).max(axis=1) / np.abs(exact).max()
                norm = float(np.linalg.norm(fast - exact) / np.linalg.norm(exact))
                print(f"{name} {dtype} fast against exact: median position {np.median(per_position):.1e}, "
                      f"||fast - exact|| / ||exact|| = {norm:.1e}")
                self.assertGreater(norm, 0, "fast mode should round the FP4 experts' activations")
                self.assertLessEqual(np.median(per_position), FAST_MEDIAN_POSITION_BOUND)
                self.assertLessEqual(norm, FAST_NORM_BOUND)

    def test_incremental_decoding_equals_prefill(self):
        for (name, dtype), model in self.models.items():
            for numerics in ("exact", "fast"):
                with self.subTest(config=name, dtype=dtype, numerics=numerics):
                    config = harness.load_json(harness.config_path(name))
                    tokens = harness.random_tokens(config["vocab_size"], INCREMENTAL_TOKENS, 2)
                    prefill = self.logits(model, tokens, numerics=numerics)
                    for chunk in (1, 5):
                        np.testing.assert_array_equal(self.logits(model, tokens, chunk, numerics), prefill,
                                                      f"{name} {dtype} {numerics} chunks of {chunk}")

    def test_sharded_checkpoint_gives_the_same_logits(self):
        name = "v4-csa-hca"
        sharded = os.path.join(self.tmp.name, "sharded")
        harness.synth(harness.config_path(name), "fp8", 10 * [n for n, _ in harness.tiny_v4_configs()].index(name) + 1,
                      sharded, shards=3)
        tokens = harness.random_tokens(512, 12, 1)
        np.testing.assert_array_equal(self.logits(sharded, tokens), self.logits(self.models[name, "fp8"], tokens))

    def test_greedy_generation_matches_repeated_reference_passes(self):
        model, steps = self.models["v4-csa-hca", "bf16"], 6
        prompt = harness.random_tokens(512, 14, 3)
        out = harness.run_megamoe("generate", "--model", model, "--prompt-ids", ",".join(map(str, prompt)),
                                  "--max-tokens", steps, "--print-ids", "--ignore-eos")
        expected, sequence = [], list(prompt)
        for _ in range(steps):
            token = int(deepseek_v4.logits(model, sequence)[-1].argmax())
            expected.append(token)
            sequence.append(token)
        self.assertEqual([int(t) for t in out.split()], expected)


class V4SynthLayout(V4Models):
    """`megamoe synth` writes the official V4 names, shapes and dtypes (docs/models.md#1-checkpoints)."""

    def test_layout(self):
        for (name, dtype), model in self.models.items():
            with self.subTest(config=name, dtype=dtype):
                config = harness.load_json(harness.config_path(name))
                written = harness.load_json(os.path.join(model, "config.json"))
                for key, value in config.items():
                    if key != "expert_dtype":
                        self.assertEqual(written[key], value, key)
                if dtype == "fp8":
                    self.assertEqual(written["quantization_config"]["scale_fmt"], "ue8m0")
                    self.assertEqual(written["expert_dtype"], "fp4")
                checkpoint = safetensors_np.Checkpoint(model)
                expected = {}
                for tensor, shape in harness.v4_tensor_shapes(config).items():
                    stored = harness.v4_stored_dtype(tensor, dtype)
                    scale = safetensors_np.v4_scale_name(tensor)
                    if stored == "I8":
                        expected[tensor] = ("I8", [shape[0], shape[1] // 2])
                        expected[scale] = ("F8_E8M0", [shape[0], shape[1] // 32])
                    elif stored == "F8_E4M3":
                        expected[tensor] = ("F8_E4M3", shape)
                        expected[scale] = ("F8_E8M0", [math.ceil(shape[0] / 128), math.ceil(shape[1] / 128)])
                    else:
                        expected[tensor] = (stored, shape)
                actual = {n: (checkpoint.dtype(n), checkpoint.shape(n)) for n in checkpoint.entries}
                self.assertEqual(sorted(actual.keys() - expected.keys()), [], "unexpected tensors")
                self.assertEqual(sorted(expected.keys() - actual.keys()), [], "missing tensors")
                for tensor, value in expected.items():
                    self.assertEqual(actual[tensor], value, tensor)

    def test_inspect_counts_the_files(self):
        name = "v4-csa-hca"
        config = harness.load_json(harness.config_path(name))
        summary = json.loads(harness.run_megamoe("inspect", self.models[name, "fp8"], "--json"))
        shapes = harness.v4_tensor_shapes(config)
        count = lambda shape: math.prod(shape)
        mtp = sum(count(s) for n, s in shapes.items() if n.startswith("mtp."))
        total = sum(count(s) for n, s in shapes.items() if not n.startswith("mtp."))
        routed = sum(count(s) for n, s in shapes.items() if ".ffn.experts." in n and not n.startswith("mtp."))
        self.assertEqual(summary["total_parameters"], total)
        self.assertEqual(summary["mtp_parameters"], mtp)
        self.assertEqual(summary["active_parameters"],
                         total - routed + routed * config["num_experts_per_tok"] // config["n_routed_experts"])
        self.assertEqual(summary["unused_tensors"], 0)


class V4BadInput(V4Models):
    """Every missing or mis-shaped V4 tensor is named, as in the V3 loader."""

    def expect_failure(self, model, *fragments):
        out = os.path.join(self.tmp.name, "bad.npy")
        result = subprocess.run([harness.megamoe_binary(), "logits", "--model", model, "--tokens", "1,2,3",
                                 "--output", out], capture_output=True, text=True)
        self.assertEqual(result.returncode, 1, result.stderr)
        message = result.stderr.strip()
        self.assertEqual(len(message.splitlines()), 1, message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertFalse(os.path.exists(out))

    def edited(self, edit, name="v4-csa-hca", dtype="fp8"):
        model = os.path.join(self.tmp.name, "edited")
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(self.models[name, dtype], model)
        weights = os.path.join(model, "model.safetensors")
        header, data = harness.read_raw(weights)
        edit(header, data)
        harness.write_raw(weights, header, data)
        return model

    def test_missing_tensors(self):
        for tensor in ("layers.1.attn.indexer.compressor.ape", "layers.2.attn.compressor.wgate.weight",
                       "layers.0.ffn.gate.tid2eid", "layers.3.ffn.gate.bias", "hc_head_fn", "layers.2.hc_ffn_scale",
                       "layers.1.ffn.experts.5.w2.scale", "layers.0.attn.wo_a.scale", "mtp.0.e_proj.weight",
                       "mtp.0.hc_head_base", "layers.3.attn.attn_sink"):
            with self.subTest(tensor=tensor):
                self.expect_failure(self.edited(lambda h, d: h.pop(tensor)), tensor, "missing")

    def test_misshaped_tensors(self):
        for tensor in ("layers.1.attn.wo_a.weight", "layers.2.ffn.experts.3.w1.weight",
                       "layers.2.ffn.experts.3.w1.scale", "layers.1.attn.indexer.wq_b.scale", "layers.2.attn.compressor.ape",
                       "layers.0.hc_attn_fn", "layers.0.ffn.gate.tid2eid"):
            def transpose(header, data, tensor=tensor):
                header[tensor]["shape"] = header[tensor]["shape"][::-1]
            with self.subTest(tensor=tensor):
                self.expect_failure(self.edited(transpose), tensor, "shape")

    def test_wrong_dtypes(self):
        for tensor, dtype in (("layers.0.attn.wkv.scale", "I8"), ("layers.1.ffn.experts.0.w3.weight", "U8"),
                              ("layers.0.ffn.gate.tid2eid", "F32")):
            with self.subTest(tensor=tensor):
                self.expect_failure(self.edited(lambda h, d: h[tensor].update(dtype=dtype)), tensor, dtype)

    def test_hash_table_outside_the_experts(self):
        def corrupt(header, data):
            begin = header["layers.0.ffn.gate.tid2eid"]["data_offsets"][0]
            data[begin:begin + 4] = struct.pack("<i", 99)
        model = os.path.join(self.tmp.name, "bad-table")
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(self.models["v4-csa-hca", "fp8"], model)
        weights = os.path.join(model, "model.safetensors")
        header, data = harness.read_raw(weights)
        data = bytearray(data)
        corrupt(header, data)
        harness.write_raw(weights, header, bytes(data))
        self.expect_failure(model, "layers.0.ffn.gate.tid2eid", "99")

    def test_inconsistent_config(self):
        cases = [("compress_ratios", lambda c: c.update(compress_ratios=[0, 4])),
                 ("head_dim", lambda c: c.update(head_dim=c["qk_rope_head_dim"] + 8)),
                 ("o_groups", lambda c: c.update(o_groups=3)),
                 ("index_head_dim", lambda c: c.update(index_head_dim=48)),
                 ("scoring_func", lambda c: c.update(scoring_func="sigmoid")),
                 ("num_hash_layers", lambda c: c.update(num_hash_layers=9))]
        for key, edit in cases:
            with self.subTest(key=key):
                model = self.edited(lambda h, d: None)
                path = os.path.join(model, "config.json")
                config = harness.load_json(path)
                edit(config)
                with open(path, "w") as f:
                    json.dump(config, f)
                self.expect_failure(model, "config.json", key)


class V4Inspect(unittest.TestCase):
    """The published configs: parameter counts as announced, and the KV cache far below V3's."""

    def inspect(self, name, context=2 ** 20):
        path = os.path.join(os.path.dirname(harness.TESTS_DIR), "configs", name + ".json")
        return json.loads(harness.run_megamoe("inspect", path, "--json", "--context", context))

    def test_published_sizes(self):
        # Flash: 284B parameters, 13B active; Pro: 1.6T (with its MTP module), 49B active.
        flash, pro = self.inspect("deepseek-v4-flash"), self.inspect("deepseek-v4-pro")
        self.assertAlmostEqual(flash["total_parameters"] / 1e9, 284, delta=2)
        self.assertAlmostEqual(flash["active_parameters"] / 1e9, 13.5, delta=1)
        self.assertAlmostEqual((pro["total_parameters"] + pro["mtp_parameters"]) / 1e12, 1.6, delta=0.02)
        self.assertAlmostEqual(pro["active_parameters"] / 1e9, 49.5, delta=1)

    def test_kv_cache_far_below_v3_at_1m_tokens(self):
        v3 = self.inspect("deepseek-v3")
        for name in ("deepseek-v4-flash", "deepseek-v4-pro"):
            v4 = self.inspect(name)
            self.assertEqual(v4["deepseek_v3_kv_cache_bytes_per_token"], v3["kv_cache_bytes_per_token"])
            self.assertLess(v4["kv_cache_bytes_per_token"] * 5, v3["kv_cache_bytes_per_token"], name)


if __name__ == "__main__":
    unittest.main()
