"""megamoe against the DeepSeek-V4.1 PyTorch reference on the tiny V4.1 configs in tests/configs
(together: window-only, Full ratio 2 and ratio 1 layers, the candidate source, Reindex layers before
and after it, Reuse layers after both ratios, Engram layers (one of them Full), 2 and 4
hyper-connection streams, 1-4 output groups, an active SwiGLU clamp, YaRN, a DSpark stage and vision
tensors that text generation ignores), in the official layout (FP8 with 32x32 ue8m0 scales, FP4
experts, FP8 Engram rows); incremental decoding against prefill; the layout synth writes; the
released configuration's figures; bad checkpoints named.

The comparison runs megamoe with --numerics exact. The model's own round trips (Q8 on every FP8
product's input, FP4 index keys and compressed entries) are discrete: where the reference finds a
rounding or top-k decision within 1e-6 of its boundary, an fp32 engine may decide it the other way,
and on these tiny models that moves every later position by up to a few percent. So each prompt
must agree within 1e-4 of the largest logit at every position before the first one such a decision
can affect (deepseek_v41.logits_and_first_tie), and those positions must be most of all positions.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_v41_logits
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import numpy as np

import harness  # first: puts tests/reference on the path
import deepseek_v41
import safetensors_np

CONFIGS = ("v41-roles-engram", "v41-hc2-groups1", "v41-mtp-r1")
TOKENS = 40
INCREMENTAL_TOKENS = 70  # past the window, many groups of both ratios, top-k and candidate blocks in play
PROMPT_SEEDS = range(16)
# Of a model's prompt positions, those before the prompt's first near tie (measured at NEAR_TIE 1e-6:
# 18-41% of 16 x 40); and the longest such prefix, so that window eviction, entries beyond index_topk
# and several candidate blocks are among the positions compared.
MIN_CHECKED_SHARE = 0.15
MIN_LONGEST_PREFIX = 16  # twice the configs' window; past index_topk and 2 candidate blocks of both ratios


class V41Models(unittest.TestCase):
    """One official-layout checkpoint per tiny config, with the reference's byte-level tokenizer."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-v41-")
        cls.tokenizer = deepseek_v41.byte_level_tokenizer()
        cls.token_count = max(t["id"] for t in cls.tokenizer["added_tokens"]) + 1 + len(cls.tokenizer["model"]["vocab"])
        cls.models = {}
        for i, name in enumerate(CONFIGS):
            cls.models[name] = cls.synth(name, 10 * i + 1)

    @classmethod
    def synth(cls, name, seed, dtype="fp8"):
        model = os.path.join(cls.tmp.name, f"{name}-{dtype}-{seed}")
        harness.synth(harness.config_path(name), dtype, seed, model)
        with open(os.path.join(model, "tokenizer.json"), "w") as f:
            json.dump(cls.tokenizer, f)
        return model

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def tokens(self, count, seed):
        return harness.random_tokens(min(self.token_count, 300), count, seed)

    def logits(self, model, tokens, chunk=None, numerics="exact"):
        out = os.path.join(self.tmp.name, "logits.npy")
        return harness.megamoe_logits(model, tokens, out, "--numerics", numerics,
                                      *(["--chunk-size", chunk] if chunk else []))


class V41Logits(V41Models):
    def test_logits_match_reference_before_any_near_tie(self):
        for name, model in self.models.items():
            with self.subTest(config=name):
                checked, total, worst, longest = 0, 0, 0.0, 0
                for seed in PROMPT_SEEDS:
                    tokens = self.tokens(TOKENS, seed)
                    expected, first_tie = deepseek_v41.logits_and_first_tie(model, tokens)
                    prefix = TOKENS if first_tie is None else first_tie
                    actual = self.logits(model, tokens)
                    if prefix:
                        error = harness.relative_max_error(actual[:prefix], expected[:prefix])
                        worst = max(worst, error)
                        self.assertLessEqual(error, harness.EXACT_TOLERANCE,
                                             f"{name} prompt {seed}: positions before {prefix}")
                    checked += prefix
                    total += TOKENS
                    longest = max(longest, prefix)
                print(f"{name}: max|a-b| / max|ref| = {worst:.2e} over the {checked} of {total} positions before "
                      f"any near tie, longest prefix {longest} (tolerance {harness.EXACT_TOLERANCE:.0e})")
                self.assertGreaterEqual(checked, MIN_CHECKED_SHARE * total, f"{name}: too few positions checked")
                self.assertGreaterEqual(longest, MIN_LONGEST_PREFIX, f"{name}: no long prefix checked")

    def test_incremental_decoding_equals_prefill(self):
        for name, model in self.models.items():
            for numerics in ("exact", "fast"):
                with self.subTest(config=name, numerics=numerics):
                    tokens = self.tokens(INCREMENTAL_TOKENS, 2)
                    prefill = self.logits(model, tokens, numerics=numerics)
                    for chunk in (1, 5):
                        np.testing.assert_array_equal(self.logits(model, tokens, chunk, numerics), prefill,
                                                      f"{name} {numerics} chunks of {chunk}")

    def test_published_index_keys_switch(self):
        """megamoe_published_index_keys reproduces DeepSeek's published decode (index layers of ratio 2
        score stale keys in steps where they emit nothing), in a prefill as well as token by token."""
        model = os.path.join(self.tmp.name, "published")
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(self.models["v41-hc2-groups1"], model)
        config = harness.load_json(os.path.join(model, "config.json"))
        config["text_config"]["megamoe_published_index_keys"] = True
        with open(os.path.join(model, "config.json"), "w") as f:
            json.dump(config, f)
        tokens = self.tokens(30, 1)  # its first near tie is at 20; the keys go stale from position 9 on
        deepseek_v41._reset_near_ties()
        decoder = deepseek_v41.Decoder(model, published_index_keys=True)
        expected = np.stack([decoder.step(token) for token in tokens])
        first_tie = deepseek_v41.first_tie_position()
        prefix = len(tokens) if first_tie is None else first_tie
        actual = self.logits(model, tokens)
        self.assertGreaterEqual(prefix, 16, "too few positions before the first near tie")
        self.assertLessEqual(harness.relative_max_error(actual[:prefix], expected[:prefix]), harness.EXACT_TOLERANCE)
        np.testing.assert_array_equal(self.logits(model, tokens, chunk=1), actual)
        default = self.logits(self.models["v41-hc2-groups1"], tokens)
        self.assertFalse(np.array_equal(default[:prefix], actual[:prefix]), "the switch changed nothing")

    def test_streaming_experts_changes_nothing(self):
        model, tokens = self.models["v41-roles-engram"], self.tokens(20, 4)
        out = os.path.join(self.tmp.name, "streamed.npy")
        streamed = harness.megamoe_logits(model, tokens, out, "--numerics", "exact", "--memory-budget", "40MiB")
        np.testing.assert_array_equal(streamed, self.logits(model, tokens))


class V41PrefillShortcut(V41Models):
    """A prompt whose last logits alone are wanted skips, in the layers after the last kv source, the
    positions no later position sees through their windows (docs/deepseek-v41.md#v41-prefill): the same
    last logits as the full computation, bit for bit, and the same decode after it."""

    def last_logits(self, model, tokens, *extra):
        out = os.path.join(self.tmp.name, "last.npy")
        return harness.megamoe_logits(model, tokens, out, "--numerics", "exact", "--last", *extra)

    def test_last_logits_equal_the_full_computation(self):
        for name, model in self.models.items():
            tokens = self.tokens(INCREMENTAL_TOKENS, 5)
            full = self.logits(model, tokens)
            for chunk in (None, 50, 23):
                with self.subTest(config=name, chunk=chunk):
                    extra = ["--chunk-size", chunk] if chunk else []
                    np.testing.assert_array_equal(self.last_logits(model, tokens, *extra)[0], full[-1])

    def test_decoding_after_the_shortcut_equals_decoding_after_the_full_prompt(self):
        for name, model in self.models.items():
            with self.subTest(config=name):
                prompt = self.tokens(INCREMENTAL_TOKENS, 6)
                out = harness.run_megamoe("generate", "--model", model, "--prompt-ids", ",".join(map(str, prompt)),
                                          "--max-tokens", 6, "--ignore-eos", "--print-ids", "--numerics", "exact")
                generated = [int(t) for t in out.replace(",", " ").split()]
                self.assertEqual(len(generated), 6, out)
                full = self.logits(model, prompt + generated)
                # generate picks only ids the tokenizer can print (the model's vocabulary is larger)
                chosen = np.argmax(full[len(prompt) - 1:-1, :self.token_count], axis=1)
                self.assertEqual(list(chosen), generated)


class V41Layout(V41Models):
    def test_synth_writes_the_official_layout(self):
        """Names, shapes and dtypes of every tensor equal the reference's list (written from the spec)."""
        for name, model in self.models.items():
            with self.subTest(config=name):
                config = harness.load_json(os.path.join(model, "config.json"))
                self.assertEqual(config["quantization_config"]["weight_block_size"], [32, 32])
                written = {}
                for path in sorted(os.listdir(model)):
                    if path.endswith(".safetensors"):
                        header, _, _ = safetensors_np.read_header(os.path.join(model, path))
                        written.update({k: (v["dtype"], v["shape"]) for k, v in header.items()})
                expected = {n: (str(dtype), list(shape))
                            for n, shape, dtype in deepseek_v41.tensor_specs(config, include_mtp=True)}
                self.assertEqual(sorted(written), sorted(expected))
                for tensor, (dtype, shape) in written.items():
                    self.assertEqual(list(shape), expected[tensor][1], tensor)
                    self.assertIn(dtype, expected[tensor][0], tensor)

    def test_quantize_keeps_the_engram_tables_and_fp8_changes_nothing(self):
        model, tokens = self.models["v41-roles-engram"], self.tokens(24, 8)
        base = self.logits(model, tokens)
        for dtype in ("fp8", "q8_0", "q4_0"):
            with self.subTest(dtype=dtype):
                out = os.path.join(self.tmp.name, f"quantized-{dtype}")
                shutil.rmtree(out, ignore_errors=True)
                harness.run_megamoe("quantize", "--model", model, "--dtype", dtype, "--output", out)
                header, _, _ = safetensors_np.read_header(os.path.join(out, "model.safetensors"))
                self.assertEqual(header["layers.0.engram.embed.weight"]["dtype"], "F8_E4M3")
                self.assertEqual(header["layers.0.engram.embed.scale"]["shape"], [4062, 1])
                logits = self.logits(out, tokens)
                if dtype == "fp8":  # the official layout again: the same bytes
                    np.testing.assert_array_equal(logits, base)
                else:
                    self.assertTrue(np.all(np.isfinite(logits)))

    def test_released_configuration(self):
        released = os.path.join(os.path.dirname(harness.TESTS_DIR), "configs", "deepseek-v41-flash.json")
        summary = json.loads(harness.run_megamoe("inspect", released, "--json", "--context", 65536))
        self.assertEqual(summary["architecture"], "DeepseekV41ForCausalLM")
        self.assertAlmostEqual(summary["total_parameters"] - summary["engram_parameters"], 552e9, delta=1e9)
        self.assertAlmostEqual(summary["engram_parameters"], 196.6e9, delta=0.1e9)
        self.assertAlmostEqual(summary["active_parameters"], 16.8e9, delta=0.1e9)
        per_token = (summary["kv_cache_bytes"] - summary["kv_cache_ring_bytes"]) / 65536
        self.assertAlmostEqual(per_token, 890, delta=0.5)
        self.assertEqual(summary["layer_roles"][20], "Full (ratio 1), candidate source")
        self.assertEqual(summary["layer_roles"][14], "Full (ratio 2), Engram")
        # The decoder layers (21-39) run a 65536-token prompt only within their windows' reach.
        self.assertAlmostEqual(summary["prefill_active_parameters"], 9.08e9, delta=0.01e9)


class V41EngramTablesOnDisk(unittest.TestCase):
    """With --memory-budget the Engram tables are read by rows through a small cache counted in the
    budget: a model whose tables are four times the budget runs within it, with the same logits."""
    BUDGET = 40 << 20

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-v41-engram-")
        config = harness.load_json(harness.config_path("v41-roles-engram"))
        t = config["text_config"]
        t["engram_head_dim"], t["engram_vocab_size"] = 256, 80000  # rows of 264 bytes, ~640,000 of them
        primes = deepseek_v41.primes_per_layer(len(t["engram_layer_ids"]), t["engram_max_ngram_size"],
                                               t["engram_n_heads"], t["engram_vocab_size"])
        t["engram_num_embeddings"] = [sum(p) for p in primes]
        config_path = os.path.join(cls.tmp.name, "config.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        cls.model = os.path.join(cls.tmp.name, "model")
        harness.synth(config_path, "fp8", 5, cls.model)
        with open(os.path.join(cls.model, "tokenizer.json"), "w") as f:
            json.dump(deepseek_v41.byte_level_tokenizer(), f)
        cls.rows_per_token = len(t["engram_layer_ids"]) * (t["engram_max_ngram_size"] - 1) * t["engram_n_heads"]
        cls.tokens = harness.random_tokens(300, 48, 9)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_timed(self, *args):
        result = subprocess.run(["/usr/bin/time", "-v", harness.megamoe_binary(), *map(str, args)],
                                capture_output=True, text=True, timeout=300)
        self.assertEqual(result.returncode, 0, result.stderr)
        return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)) * 1024

    def test_tables_several_times_the_budget_run_within_it(self):
        tables = os.path.getsize(os.path.join(self.model, "model.safetensors"))
        self.assertGreater(tables, 4 * self.BUDGET)
        whole, budgeted = (os.path.join(self.tmp.name, n) for n in ("whole.npy", "budget.npy"))
        tokens = ",".join(map(str, self.tokens))
        self.run_timed("logits", "--model", self.model, "--tokens", tokens, "--output", whole, "--mmap")
        peak = self.run_timed("logits", "--model", self.model, "--tokens", tokens, "--output", budgeted,
                              "--memory-budget", f"{self.BUDGET >> 20}MiB")
        self.assertLessEqual(peak, self.BUDGET)
        np.testing.assert_array_equal(np.load(budgeted), np.load(whole))
        peak = self.run_timed("generate", "--model", self.model, "--prompt-ids", tokens, "--max-tokens", 16,
                              "--memory-budget", f"{self.BUDGET >> 20}MiB")
        self.assertLessEqual(peak, self.BUDGET)

    def test_perplexity_within_the_budget_equals_the_mapped_model(self):
        text = os.path.join(self.tmp.name, "text.txt")
        with open(text, "w") as f:
            f.write("the quick brown fox jumps over the lazy dog, again and again, " * 4)
        results = [json.loads(harness.run_megamoe("perplexity", "--model", self.model, "--text", text, "--json",
                                                  *extra))
                   for extra in ([], ["--memory-budget", f"{self.BUDGET >> 20}MiB"])]
        self.assertEqual(results[0]["perplexity"], results[1]["perplexity"])
        self.assertGreater(results[0]["scored_tokens"], 100)

    def test_bench_reports_engram_bytes_per_token(self):
        report = json.loads(harness.run_megamoe("bench", "--model", self.model, "--prompt-tokens", 16,
                                                "--gen-tokens", 8, "--runs", 1, "--json",
                                                "--memory-budget", f"{self.BUDGET >> 20}MiB"))
        self.assertEqual(report["engram_bytes_per_token"], self.rows_per_token * (256 + 256 // 32))
        cache = report["engram_cache"]
        self.assertEqual(cache["row_bytes"], 256 + 256 // 32)
        self.assertGreater(cache["slots"], 1000)
        self.assertGreater(cache["decode_bytes_read_per_token"], 0)  # read from the files, not the mapping
        self.assertLessEqual(cache["decode_bytes_read_per_token"], self.rows_per_token * 264)
        mapped = json.loads(harness.run_megamoe("bench", "--model", self.model, "--prompt-tokens", 16,
                                                "--gen-tokens", 8, "--runs", 1, "--json"))
        self.assertEqual(mapped["engram_bytes_per_token"], report["engram_bytes_per_token"])
        self.assertNotIn("engram_cache", mapped)


class V41BadCheckpoints(V41Models):
    def copy(self, name):
        target = os.path.join(self.tmp.name, f"bad-{name}")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.models[name], target)
        return target

    def error(self, model):
        with self.assertRaises(AssertionError) as failure:
            harness.run_megamoe("logits", "--model", model, "--tokens", "1,2", "--output",
                                os.path.join(self.tmp.name, "x.npy"))
        return str(failure.exception)

    def test_missing_tokenizer_is_named(self):
        model = self.copy("v41-roles-engram")
        os.remove(os.path.join(model, "tokenizer.json"))
        self.assertIn("tokenizer.json: missing; DeepSeek-V4.1's Engram layers take their token map from it",
                      self.error(model))

    def test_missing_engram_table_is_named(self):
        model = self.copy("v41-roles-engram")
        path = os.path.join(model, "model.safetensors")
        header, data = harness.read_raw(path)
        header["layers.1.engram.embed.weightless"] = header.pop("layers.1.engram.embed.weight")
        harness.write_raw(path, header, data)
        self.assertIn("layers.1.engram.embed.weight", self.error(model))

    def test_a_kv_source_that_does_not_compress_is_named(self):
        model = self.copy("v41-mtp-r1")
        config = harness.load_json(os.path.join(model, "config.json"))
        ratios = config["text_config"]["compress_ratios"]
        window_layer = ratios.index(0)
        config["text_config"]["kv_source_layer_ids"] = sorted(
            set(config["text_config"]["kv_source_layer_ids"]) | {window_layer})
        with open(os.path.join(model, "config.json"), "w") as f:
            json.dump(config, f)
        self.assertIn(f"invalid 'kv_source_layer_ids': layer {window_layer} is not a compressed layer",
                      self.error(model))


if __name__ == "__main__":
    unittest.main()
