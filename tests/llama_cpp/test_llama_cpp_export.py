"""`megamoe export-gguf` files run in llama.cpp (node-llama-cpp's prebuilt CPU libraries, installed by
tests/llama_cpp/setup.sh) and in megamoe, and megamoe reads them as it reads the checkpoint they came
from (docs/gguf.md):

- f32 exports of a DeepSeek-V3 model (sigmoid router with groups and bias, q LoRA, YaRN) and a V2 one
  (softmax, no q LoRA, two shared experts, YaRN with mscale 0.707): llama.cpp's logits after every
  prefix equal megamoe's from the file within 1e-3, megamoe's from the file equal its own from the
  directory bit for bit, and the three greedy continuations are the same tokens;
- q8_0 and q4_0 exports of megamoe's quantized checkpoints: megamoe from the file against megamoe
  from the directory (the first position bit for bit; later ones within what the requantized
  attn_k_b explains), and llama.cpp against megamoe's fast numerics (median KL below 0.005);
- the tokenizer the file carries: megamoe and llama.cpp give the directory's tokenizer.json ids;
- a DeepSeek-V4 file (deepseek4) made by tests/model/test_gguf_v4.py's converter, which follows
  llama.cpp's: llama.cpp runs it, and its logits stay within its own activation rounding of
  megamoe's from the same file (median KL below 0.005, the same argmax at most positions).

    cd tests/llama_cpp && MEGAMOE_BIN=/path/to/megamoe /usr/bin/python3 -m unittest -v test_llama_cpp_export
"""
import json
import os
import shutil
import subprocess
import sys
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "model"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "reference"))
import harness  # noqa: E402
import test_gguf_v4  # noqa: E402
from test_gguf_model import read_gguf  # noqa: E402

TRAINING_TEXT = "/usr/share/common-licenses/GPL-3"
VOCAB = 600  # the models' vocabulary is the tokenizer's: llama.cpp may pick ids megamoe's sampler never offers
PROMPT = [263, 79, 318, 281, 7, 400, 12, 90]
CONTINUATION = 24


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class LlamaCppExport(harness.ScratchTestCase):
    @classmethod
    def setUpClass(cls):
        if shutil.which("npm") is None or shutil.which("node") is None:
            raise unittest.SkipTest("node/npm are not installed (scripts/setup.sh installs them): llama.cpp cannot run")
        subprocess.run([os.path.join(HERE, "setup.sh")], check=True, timeout=600)
        cls.make_scratch("megamoe-llama-cpp-")
        cls.tokenizer = harness.train_tokenizer(cls.path("tokenizer"), TRAINING_TEXT, VOCAB)
        cls.models = {}
        for name, config in [("v3", os.path.join(os.path.dirname(os.path.dirname(HERE)), "configs", "tiny-v3.json")),
                             ("v2", harness.config_path("v2-lite-greedy"))]:
            model = cls.path(name)
            harness.synth_with_tokenizer(config, "bf16", 7, model, cls.tokenizer)
            cls.models[name] = model
            harness.run_megamoe("export-gguf", "--model", model, "--output", model + ".gguf", "--dtype", "f32")
        for dtype in ("q8_0", "q4_0"):
            model = cls.path("v3-" + dtype)
            harness.run_megamoe("quantize", "--model", cls.models["v3"], "--dtype", dtype, "--output", model)
            harness.run_megamoe("export-gguf", "--model", model, "--output", model + ".gguf", "--dtype", dtype)
            cls.models["v3-" + dtype] = model

    def llama(self, *args):
        result = subprocess.run(["node", "llama_cpp.mjs", *map(str, args)], cwd=HERE, capture_output=True,
                                text=True, timeout=300)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        return json.loads(result.stdout)

    def megamoe_logits(self, model, *extra):
        return harness.megamoe_logits(model, PROMPT, self.path("logits.npy"), "--numerics", "exact", *extra)

    def megamoe_greedy(self, model):
        out = harness.run_megamoe("generate", "--model", model, "--prompt-ids", ",".join(map(str, PROMPT)),
                                  "--max-tokens", CONTINUATION, "--temperature", 0, "--ignore-eos", "--print-ids")
        return [int(t) for t in out.split()]

    def test_f32_export_is_the_model_in_llama_cpp_and_megamoe(self):
        for name in ("v3", "v2"):
            with self.subTest(model=name):
                model = self.models[name]
                from_dir = self.megamoe_logits(model)
                from_file = self.megamoe_logits(model + ".gguf")
                np.testing.assert_array_equal(from_file, from_dir)
                llama = np.array(self.llama("logits", model + ".gguf", ",".join(map(str, PROMPT)))["logits"])
                self.assertEqual(llama.shape, from_file.shape)
                self.assertLess(np.abs(llama - from_file).max(), 1e-3)
                greedy = self.megamoe_greedy(model)
                self.assertEqual(len(greedy), CONTINUATION)
                self.assertEqual(self.megamoe_greedy(model + ".gguf"), greedy)
                self.assertEqual(self.llama("greedy", model + ".gguf", ",".join(map(str, PROMPT)), CONTINUATION)
                                 ["tokens"], greedy)

    def test_quantized_exports(self):
        # Only attn_k_b differs from the directory's bytes (llama.cpp keeps it transposed, so it is
        # requantized): the first position, which attends to itself alone, is bit for bit the same.
        # Random weights at this size route on margins of 1e-3, so a later position's requantized
        # scores may flip an expert and move some logits by ~1: the bounds are on the typical row.
        for dtype, own_bound in [("q8_0", 0.05), ("q4_0", 1.0)]:
            with self.subTest(dtype=dtype):
                model = self.models["v3-" + dtype]
                from_dir = self.megamoe_logits(model)
                from_file = self.megamoe_logits(model + ".gguf")
                np.testing.assert_array_equal(from_file[0], from_dir[0])
                self.assertLess(np.median(np.abs(from_file - from_dir).max(axis=1)), own_bound)
                # llama.cpp rounds activations to q8_0 blocks against these weights, as megamoe's fast numerics do.
                fast = harness.megamoe_logits(model + ".gguf", PROMPT, self.path("fast.npy"))
                llama = np.array(self.llama("logits", model + ".gguf", ",".join(map(str, PROMPT)))["logits"])
                self.assertLess(np.median(np.abs(llama - fast).max(axis=1)), 0.3)
                p = log_softmax(fast.astype(np.float64))
                kl = (np.exp(p) * (p - log_softmax(llama))).sum(axis=1)
                self.assertLess(np.median(kl), 0.005)

    def test_deepseek4_file_runs_in_llama_cpp(self):
        # llama.cpp takes compression ratios 0, 4 and 128 only.
        config = harness.load_json(harness.config_path("v4-csa-hca"))
        config["compress_ratios"] = [0, 4, 128, 4, 0]
        with open(self.path("v4.json"), "w") as f:
            json.dump(config, f)
        model, gguf = self.path("v4"), self.path("v4.gguf")
        harness.synth_with_tokenizer(self.path("v4.json"), "fp8", 3, model, self.tokenizer)
        metadata, _ = read_gguf(self.models["v3"] + ".gguf")
        test_gguf_v4.convert(model, gguf, [m for m in metadata if m[0].startswith("tokenizer.")])
        tokens = PROMPT + [282, 318, 282, 376, 425, 381]
        ours = harness.megamoe_logits(gguf, tokens, self.path("v4.npy"), "--numerics", "exact").astype(np.float64)
        llama = np.array(self.llama("logits", gguf, ",".join(map(str, tokens)))["logits"])
        p = log_softmax(ours)
        kl = (np.exp(p) * (p - log_softmax(llama))).sum(axis=1)
        self.assertLess(np.median(kl), 0.005)
        self.assertGreaterEqual(np.mean(ours.argmax(axis=1) == llama.argmax(axis=1)), 0.75)

    def test_embedded_tokenizer(self):
        text = "Free software is a matter of liberty, not price: you may copy, share and change it."
        expected = subprocess.run([harness.megamoe_binary(), "tokenize", "--tokenizer", self.tokenizer], input=text,
                                  capture_output=True, text=True, check=True).stdout.split()
        from_file = subprocess.run([harness.megamoe_binary(), "tokenize", "--tokenizer", self.models["v3"] + ".gguf"],
                                   input=text, capture_output=True, text=True, check=True).stdout.split()
        self.assertEqual(from_file, expected)
        self.assertEqual([str(t) for t in self.llama("tokenize", self.models["v3"] + ".gguf", text)["tokens"]],
                         expected)


if __name__ == "__main__":
    unittest.main()
