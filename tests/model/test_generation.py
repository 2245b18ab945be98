"""Generation through the KV cache: incremental logits equal a full pass bit for bit, greedy generation
continues exactly as repeated full forward passes of the PyTorch reference would, and bad
requests are refused before any work.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_generation
"""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import numpy as np

import harness  # first: puts tests/reference on the path
import deepseek_v3

# A V2-style (softmax, greedy gate, no q LoRA) and a V3-style (sigmoid, noaux_tc, YaRN) model.
CONFIGS = ("v2-lite-greedy", "v3-noaux-yarn")


class Generation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-generation-")
        cls.models = {}
        for i, name in enumerate(CONFIGS):
            cls.models[name] = os.path.join(cls.tmp.name, name)
            harness.synth(harness.config_path(name), "fp8", 40 + i, cls.models[name])

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_incremental_logits_equal_full_pass(self):
        for name, model in self.models.items():
            vocab = harness.load_json(harness.config_path(name))["vocab_size"]
            tokens = harness.random_tokens(vocab, 17, 5)
            full = harness.megamoe_logits(model, tokens, os.path.join(self.tmp.name, "full.npy"))
            for chunk in (1, 4):
                with self.subTest(config=name, chunk=chunk):
                    out = os.path.join(self.tmp.name, f"chunk{chunk}.npy")
                    harness.run_megamoe("logits", "--model", model, "--tokens", ",".join(map(str, tokens)),
                                        "--chunk-size", chunk, "--output", out)
                    # Bit for bit: every kernel computes a token's row the same whatever the batch.
                    np.testing.assert_array_equal(np.load(out), full, f"{name} chunks of {chunk}")

    def test_greedy_generation_matches_repeated_full_passes(self):
        steps = 8
        for name, model in self.models.items():
            with self.subTest(config=name):
                vocab = harness.load_json(harness.config_path(name))["vocab_size"]
                prompt = harness.random_tokens(vocab, 5, 9)
                out = harness.run_megamoe("generate", "--model", model, "--prompt-ids", ",".join(map(str, prompt)),
                                          "--max-tokens", steps, "--print-ids", "--ignore-eos")
                generated = [int(t) for t in out.split()]
                expected, sequence = [], list(prompt)
                for _ in range(steps):  # the reference recomputes everything for every token
                    token = int(deepseek_v3.logits(model, sequence)[-1].argmax())
                    expected.append(token)
                    sequence.append(token)
                self.assertEqual(generated, expected)

    def test_seeded_sampling_repeats(self):
        model = self.models["v3-noaux-yarn"]
        args = ("generate", "--model", model, "--prompt-ids", "3,4,5", "--max-tokens", 12, "--print-ids",
                "--temperature", 0.9, "--top-p", 0.9, "--top-k", 50, "--ignore-eos")
        first = harness.run_megamoe(*args, "--seed", 7)
        self.assertEqual(first, harness.run_megamoe(*args, "--seed", 7))
        self.assertNotEqual(first, harness.run_megamoe(*args, "--seed", 8))

    def test_reports_speed_and_cache(self):
        model = self.models["v2-lite-greedy"]
        result = subprocess.run([harness.megamoe_binary(), "generate", "--model", model, "--prompt-ids", "1,2",
                                 "--max-tokens", "4", "--print-ids"], capture_output=True, text=True, check=True)
        self.assertRegex(result.stderr, r"prompt: 2 tokens, [\d.]+ tokens/s \| generation: \d+ tokens, [\d.]+ "
                                        r"tokens/s \| KV cache: [\d.]+ MiB")

    def test_bad_requests_fail_before_work(self):
        model = self.models["v2-lite-greedy"]
        # The same weights with an enormous context: its KV cache cannot fit in memory.
        huge_context = os.path.join(self.tmp.name, "huge-context")
        if not os.path.exists(huge_context):
            shutil.copytree(model, huge_context)
            config = harness.load_json(os.path.join(huge_context, "config.json"))
            config["max_position_embeddings"] = 10 ** 12
            with open(os.path.join(huge_context, "config.json"), "w") as f:
                json.dump(config, f)
        cases = [
            (model, ["--prompt-ids", ",".join(["1"] * 20), "--max-context", "16"], "context"),
            (model, ["--prompt-ids", "1", "--temperature", "-1"], "temperature"),
            (model, ["--prompt-ids", "1", "--top-p", "0"], "top_p"),
            (model, ["--prompt-ids", "1", "--min-p", "2"], "min_p"),
            (model, ["--prompt-ids", "1", "--max-tokens", "0"], "max_tokens"),
            (model, ["--prompt-ids", "1,99999999"], "vocabulary"),
            (model, ["--prompt", "hello"], "tokenizer"),
            (huge_context, ["--prompt-ids", "1", "--max-tokens", str(10 ** 11)], "memory"),
            (model, [], "--prompt"),
        ]
        for directory, args, fragment in cases:
            with self.subTest(args=args[:2]):
                result = subprocess.run([harness.megamoe_binary(), "generate", "--model", directory, "--print-ids",
                                         *args], capture_output=True, text=True)
                self.assertEqual(result.returncode, 1, result.stderr[-500:])
                self.assertIn(fragment, result.stderr)
                self.assertEqual(result.stdout, "")


if __name__ == "__main__":
    unittest.main()
