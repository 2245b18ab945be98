"""--memory-budget (docs/streaming.md): routed experts stream from disk through a cache, the peak
resident set stays within the budget on a model several times larger, the logits are exactly those
of the whole model in memory, and bad or too small budgets fail with one clear line. Without a budget
the weights are read into huge-page memory, or mapped with --mmap: the same logits either way.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_streaming
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import numpy as np

import harness

MIB = 1 << 20
# ~200 MB of bf16 experts (4 MoE layers x 512 experts of 98 KiB) around ~2 MB of dense weights.
CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 2048, "hidden_size": 128, "intermediate_size": 384, "moe_intermediate_size": 128,
    "num_hidden_layers": 5, "first_k_dense_replace": 1, "moe_layer_freq": 1, "num_attention_heads": 4,
    "q_lora_rank": 96, "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
    "n_routed_experts": 512, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
    "rms_norm_eps": 1e-6, "rope_theta": 10000, "max_position_embeddings": 64, "tie_word_embeddings": False,
}
BUDGET = 40 * MIB
TOKENS = harness.random_tokens(CONFIG["vocab_size"], 16, seed=3)


def run(*args, timed=False):
    command = [harness.megamoe_binary(), *map(str, args)]
    if timed:
        command = ["/usr/bin/time", "-v", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def peak_rss_bytes(stderr):
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1)) * 1024


class Streaming(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="megamoe-streaming-")
        config_path = os.path.join(cls.tmp, "config.json")
        with open(config_path, "w") as f:
            json.dump(CONFIG, f)
        cls.model = os.path.join(cls.tmp, "model")
        harness.synth(config_path, "bf16", 7, cls.model)
        cls.model_bytes = sum(os.path.getsize(os.path.join(cls.model, n)) for n in os.listdir(cls.model))
        cls.in_memory = harness.megamoe_logits(cls.model, TOKENS, os.path.join(cls.tmp, "whole.npy"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def logits(self, name, *extra, timed=False):
        out = os.path.join(self.tmp, name + ".npy")
        result = run("logits", "--model", self.model, "--tokens", ",".join(map(str, TOKENS)), "--output", out,
                     *extra, timed=timed)
        self.assertEqual(result.returncode, 0, result.stderr)
        return np.load(out), result.stderr

    def minimum_budget(self):
        result = run("logits", "--model", self.model, "--tokens", "1", "--output", os.path.join(self.tmp, "x.npy"),
                     "--memory-budget", "1MiB")
        self.assertEqual(result.returncode, 1)
        match = re.search(r"need at least --memory-budget (\d+)MiB", result.stderr)
        self.assertIsNotNone(match, result.stderr)
        return int(match.group(1)) * MIB

    def test_peak_rss_within_budget(self):
        self.assertGreater(self.model_bytes, 4 * BUDGET)
        _, stderr = self.logits("whole-timed", timed=True)
        self.assertGreater(peak_rss_bytes(stderr), BUDGET, "the test needs a model that exceeds the budget")
        streamed, stderr = self.logits("budget", "--memory-budget", f"{BUDGET // MIB}MiB", timed=True)
        self.assertLessEqual(peak_rss_bytes(stderr), BUDGET)
        np.testing.assert_array_equal(streamed, self.in_memory)

    def test_identical_logits_with_eviction(self):
        # The smallest budget: fewer slots than one prompt's experts per layer, so layers run in
        # chunks and every decode step evicts; one token at a time, with and without prefetch, LRU and LFU.
        budget = self.minimum_budget()
        for extra in ([], ["--no-prefetch"], ["--eviction", "lfu"]):
            streamed, _ = self.logits("tight", "--memory-budget", str(budget), "--chunk-size", "1", *extra)
            np.testing.assert_array_equal(streamed, self.in_memory)

    def test_expert_pools_share_entries(self):
        # The layers of a pool read one set of experts: the cache keys them by stored tensor.
        model = os.path.join(self.tmp, "pools")
        harness.synth(os.path.join(harness.CONFIG_DIR, "v3-pool-shared.json"), "bf16", 5, model)
        tokens = ",".join(str(t % 300) for t in TOKENS[:6])  # the config's vocabulary is 300
        outputs = []
        for extra in ([], ["--memory-budget", "64MiB"]):
            out = os.path.join(self.tmp, f"pools{len(outputs)}.npy")
            harness.run_megamoe("logits", "--model", model, "--tokens", tokens, "--output", out, *extra)
            outputs.append(np.load(out))
        np.testing.assert_array_equal(outputs[1], outputs[0])

    def test_budget_too_small(self):
        result = run("logits", "--model", self.model, "--tokens", "1", "--output", os.path.join(self.tmp, "no.npy"),
                     "--memory-budget", "16MiB")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("too small", result.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "no.npy")))

    def test_bad_sizes(self):
        for size in ["abc", "-5MiB", "1XB", "12 MiB", "0", "1e40GiB"]:
            result = run("logits", "--model", self.model, "--tokens", "1", "--output",
                         os.path.join(self.tmp, "bad.npy"), "--memory-budget", size)
            self.assertEqual(result.returncode, 1, size)
            self.assertIn("is not a memory size", result.stderr, size)

    def test_huge_pages_or_mapped_give_the_same_logits(self):
        mapped, _ = self.logits("mmap", "--mmap")
        np.testing.assert_array_equal(mapped, self.in_memory)
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            huge_pages = "[never]" not in f.read()
        for extra, residency in (([], "huge_pages" if huge_pages else "mapped"), (["--mmap"], "mapped"),
                                 (["--memory-budget", f"{BUDGET // MIB}MiB"], "mapped")):
            result = run("bench", "--model", self.model, "--prompt-tokens", "4", "--gen-tokens", "2", "--runs", "1",
                         "--json", *extra)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(json.loads(result.stdout)["weight_residency"], residency, extra)

    def test_bench_reports_the_cache(self):
        result = run("bench", "--model", self.model, "--prompt-tokens", "8", "--gen-tokens", "4", "--runs", "1",
                     "--threads", "2", "--memory-budget", f"{BUDGET // MIB}MiB", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        cache = json.loads(result.stdout)["expert_cache"]
        self.assertGreaterEqual(cache["decode_hit_rate"], 0)
        self.assertLessEqual(cache["decode_hit_rate"], 1)
        self.assertGreater(cache["decode_bytes_read_per_token"], 0)
        self.assertTrue(cache["prefetch"])


class StreamingV4(unittest.TestCase):
    """DeepSeek-V4 streams its experts too, with the next layer's experts prefetched (a hash layer's
    table names them; the others' router on the current streams): the logits of the whole model."""

    def test_identical_logits_with_and_without_prefetch(self):
        tmp = tempfile.mkdtemp(prefix="megamoe-streaming-v4-")
        try:
            config = harness.load_json(harness.config_path("v4-window-hash"))
            config["n_routed_experts"] = 64
            config_path = os.path.join(tmp, "config.json")
            with open(config_path, "w") as f:
                json.dump(config, f)
            model = os.path.join(tmp, "model")
            harness.synth(config_path, "fp8", 5, model)
            tokens = harness.random_tokens(config["vocab_size"], 12, seed=4)
            whole = harness.megamoe_logits(model, tokens, os.path.join(tmp, "whole.npy"))
            small = run("logits", "--model", model, "--tokens", "1", "--output", os.path.join(tmp, "x.npy"),
                        "--memory-budget", "1MiB")
            budget = re.search(r"need at least --memory-budget (\d+)MiB", small.stderr).group(1) + "MiB"
            for extra in ([], ["--no-prefetch"]):
                streamed = harness.megamoe_logits(model, tokens, os.path.join(tmp, "streamed.npy"),
                                                  "--memory-budget", budget, "--chunk-size", "1", *extra)
                np.testing.assert_array_equal(streamed, whole, f"{extra}")
            result = run("bench", "--model", model, "--prompt-tokens", "1", "--gen-tokens", "8", "--runs", "1",
                         "--memory-budget", budget, "--json")
            self.assertEqual(result.returncode, 0, result.stderr)
            cache = json.loads(result.stdout)["expert_cache"]
            print(f"V4 streaming, {cache['slots']} slots: decode hit rate {cache['decode_hit_rate']:.2f}, "
                  f"{cache['decode_experts_prefetched']} experts prefetched, {cache['decode_prefetch_hits']} used")
            self.assertTrue(cache["prefetch"])
        finally:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    unittest.main()
