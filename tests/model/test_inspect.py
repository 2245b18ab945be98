"""`megamoe inspect`: parameter counts, stored bytes and KV-cache cost, checked against published
figures and against counts taken independently from the checkpoint files."""
import json
import os
import tempfile
import unittest

import harness
import expert_pools
import safetensors_np

REPO = os.path.dirname(harness.TESTS_DIR)


def inspect_json(path):
    return json.loads(harness.run_megamoe("inspect", path, "--json"))


class Inspect(unittest.TestCase):
    def test_published_deepseek_v3_config(self):
        # DeepSeek-V3: 671B parameters (without the 14B MTP module), 37B activated per token.
        summary = inspect_json(os.path.join(REPO, "configs", "deepseek-v3.json"))
        self.assertAlmostEqual(summary["total_parameters"] / 1e9, 671.0, delta=0.5)
        self.assertAlmostEqual(summary["active_parameters"] / 1e9, 37.5, delta=0.6)
        self.assertEqual(summary["kv_cache_values_per_token"], 61 * (512 + 64))

    def test_counts_match_the_files(self):
        config_path = os.path.join(harness.CONFIG_DIR, "v3-noaux-yarn.json")
        config = harness.load_json(config_path)
        with tempfile.TemporaryDirectory(prefix="megamoe-inspect-") as d:
            harness.synth(config_path, "fp8", 5, d + "/model", shards=2)
            summary = inspect_json(d + "/model")
            shapes = harness.v3_tensor_shapes(config)
            stored = {}
            for name in os.listdir(d + "/model"):
                if name.endswith(".safetensors"):
                    header, _, _ = safetensors_np.read_header(os.path.join(d, "model", name))
                    for entry in header.values():
                        begin, end = entry["data_offsets"]
                        stored[entry["dtype"]] = stored.get(entry["dtype"], 0) + end - begin
        count = lambda shape: shape[0] * (shape[1] if len(shape) > 1 else 1)
        total = sum(count(s) for s in shapes.values())
        routed = sum(count(s) for n, s in shapes.items() if ".mlp.experts." in n)
        active = total - routed + routed * config["num_experts_per_tok"] // config["n_routed_experts"]
        self.assertEqual(summary["total_parameters"], total)
        self.assertEqual(summary["active_parameters"], active)
        self.assertEqual(summary["bytes_by_dtype"], stored)
        self.assertEqual(summary["kv_cache_values_per_token"],
                         config["num_hidden_layers"] * (config["kv_lora_rank"] + config["qk_rope_head_dim"]))


    def test_expert_pools_count_once_in_total_and_per_layer_in_active(self):
        config_path = os.path.join(harness.CONFIG_DIR, "v3-pool-shared.json")
        config = harness.load_json(config_path)
        D, I, k = config["hidden_size"], config["moe_intermediate_size"], config["num_experts_per_tok"]
        pools = expert_pools.pools(config)
        count = lambda shape: shape[0] * (shape[1] if len(shape) > 1 else 1)
        shapes = harness.v3_tensor_shapes(config)  # a pool's tensors once
        is_expert = lambda name: ".mlp.experts." in name or ".mlp.shared_experts." in name
        # Per token: every tensor but the experts, then in each MoE layer its top-k of the pool
        # and the (pooled) shared experts, as the layer runs them.
        per_layer = 3 * D * I * (k + config["n_shared_experts"])
        active = sum(count(s) for n, s in shapes.items() if not is_expert(n)) + \
            len(expert_pools.moe_layers(config)) * per_layer
        with tempfile.TemporaryDirectory(prefix="megamoe-inspect-pools-") as d:
            harness.synth(config_path, "bf16", 5, d + "/model")
            for source in (config_path, d + "/model"):
                with self.subTest(source=source):
                    summary = inspect_json(source)
                    self.assertEqual(summary["total_parameters"], sum(count(s) for s in shapes.values()))
                    self.assertEqual(summary["routed_expert_parameters"],
                                     len(pools) * config["n_routed_experts"] * 3 * D * I)
                    self.assertEqual(summary["active_parameters"], active)
                    self.assertEqual(summary["expert_pools"], pools)
            text = harness.run_megamoe("inspect", d + "/model")
        self.assertIn("2 pools of 12 routed experts and the shared experts for MoE layers 1,2,3 | 4", text)


if __name__ == "__main__":
    unittest.main()
