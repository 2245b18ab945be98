"""Bad input never crashes megamoe: each case exits with status 1, prints one clear line naming
the file, tensor, key or argument at fault, and leaves no output (or half-written output) behind.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_cli_errors
"""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import harness

CONFIG = os.path.join(harness.CONFIG_DIR, "v3-noaux-yarn.json")


def run(*args):
    command = [harness.megamoe_binary(), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


class CliErrors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-errors-")
        cls.good = os.path.join(cls.tmp.name, "good")
        harness.synth(CONFIG, "fp8", 3, cls.good)
        cls.config = harness.load_json(CONFIG)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        self.dir = tempfile.mkdtemp(dir=self.tmp.name)
        self.model = os.path.join(self.dir, "model")
        shutil.copytree(self.good, self.model)
        self.weights = os.path.join(self.model, "model.safetensors")
        self.output = os.path.join(self.dir, "logits.npy")

    def expect_failure(self, args, *fragments):
        result = run(*args)
        self.assertEqual(result.returncode, 1, f"{args}: exit {result.returncode}, stderr: {result.stderr}")
        message = result.stderr.strip()
        self.assertEqual(len(message.splitlines()), 1, f"one line expected, got: {message}")
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def expect_logits_failure(self, *fragments, tokens="1,2,3"):
        self.expect_failure(["logits", "--model", self.model, "--tokens", tokens, "--output", self.output],
                            *fragments)
        leftovers = [name for name in os.listdir(self.dir) if name != "model"]
        self.assertEqual(leftovers, [], "no output, not even a temporary file")

    def edit_header(self, edit):
        header, data = harness.read_raw(self.weights)
        edit(header)
        harness.write_raw(self.weights, header, data)

    def edit_config(self, edit):
        path = os.path.join(self.model, "config.json")
        config = harness.load_json(path)
        edit(config)
        with open(path, "w") as f:
            json.dump(config, f)

    # ---- files ----

    def test_missing_directory(self):
        shutil.rmtree(self.model)
        self.expect_logits_failure("model")

    def test_truncated_file(self):
        size = os.path.getsize(self.weights)
        with open(self.weights, "r+b") as f:
            f.truncate(size // 2)
        self.expect_logits_failure("model.safetensors")

    def test_truncated_header(self):
        with open(self.weights, "r+b") as f:
            f.truncate(5)
        self.expect_logits_failure("model.safetensors")

    def test_corrupt_header(self):
        with open(self.weights, "r+b") as f:
            f.seek(8)
            f.write(b"{garbage")
        self.expect_logits_failure("model.safetensors")

    def test_offsets_outside_file(self):
        name = "model.norm.weight"
        self.edit_header(lambda h: h[name].update(data_offsets=[10 ** 12, 10 ** 12 + 2 * self.config["hidden_size"]]))
        self.expect_logits_failure("model.safetensors", name)

    def test_wrong_dtype(self):
        name = "model.layers.0.input_layernorm.weight"
        self.edit_header(lambda h: h[name].update(dtype="I16"))
        self.expect_logits_failure(name, "I16")

    def test_wrong_shape(self):
        name = "model.layers.1.self_attn.o_proj.weight"

        def transpose(h):
            h[name]["shape"] = h[name]["shape"][::-1]
        self.edit_header(transpose)
        self.expect_logits_failure(name)

    def test_missing_tensor(self):
        name = "model.layers.1.mlp.experts.3.down_proj.weight"
        self.edit_header(lambda h: h.pop(name))
        self.expect_logits_failure(name, "missing")

    def test_missing_fp8_scale(self):
        name = "model.layers.0.self_attn.kv_b_proj.weight_scale_inv"
        self.edit_header(lambda h: h.pop(name))
        self.expect_logits_failure(name)

    def test_config_hidden_size_mismatch(self):
        self.edit_config(lambda c: c.update(hidden_size=c["hidden_size"] + 8))
        self.expect_logits_failure("model.embed_tokens.weight")

    # ---- config ----

    def test_unknown_architecture(self):
        self.edit_config(lambda c: c.update(architectures=["LlamaForCausalLM"]))
        self.expect_logits_failure("config.json", "LlamaForCausalLM")

    def test_inconsistent_config_values(self):
        E = self.config["n_routed_experts"]
        cases = {
            "num_experts_per_tok": lambda c: c.update(num_experts_per_tok=E + 1),
            "n_group": lambda c: c.update(n_group=E - 1),
            "topk_group": lambda c: c.update(topk_group=c["n_group"] + 1),
            "scoring_func": lambda c: c.update(scoring_func="relu"),
            "topk_method": lambda c: c.update(topk_method="best"),
            "hidden_size": lambda c: c.update(hidden_size="wide"),
            "kv_lora_rank": lambda c: c.pop("kv_lora_rank"),
            "qk_rope_head_dim": lambda c: c.update(qk_rope_head_dim=7),
            "rope_scaling": lambda c: c.update(rope_scaling={"type": "dynamic", "factor": 2}),
            "expert_sharing_group_size": lambda c: c.update(expert_sharing_group_size=0),
            "share_shared_experts": lambda c: c.update(share_shared_experts="yes"),
        }
        for key, edit in cases.items():
            with self.subTest(key=key):
                shutil.copy(os.path.join(self.good, "config.json"), os.path.join(self.model, "config.json"))
                self.edit_config(edit)
                self.expect_logits_failure("config.json", key)

    def test_synth_rejects_bad_config_and_writes_nothing(self):
        config = dict(self.config, num_experts_per_tok=self.config["n_routed_experts"] + 1)
        path = os.path.join(self.dir, "bad.json")
        with open(path, "w") as f:
            json.dump(config, f)
        out = os.path.join(self.dir, "synth-out")
        self.expect_failure(["synth", "--model-config", path, "--output", out], "num_experts_per_tok")
        self.assertEqual(sorted(os.listdir(self.dir)), ["bad.json", "model"])

    def test_expert_pool_errors(self):
        # A pooled checkpoint read as per-layer experts misses the second layer's experts.
        pooled = os.path.join(self.dir, "pooled")
        harness.synth(os.path.join(harness.CONFIG_DIR, "v3-pool-shared.json"), "bf16", 1, pooled)
        shutil.rmtree(self.model)
        shutil.copytree(pooled, self.model)
        shutil.rmtree(pooled)
        self.edit_config(lambda c: c.update(expert_sharing_group_size=1))
        self.expect_logits_failure("model.layers.2.mlp.experts.0.gate_proj.weight")
        # DeepSeek-V4 keeps per-layer experts: the keys are refused by name.
        for key, value in (("expert_sharing_group_size", 2), ("share_shared_experts", True)):
            with self.subTest(key=key):
                config = dict(harness.load_json(os.path.join(harness.CONFIG_DIR, "v4-window-hash.json")),
                              **{key: value})
                path = os.path.join(self.dir, "v4.json")
                with open(path, "w") as f:
                    json.dump(config, f)
                self.expect_failure(["inspect", path], "v4.json", f"'{key}'", "DeepSeek-V4")

    # ---- requests ----

    def test_token_outside_vocabulary(self):
        self.expect_logits_failure("token id", str(self.config["vocab_size"]),
                                   tokens=f"1,{self.config['vocab_size']}")

    def test_malformed_token_list(self):
        self.expect_logits_failure("--tokens", tokens="1,x,3")
        self.expect_logits_failure("--tokens", tokens="")

    def test_inspect_reports_bad_checkpoint(self):
        with open(self.weights, "r+b") as f:
            f.truncate(100)
        self.expect_failure(["inspect", self.model], "model.safetensors")


if __name__ == "__main__":
    unittest.main()
