"""megamoe against the PyTorch reference on the tiny DeepSeek-V2/V3 configs in tests/configs
(together they cover every gate variant, q LoRA on/off, YaRN on/off, norm_topk_prob on/off,
routed_scaling_factor != 1, dense first layers or none, 0/1/2 shared experts, and dimensions
that are not multiples of 128 so FP8 blocks have partial edges).

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \
        /usr/bin/python3 -m unittest -v test_v3_logits
"""
import math
import os
import tempfile
import unittest

import harness
import deepseek_v3
import safetensors_np

DTYPES = ("bf16", "fp8")
TOKEN_COUNT = 12
TOLERANCE = 1e-3  # max|megamoe - reference| <= TOLERANCE * max|reference|
SHARDS = 3
SHARDED_CONFIG = "v3-noaux-yarn"


def cases():
    """(config name, config path, dtype, seed) for every tiny config and dtype."""
    configs = harness.tiny_v3_configs()
    return [(name, path, dtype, 100 * i + j)
            for i, (name, path) in enumerate(configs) for j, dtype in enumerate(DTYPES)]


def sharded_case():
    path = os.path.join(harness.CONFIG_DIR, SHARDED_CONFIG + ".json")
    return SHARDED_CONFIG, path, "fp8", 7


class V3Logits(unittest.TestCase):
    def check_case(self, name, config_path, dtype, seed, shards=None):
        config = harness.load_json(config_path)
        tokens = harness.random_tokens(config["vocab_size"], TOKEN_COUNT, seed)
        with tempfile.TemporaryDirectory(prefix="megamoe-v3-logits-") as d:
            model_dir = os.path.join(d, "model")
            harness.synth(config_path, dtype, seed, model_dir, shards)
            actual = harness.megamoe_logits(model_dir, tokens, os.path.join(d, "logits.npy"))
            reference = deepseek_v3.logits(model_dir, tokens)
        self.assertEqual(reference.shape, (TOKEN_COUNT, config["vocab_size"]))
        label = f"{name} {dtype}" + (f" {shards} shards" if shards else "")
        harness.assert_logits_close(self, actual, reference, TOLERANCE, label)

    def test_logits_match_reference(self):
        for name, path, dtype, seed in cases():
            with self.subTest(config=name, dtype=dtype):
                self.check_case(name, path, dtype, seed)

    def test_sharded_checkpoint(self):
        self.check_case(*sharded_case(), shards=SHARDS)


class SynthLayout(unittest.TestCase):
    """`megamoe synth` writes a Hugging Face layout with the names and dtypes of
    docs/models.md#v2v3-tensor-names-and-fp8-scales."""

    def check_layout(self, config_path, dtype, seed, shards=None):
        given = harness.load_json(config_path)
        with tempfile.TemporaryDirectory(prefix="megamoe-synth-") as d:
            harness.synth(config_path, dtype, seed, d, shards)
            written = harness.load_json(os.path.join(d, "config.json"))
            for key, value in given.items():
                self.assertIn(key, written)
                self.assert_json_equal(written[key], value, key)
            if dtype == "fp8":
                quantization = written.get("quantization_config", {})
                self.assertEqual(quantization.get("quant_method"), "fp8")
                self.assertEqual(quantization.get("weight_block_size"), [128, 128])
            else:
                self.assertNotIn("quantization_config", written)

            index_path = os.path.join(d, "model.safetensors.index.json")
            if shards:
                files = set(harness.load_json(index_path)["weight_map"].values())
                self.assertEqual(len(files), shards, "files named in the weight_map")
            checkpoint = safetensors_np.Checkpoint(d)  # also checks the weight_map against files
            mtp_prefix = f"model.layers.{given['num_hidden_layers']}."
            names = {n for n in checkpoint.entries if not n.startswith(mtp_prefix)}
            shapes = harness.v3_tensor_shapes(given)
            if dtype == "fp8":
                shapes.update({n + safetensors_np.SCALE_SUFFIX: [math.ceil(s[0] / 128),
                                                                 math.ceil(s[1] / 128)]
                               for n, s in list(shapes.items()) if harness.is_linear_weight(n)})
            self.assertEqual(sorted(names - shapes.keys()), [], "unexpected tensors")
            self.assertEqual(sorted(shapes.keys() - names), [], "missing tensors")
            for name, shape in shapes.items():
                self.assertEqual(checkpoint.shape(name), shape, name)
                expected_dtype = "F32" if name.endswith(safetensors_np.SCALE_SUFFIX) \
                    else harness.stored_dtype(name, dtype)
                self.assertEqual(checkpoint.dtype(name), expected_dtype, name)

    def assert_json_equal(self, actual, expected, key):
        if isinstance(expected, float):
            self.assertAlmostEqual(actual, expected, delta=1e-12 * abs(expected), msg=key)
        elif isinstance(expected, dict):
            self.assertIsInstance(actual, dict, key)
            self.assertEqual(sorted(actual), sorted(expected), key)
            for inner, value in expected.items():
                self.assert_json_equal(actual[inner], value, f"{key}.{inner}")
        else:
            self.assertEqual(actual, expected, key)

    def test_layout(self):
        for name, path, dtype, seed in cases():
            with self.subTest(config=name, dtype=dtype):
                self.check_layout(path, dtype, seed)

    def test_sharded_layout(self):
        _, path, dtype, seed = sharded_case()
        self.check_layout(path, dtype, seed, shards=SHARDS)


if __name__ == "__main__":
    unittest.main()
