"""megamoe experiment balance|pools end to end on a tiny model: report.md with its table and valid
PNG plots, every run's checkpoint and metrics, finished runs reused, derived pool configs of equal
routed parameters, bad flags refused before any output, nothing half-written left behind.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_experiment
"""
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unittest

import harness

CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 384, "hidden_size": 32, "num_hidden_layers": 3, "first_k_dense_replace": 1,
    "intermediate_size": 64, "moe_intermediate_size": 8, "num_attention_heads": 2,
    "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
    "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
    "routed_scaling_factor": 2.5, "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "max_position_embeddings": 256, "tie_word_embeddings": False,
}
DATA = "/usr/share/common-licenses/GPL-3"
COMMON = ["--data", DATA, "--steps", "6", "--seq-len", "32", "--batch-size", "4", "--eval-every", "3",
          "--eval-batches", "2", "--threads", "1"]


def png_size(path):
    """(width, height) of a PNG, after checking its signature and first chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    assert head[12:16] == b"IHDR", f"{path}: no IHDR chunk"
    return struct.unpack(">II", head[16:24])


def experiment(*args):
    command = [harness.megamoe_binary(), "experiment", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


def leftovers(directory):
    return [p for p in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
            if re.search(r"\.(tmp|plot)\.\d+$", p)]


class Experiment(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="megamoe-experiment-")
        cls.config = os.path.join(cls.dir, "config.json")
        with open(cls.config, "w") as f:
            json.dump(CONFIG, f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_balance_report_and_reuse(self):
        out = os.path.join(self.dir, "balance")
        result = experiment("balance", "--model-config", self.config, "--strategies", "none,bias",
                            "--seeds", 1, "--output", out, *COMMON)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("run 1/2 none-s0", result.stderr)
        self.assertIn("run 2/2 bias-s0", result.stderr)
        with open(os.path.join(out, "report.md")) as f:
            report = f.read()
        rows = {line.split("|")[1].strip(): line for line in report.splitlines()
                if line.startswith("| none |") or line.startswith("| bias |")}
        self.assertEqual(set(rows), {"none", "bias"})
        for row in rows.values():
            cells = [c.strip() for c in row.strip("|").split("|")]
            if len(cells) == 7:  # the results table (the other names configs)
                self.assertRegex(cells[2], r"^\d+\.\d{4}$")  # validation loss of one seed: no spread
                self.assertRegex(cells[6], r"^\d+$")        # tokens/s
        self.assertIn("| variant | parameters (active) | validation loss | MaxVio_global |", report)
        self.assertIn("![", report)
        linked = re.findall(r"\]\(([^)]+\.png)\)", report)
        self.assertIn("loss.png", linked)
        for name in linked:
            self.assertEqual(png_size(os.path.join(out, name)), (1000, 600), name)
        for run in ("none-s0", "bias-s0"):
            run_dir = os.path.join(out, "runs", run)
            self.assertTrue(os.path.exists(os.path.join(run_dir, "checkpoint", "model.safetensors")))
            with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                self.assertEqual(sum('"loss"' in line for line in f), 6)
            self.assertEqual(png_size(os.path.join(run_dir, "metrics-loss.png"))[0], 1000)
        # One tokenizer and one token file for both runs.
        self.assertEqual(len(glob.glob(os.path.join(out, "data", "tokenizer-*"))), 1)
        self.assertTrue(os.path.exists(os.path.join(out, "data", "tokens.safetensors")))
        self.assertEqual(leftovers(out), [])

        # Again with one more seed: the finished run is reused, the new one trained, spreads appear.
        result = experiment("balance", "--model-config", self.config, "--strategies", "none",
                            "--seeds", 2, "--output", out, *COMMON)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("none-s0: finished earlier, reused", result.stderr)
        self.assertIn("run 2/2 none-s1", result.stderr)
        with open(os.path.join(out, "report.md")) as f:
            self.assertRegex(f.read(), r"\| none \| [^|]+ \| \d+\.\d{4} ± \d+\.\d{4} \|")

    def test_pools_equal_parameters(self):
        out = os.path.join(self.dir, "pools")
        result = experiment("pools", "--model-config", self.config, "--group-sizes", "1,2",
                            "--output", out, *COMMON)
        self.assertEqual(result.returncode, 0, result.stderr)
        per_layer = harness.load_json(os.path.join(out, "configs", "per-layer.json"))
        pooled = harness.load_json(os.path.join(out, "configs", "pool-2.json"))
        self.assertEqual((per_layer["n_routed_experts"], per_layer["expert_sharing_group_size"]), (16, 1))
        self.assertEqual((pooled["n_routed_experts"], pooled["expert_sharing_group_size"]), (32, 2))
        with open(os.path.join(out, "report.md")) as f:
            report = f.read()
        params = re.findall(r"^\| (per-layer|pool-2) \| ([\d.]+)k \(([\d.]+)k\) \|", report, re.M)
        sizes = {name: (float(total), float(active)) for name, total, active in params}
        # Equal routed experts in all; only the routers grow (each layer scores a pool of 2E).
        routers = 2 * 16 * CONFIG["hidden_size"] / 1000
        self.assertAlmostEqual(sizes["pool-2"][0] - sizes["per-layer"][0], routers, delta=0.15)
        self.assertAlmostEqual(sizes["pool-2"][1] - sizes["per-layer"][1], routers, delta=0.15)
        self.assertEqual(leftovers(out), [])

    def test_bad_flags(self):
        cases = [
            (["balance", "--strategies", "none,fancy"], "fancy"),
            (["balance", "--strategies", "none,,bias"], "--strategies"),
            (["balance", "--seeds", "0"], "--seeds"),
            (["balance", "--steps", "0"], "--steps"),
            (["pools", "--group-sizes", "1,0"], "--group-sizes"),
            (["pools", "--group-sizes", "1,x"], "--group-sizes"),
            (["pools", "--balance", "sometimes"], "sometimes"),
        ]
        for args, fragment in cases:
            out = os.path.join(self.dir, "bad")
            base = {"--steps": "2", "--seeds": "1"}
            flags = dict(zip(args[1::2], args[2::2]))
            rest = []
            for flag, value in {**base, **flags}.items():
                rest += [flag, value]
            result = experiment(args[0], "--model-config", self.config, "--data", DATA, "--output", out,
                                "--seq-len", 32, "--batch-size", 4, *rest)
            self.assertEqual(result.returncode, 1, (args, result.stderr))
            self.assertIn(fragment, result.stderr, args)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertFalse(os.path.exists(out), args)
        result = experiment("balance", "--model-config", os.path.join(self.dir, "missing.json"), "--data", DATA,
                            "--steps", 2, "--output", os.path.join(self.dir, "bad"))
        self.assertNotEqual(result.returncode, 0)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "bad")))


if __name__ == "__main__":
    unittest.main()
