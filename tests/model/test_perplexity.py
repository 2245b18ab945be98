"""`megamoe perplexity` (docs/quantization.md#fidelity-megamoe-perplexity): the perplexity of a text against one
computed here from `megamoe logits` of the same windows (Hugging Face's sliding window, written
from its definition), the log-prob file against those logits, KL divergence and top-1 agreement
against NumPy over two such files, V3 and V4 models, quantized weights in both numerics modes,
`mpirun` and `--memory-budget` runs equal to the plain one, and bad input named in one line with no
file left behind.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_perplexity
"""
import json
import os
import shutil
import subprocess
import sys
import unittest

import numpy as np

import harness

sys.path.insert(0, os.path.join(harness.TESTS_DIR, "dist"))
from dist_harness import mpirun_command, run as run_mpi  # noqa: E402

TEXT = "/usr/share/common-licenses/GPL-3"
TEXT_BYTES = 2500  # ~1000 tokens
OTHER_TEXT = "/usr/share/common-licenses/Apache-2.0"
CONTEXT, STRIDE = 48, 20
VOCAB = 640  # the models' vocabulary: room for the 600 tokens of the tokenizer


def read_logprob_file(path):
    """(header, log-probs [positions, vocab], targets [positions]), as the format is documented."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"MMLOGP01", data[:8]
    length = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16:16 + length])
    positions, vocab = header["positions"], header["vocab_size"]
    rows = np.frombuffer(data, np.float32, positions * vocab, 16 + length).reshape(positions, vocab)
    targets = np.frombuffer(data, np.int32, positions, 16 + length + rows.nbytes)
    return header, rows, targets


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class Perplexity(harness.ScratchTestCase):
    @classmethod
    def setUpClass(cls):
        cls.make_scratch("megamoe-perplexity-")
        tokenizer = harness.train_tokenizer(cls.path("tokenizer"), TEXT, 600)
        with open(TEXT, encoding="utf-8") as f:
            text = f.read()[:TEXT_BYTES]
        cls.text = cls.path("text.txt")
        with open(cls.text, "w", encoding="utf-8") as f:
            f.write(text)
        cls.models = {}
        for family, config_name, dtype in (("v3", "v3-noaux-yarn", "bf16"), ("v4", "v4-window-hash", "fp8")):
            config = harness.load_json(os.path.join(harness.CONFIG_DIR, config_name + ".json"))
            config["vocab_size"] = VOCAB
            config_path = cls.path(f"{family}.json")
            with open(config_path, "w") as f:
                json.dump(config, f)
            model = cls.models[family] = cls.path(family)
            harness.synth(config_path, dtype, 3, model)
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(os.path.join(tokenizer, name), model)
        cls.models["v3-q4_0"] = cls.path("v3-q4_0")
        harness.run_megamoe("quantize", "--model", cls.models["v3"], "--dtype", "q4_0", "--output", cls.models["v3-q4_0"])
        ids = subprocess.run([harness.megamoe_binary(), "tokenize", "--tokenizer", cls.models["v3"]], input=text,
                             capture_output=True, text=True, check=True).stdout.split()
        cls.tokens = [int(t) for t in ids]
        # The BOS every window starts with: the tokenizer's bos_token (the configs name none).
        bos = harness.load_json(os.path.join(tokenizer, "tokenizer_config.json"))["bos_token"]["content"]
        cls.bos = next(t["id"] for t in harness.load_json(os.path.join(tokenizer, "tokenizer.json"))["added_tokens"]
                       if t["content"] == bos)

    def perplexity(self, model, *args, mpi_ranks=None):
        command = ["perplexity", "--model", model, "--text", self.text, "--context", CONTEXT, "--stride", STRIDE,
                   "--json", *args]
        if mpi_ranks:
            return json.loads(run_mpi(mpirun_command(mpi_ranks, *command))[1])
        return json.loads(harness.run_megamoe(*command))

    def expected_windows(self):
        """Hugging Face's sliding window: windows of CONTEXT - 1 text tokens after a BOS, moving by
        STRIDE; each scores the targets no earlier window scored."""
        length, windows, scored_until, begin = CONTEXT - 1, [], 0, 0
        while True:
            end = min(len(self.tokens), begin + length)
            windows.append((begin, end, scored_until))
            scored_until = end
            if end == len(self.tokens):
                return windows
            begin += STRIDE

    def logprobs_from_logits(self, model, numerics):
        """[scored positions, vocab] log-probs and their targets from `megamoe logits` of each window."""
        rows, targets = [], []
        for begin, end, first in self.expected_windows():
            window = [self.bos] + self.tokens[begin:end]
            logits = harness.megamoe_logits(model, window, self.path("window.npy"), "--numerics", numerics)
            for j in range(first, end):  # text token j sits at position j - begin + 1
                rows.append(log_softmax(logits[j - begin]))
                targets.append(self.tokens[j])
        return np.array(rows), np.array(targets)

    def test_perplexity_equals_the_logits_of_every_window(self):
        for family in ("v3", "v4"):
            with self.subTest(family=family):
                model = self.models[family]
                result = self.perplexity(model, "--numerics", "exact", "--kld-base", self.path("base.bin"))
                rows, targets = self.logprobs_from_logits(model, "exact")
                nll = -rows[np.arange(len(targets)), targets]
                self.assertEqual(result["scored_tokens"], len(self.tokens))
                self.assertEqual(result["windows"], len(self.expected_windows()))
                self.assertAlmostEqual(result["perplexity"] / np.exp(nll.mean()), 1, delta=1e-5)
                header, stored, stored_targets = read_logprob_file(self.path("base.bin"))
                self.assertEqual((header["positions"], header["vocab_size"]), rows.shape)
                np.testing.assert_array_equal(stored_targets, targets)
                np.testing.assert_allclose(stored, rows, atol=2e-5)

    def test_kld_against_numpy(self):
        """q4_0 in fast mode against BF16 exact: the statistics of the two stored runs."""
        base, run = self.path("bf16.bin"), self.path("q4_0.bin")
        self.perplexity(self.models["v3"], "--numerics", "exact", "--kld-base", base)
        self.perplexity(self.models["v3-q4_0"], "--kld-base", run)
        result = self.perplexity(self.models["v3-q4_0"], "--kld", base)["kld"]
        _, p, targets = read_logprob_file(base)
        _, q, _ = read_logprob_file(run)
        p, q = p.astype(np.float64), q.astype(np.float64)
        kld = (np.exp(p) * (p - q)).sum(axis=1)
        self.assertGreater(kld.mean(), 1e-4, "q4_0 weights should move the distributions")
        self.assertAlmostEqual(result["mean"] / kld.mean(), 1, delta=1e-5)
        self.assertAlmostEqual(result["max"] / kld.max(), 1, delta=1e-5)
        self.assertAlmostEqual(result["median"] / np.sort(kld)[(len(kld) + 1) // 2 - 1], 1, delta=1e-5)
        self.assertAlmostEqual(result["p99"] / np.sort(kld)[int(np.ceil(0.99 * len(kld))) - 1], 1, delta=1e-5)
        self.assertAlmostEqual(result["top1_agreement"], float((p.argmax(1) == q.argmax(1)).mean()))
        self.assertAlmostEqual(result["base_perplexity"] / np.exp(-p[np.arange(len(targets)), targets].mean()), 1,
                               delta=1e-6)

    def test_a_run_against_itself_diverges_nowhere(self):
        base = self.path("self.bin")
        first = self.perplexity(self.models["v4"], "--kld-base", base)
        again = self.perplexity(self.models["v4"], "--kld", base)
        self.assertEqual(again["perplexity"], first["perplexity"])
        self.assertEqual(again["kld"]["base_perplexity"], first["perplexity"])
        self.assertEqual((again["kld"]["mean"], again["kld"]["max"], again["kld"]["top1_agreement"]), (0, 0, 1))

    def test_fast_numerics_against_exact(self):
        """Only the int8-multiplied weights differ between the modes: BF16 not at all, q4_0 a little."""
        for model, differs in ((self.models["v3"], False), (self.models["v3-q4_0"], True)):
            with self.subTest(model=os.path.basename(model)):
                base = self.path("exact.bin")
                exact = self.perplexity(model, "--numerics", "exact", "--kld-base", base)
                fast = self.perplexity(model, "--kld", base)
                self.assertEqual(fast["kld"]["mean"] > 0, differs)
                self.assertLess(fast["kld"]["mean"], 0.05)
                self.assertAlmostEqual(fast["perplexity"] / exact["perplexity"], 1, delta=0.05)

    def test_mpirun_and_memory_budget_equal_one_process(self):
        model = self.models["v4"]
        plain = self.perplexity(model)
        spread = self.perplexity(model, mpi_ranks=2)
        streamed = self.perplexity(model, "--memory-budget", "64MiB")
        for other in (spread, streamed):
            self.assertAlmostEqual(other["perplexity"] / plain["perplexity"], 1, delta=1e-5)
            self.assertEqual(other["scored_tokens"], plain["scored_tokens"])

    # ---- bad input: one line naming what is wrong, exit 1, no log-prob file left behind ----

    def expect_failure(self, args, *fragments, output=None):
        result = subprocess.run([harness.megamoe_binary(), "perplexity", *map(str, args)], capture_output=True,
                                text=True, timeout=120)
        self.assertEqual(result.returncode, 1, result.stderr)
        message = result.stderr.strip()
        self.assertEqual(len(message.splitlines()), 1, message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        if output:
            self.assertFalse(os.path.exists(output), output)

    def base_args(self, model="v3", text=None):
        return ["--model", self.models[model], "--text", text or self.text, "--context", CONTEXT, "--stride", STRIDE]

    def test_unknown_numerics(self):
        self.expect_failure([*self.base_args(), "--numerics", "precise"], "--numerics", "precise", "exact or fast")

    def test_kld_from_another_text_vocabulary_or_window(self):
        base = self.path("kld-base.bin")
        self.perplexity(self.models["v3"], "--kld-base", base)
        other_text = self.path("other.txt")
        with open(OTHER_TEXT, encoding="utf-8") as f, open(other_text, "w", encoding="utf-8") as out:
            out.write(f.read()[:TEXT_BYTES])
        self.expect_failure([*self.base_args(text=other_text), "--kld", base], base, "another text")
        self.expect_failure([*self.base_args()[:-2], "--stride", STRIDE + 1, "--kld", base], base, "--stride 20",
                            "--stride 21")
        wider = self.path("v3-wider")
        if not os.path.exists(wider):
            config = harness.load_json(os.path.join(self.models["v3"], "config.json"))
            config["vocab_size"] = VOCAB + 64
            config_path = self.path("wider.json")
            with open(config_path, "w") as f:
                json.dump(config, f)
            harness.synth(config_path, "bf16", 3, wider)
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(os.path.join(self.models["v3"], name), wider)
        self.expect_failure(["--model", wider, "--text", self.text, "--context", CONTEXT, "--stride", STRIDE,
                             "--kld", base], base, f"vocabulary of {VOCAB}", f"has {VOCAB + 64}")

    def test_broken_log_prob_files(self):
        base = self.path("broken-base.bin")
        self.perplexity(self.models["v3"], "--kld-base", base)
        with open(base, "rb") as f:
            data = f.read()
        cut = self.path("cut.bin")
        with open(cut, "wb") as f:
            f.write(data[:-100])
        self.expect_failure([*self.base_args(), "--kld", cut], cut, "bytes")
        self.expect_failure([*self.base_args(), "--kld", self.text], self.text, "not a log-prob file")
        self.expect_failure([*self.base_args(), "--kld", self.path("missing.bin")], "missing.bin")

    def test_nothing_written_on_error(self):
        out = self.path("never.bin")
        self.expect_failure([*self.base_args(text=self.path("no-such.txt")), "--kld-base", out], "no-such.txt",
                            output=out)
        self.expect_failure(["--model", self.models["v3"], "--text", self.text, "--context", 1 << 20,
                             "--kld-base", out], "--context", output=out)
        self.expect_failure([*self.base_args()[:-2], "--stride", CONTEXT, "--kld-base", out], "--stride", output=out)


if __name__ == "__main__":
    unittest.main()
