"""Named intermediate activations (`megamoe logits --taps DIR`, llama.cpp's cb(cur, "name", il)):
every tap of a V3 and a V4 model in exact numerics against the same names in the PyTorch
references, layer by layer, so a disagreement is located by layer and sublayer; and the locating
itself, on a reference whose layer-1 MoE is changed.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_taps
"""
import glob
import os
import tempfile
import unittest

import numpy as np

import harness  # first: puts tests/reference on the path
import deepseek_v3
import deepseek_v4

V3_TAPS = ("attn_norm", "attn_out", "ffn_norm", "ffn_out", "layer_out")
V4_TAPS = ("attn_in", "attn_out", "ffn_in", "ffn_out", "streams")
TOLERANCE = 1e-4  # max|megamoe - reference| / max|reference| of each tap


def read_taps(directory):
    """{(name, layer): array} from the files `logits --taps` wrote."""
    taps = {}
    for path in glob.glob(os.path.join(directory, "*.npy")):
        stem = os.path.basename(path)[:-len(".npy")]
        name, _, layer = stem.rpartition("-")
        taps[(name, int(layer)) if name else (stem, -1)] = np.load(path)
    return taps


def first_disagreement(megamoe, reference, order):
    """The first (name, layer) in forward order whose tap differs by more than TOLERANCE, or None."""
    for key in order:
        expected = np.asarray(reference[key], np.float64)
        if harness.relative_max_error(megamoe[key], expected) > TOLERANCE:
            return key
    return None


class Taps(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-taps-")
        cls.models = {"v3": os.path.join(cls.tmp.name, "v3"), "v4": os.path.join(cls.tmp.name, "v4")}
        harness.synth(harness.config_path("v3-noaux-yarn"), "bf16", 3, cls.models["v3"])
        harness.synth(harness.config_path("v4-csa-hca"), "fp8", 4, cls.models["v4"])

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def megamoe_taps(self, model, tokens):
        directory = tempfile.mkdtemp(dir=self.tmp.name)
        harness.megamoe_logits(model, tokens, os.path.join(self.tmp.name, "logits.npy"), "--numerics", "exact",
                               "--taps", directory)
        return read_taps(directory)

    def order(self, family):
        layers = harness.load_json(os.path.join(self.models[family], "config.json"))["num_hidden_layers"]
        names = V3_TAPS if family == "v3" else V4_TAPS
        return [(name, layer) for layer in range(layers) for name in names] + [("final_norm", -1)]

    def test_every_tap_matches_the_reference(self):
        for family, reference in (("v3", lambda m, t: (deepseek_v3.taps(m, t), 0)), ("v4", deepseek_v4.taps)):
            with self.subTest(family=family):
                vocab = harness.load_json(os.path.join(self.models[family], "config.json"))["vocab_size"]
                for seed in harness.EXACT_PROMPT_SEEDS:  # the first prompt without a round-trip near tie
                    tokens = harness.random_tokens(vocab, 24, seed)
                    expected, near_ties = reference(self.models[family], tokens)
                    if near_ties == 0:
                        break
                self.assertEqual(near_ties, 0, "every prompt had a near tie")
                got = self.megamoe_taps(self.models[family], tokens)
                self.assertEqual(sorted(got), sorted(self.order(family)))
                for key in self.order(family):
                    self.assertEqual(got[key].shape, expected[key].shape, key)
                self.assertIsNone(first_disagreement(got, expected, self.order(family)))

    def test_a_changed_layer_is_located(self):
        """The reference with layer 1's routed experts scaled: the first tap to differ is layer 1's ffn_out."""
        model = self.models["v3"]
        tokens = harness.random_tokens(harness.load_json(os.path.join(model, "config.json"))["vocab_size"], 24, 5)
        original = deepseek_v3.DeepseekV3Reference.weight

        def changed(reference, name):
            w = original(reference, name)
            return w * 1.5 if name.startswith("model.layers.1.mlp.experts.") else w
        deepseek_v3.DeepseekV3Reference.weight = changed
        try:
            expected, _ = deepseek_v3.taps(model, tokens), 0
        finally:
            deepseek_v3.DeepseekV3Reference.weight = original
        self.assertEqual(first_disagreement(self.megamoe_taps(model, tokens), expected, self.order("v3")),
                         ("ffn_out", 1))


if __name__ == "__main__":
    unittest.main()
