"""megamoe train end to end: a tokenizer and a model trained from text into a checkpoint that the
other commands load; metrics; determinism; --resume continuing the uninterrupted curve; the first
steps' losses against the PyTorch training reference; bad input, a kill while saving and a full
disk leaving the previous checkpoint intact.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_train
"""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import numpy as np

import harness  # first: puts tests/reference on the path
import safetensors_np
import deepseek_v3_train

CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 384, "hidden_size": 32, "num_hidden_layers": 2, "first_k_dense_replace": 1,
    "intermediate_size": 64, "moe_intermediate_size": 16, "num_attention_heads": 2,
    "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
    "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
    "routed_scaling_factor": 2.5, "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "max_position_embeddings": 256, "tie_word_embeddings": False,
}
LICENSES = ("GPL-3", "Apache-2.0", "MPL-2.0")
SEQ_LEN, BATCH = 32, 4


def metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def losses(path):
    return [(m["step"], m["loss"]) for m in metrics(path) if "loss" in m]


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


class Train(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-train-")
        cls.data = cls.path("data")
        os.makedirs(cls.data)
        for name in LICENSES:  # Debian ships them; generated text stands in elsewhere
            source = os.path.join("/usr/share/common-licenses", name)
            if os.path.exists(source):
                shutil.copy(source, cls.data)
            else:
                rng = random.Random(name)
                words = ["license", "software", "the", "of", "to", "copy", "work", "source", "code", "and"]
                write_text(os.path.join(cls.data, name), " ".join(rng.choice(words) for _ in range(8000)))
        cls.config = cls.path("config.json")
        write_text(cls.config, json.dumps(CONFIG))
        # One run shared by several tests: the tokenizer is trained from the data.
        cls.run_dir = cls.path("run")
        cls.stdout = cls.train(cls.run_dir, "--steps", 6, "--eval-every", 3, "--metrics", cls.run_dir + ".jsonl")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, *names):
        return os.path.join(cls.tmp.name, *names)

    @classmethod
    def train(cls, output, *extra, config=None, data=None):
        return harness.run_megamoe("train", "--model-config", config or cls.config, "--data", data or cls.data,
                                   "--seq-len", SEQ_LEN, "--batch-size", BATCH, "--output", output,
                                   "--threads", 2, "--lr", "3e-3", *extra)

    def train_fails(self, output, *extra, config=None, data=None, seq_len=SEQ_LEN, expect):
        result = subprocess.run(
            [str(a) for a in (harness.megamoe_binary(), "train", "--model-config", config or self.config, "--data",
                              data or self.data, "--seq-len", seq_len, "--batch-size", BATCH, "--output", output,
                              *extra)],
            capture_output=True, text=True)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(expect, result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()[-1:]), 1)
        return result.stderr

    # ---- the checkpoint ----

    def test_checkpoint_is_a_hugging_face_directory(self):
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "training/state.json", "training/optimizer.safetensors"):
            self.assertTrue(os.path.exists(os.path.join(self.run_dir, name)), name)
        config = harness.load_json(os.path.join(self.run_dir, "config.json"))
        tokenizer = harness.load_json(os.path.join(self.run_dir, "tokenizer.json"))
        ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
        self.assertEqual(config["bos_token_id"], ids["<｜begin▁of▁sentence｜>"])
        self.assertEqual(config["eos_token_id"], ids["<｜end▁of▁sentence｜>"])
        self.assertEqual({k: v for k, v in config.items() if k not in ("bos_token_id", "eos_token_id", "torch_dtype")},
                         CONFIG)
        checkpoint = safetensors_np.Checkpoint(self.run_dir)
        shapes = harness.v3_tensor_shapes(CONFIG)
        self.assertEqual(sorted(checkpoint.entries), sorted(shapes))
        for name, shape in shapes.items():
            self.assertEqual(checkpoint.shape(name), shape, name)
            self.assertEqual(checkpoint.dtype(name), "F32", name)

    def test_other_commands_load_the_checkpoint(self):
        text = harness.run_megamoe("generate", "--model", self.run_dir, "--prompt", "The license", "--max-tokens", 8,
                                   "--temperature", 0.8, "--seed", 1)
        self.assertTrue(text.strip())
        self.assertIn("DeepseekV3ForCausalLM", harness.run_megamoe("inspect", self.run_dir))
        # The trained weights give the same logits in megamoe's inference and in the reference.
        tokens = harness.random_tokens(CONFIG["vocab_size"], 9, 1)
        ours = harness.megamoe_logits(self.run_dir, tokens, self.path("logits.npy"))
        import deepseek_v3
        harness.assert_logits_close(self, ours, deepseek_v3.logits(self.run_dir, tokens), 1e-4, "trained model")

    def test_metrics_progress_and_samples(self):
        lines = metrics(self.run_dir + ".jsonl")
        steps = [m for m in lines if "loss" in m]
        self.assertEqual([m["step"] for m in steps], list(range(1, 7)))
        for m in steps:
            for key in ("loss", "lr", "tokens_per_s", "grad_norm"):
                self.assertIsInstance(m[key], float, key)
        self.assertEqual([m["step"] for m in lines if "val_loss" in m], [3, 6])
        self.assertLess(steps[-1]["loss"], steps[0]["loss"])
        self.assertFalse(any("aux_loss" in m for m in steps))  # no auxiliary loss by default
        # Balance metrics of the one MoE layer: MaxVio of each step's batch, and of the validation set.
        E, k = CONFIG["n_routed_experts"], CONFIG["num_experts_per_tok"]
        for m in steps:
            self.assertEqual(len(m["maxvio_batch_per_layer"]), 1)
            self.assertEqual(m["maxvio_batch"], m["maxvio_batch_per_layer"][0])
            self.assertTrue(0 <= m["maxvio_batch"] <= E - 1)
        for m in (m for m in lines if "val_loss" in m):
            loads = np.array(m["expert_loads"])
            self.assertEqual(loads.shape, (1, E))
            self.assertEqual(loads.sum() % (SEQ_LEN * k), 0)  # whole windows of k slots per token
            mean = loads.mean()
            share = loads[0] / loads.sum()
            entropy = -sum(p * np.log(p) for p in share if p > 0) / np.log(E)
            expected = {"maxvio_global": (loads.max() - mean) / mean, "load_cv": loads.std() / mean,
                        "dead_expert_share": float((loads == 0).mean()), "routing_entropy": entropy}
            for key, value in expected.items():
                self.assertAlmostEqual(m[key], value, places=12, msg=key)
                self.assertAlmostEqual(m[key + "_per_layer"][0], value, places=12, msg=key)
                self.assertAlmostEqual(m[key + "_per_pool"][0], value, places=12, msg=key)
        self.assertEqual(len([line for line in self.stdout.splitlines() if line.startswith("sample ")]), 3)

    # ---- numbers ----

    def test_same_seed_same_losses(self):
        again = self.path("again")
        self.train(again, "--steps", 6, "--eval-every", 3, "--metrics", again + ".jsonl", "--sample-lines", 0)
        numbers = lambda path: [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in metrics(path)]
        self.assertEqual(numbers(again + ".jsonl"), numbers(self.run_dir + ".jsonl"))

    def test_resume_continues_the_uninterrupted_curve(self):
        # Interrupted at step 2 and saved in BF16 (training keeps fp32 master weights), then resumed.
        resumed = self.path("resumed")
        log = resumed + ".jsonl"
        self.train(resumed, "--steps", 6, "--eval-every", 3, "--metrics", log, "--stop-at", 2,
                   "--save-dtype", "bf16")
        self.assertEqual(safetensors_np.Checkpoint(resumed).dtype("lm_head.weight"), "BF16")
        with open(log, "a") as f:  # what a run killed after its last checkpoint leaves behind
            f.write(json.dumps({"step": 3, "loss": 123.0}) + "\n")
        self.train(resumed, "--steps", 6, "--eval-every", 3, "--metrics", log, "--resume", "--sample-lines", 0)
        expected, actual = losses(self.run_dir + ".jsonl"), losses(log)
        self.assertEqual([s for s, _ in actual], [s for s, _ in expected])
        np.testing.assert_allclose([l for _, l in actual], [l for _, l in expected], rtol=0, atol=1e-5)
        val = lambda path: [m["val_loss"] for m in metrics(path) if "val_loss" in m]
        np.testing.assert_allclose(val(log), val(self.run_dir + ".jsonl"), rtol=0, atol=1e-5)

    def test_first_steps_match_the_pytorch_reference(self):
        init, run = self.path("init"), self.path("reference-run")
        flags = ("--warmup-steps", 2, "--tokenizer", self.run_dir, "--sample-lines", 0)
        self.train(init, "--steps", 0, *flags)  # the initial weights every run with this seed starts from
        self.train(run, "--steps", 5, "--metrics", run + ".jsonl", *flags)
        tokens = deepseek_v3_train.read_tokens(init + ".data/tokens.safetensors")
        reference = deepseek_v3_train.train(deepseek_v3_train.TrainingReference(init), tokens, 5, SEQ_LEN, BATCH,
                                            lr=3e-3, warmup=2)
        ours = [l for _, l in losses(run + ".jsonl")]
        print("megamoe  ", " ".join(f"{l:.6f}" for l in ours))
        print("reference", " ".join(f"{l:.6f}" for l in reference))
        np.testing.assert_allclose(ours, reference, rtol=1e-5)

    def test_expert_pools_train_save_once_and_reload(self):
        # MoE layers 1-3 in one pool of routed and shared experts: one tensor per pool in the
        # checkpoint and the optimizer state, the same losses as the PyTorch reference (gradients of
        # all three layers summed into the pool, one AdamW update per pool), and a checkpoint that
        # generate and the reference load.
        pooled = dict(CONFIG, num_hidden_layers=4, expert_sharing_group_size=3, share_shared_experts=True)
        config = self.path("pooled.json")
        write_text(config, json.dumps(pooled))
        init, run = self.path("pooled-init"), self.path("pooled")
        flags = ("--warmup-steps", 2, "--tokenizer", self.run_dir, "--sample-lines", 0)
        self.train(init, "--steps", 0, *flags, config=config)
        self.train(run, "--steps", 4, "--metrics", run + ".jsonl", *flags, config=config)

        checkpoint = safetensors_np.Checkpoint(run)
        self.assertEqual(sorted(checkpoint.entries), sorted(harness.v3_tensor_shapes(pooled)))
        header, _, _ = safetensors_np.read_header(os.path.join(run, "training", "optimizer.safetensors"))
        for names in (checkpoint.entries, header):
            experts = {n.split(".mlp.")[0] for n in names if "experts." in n}
            self.assertEqual(experts, {"model.layers.1"})

        tokens = deepseek_v3_train.read_tokens(init + ".data/tokens.safetensors")
        reference = deepseek_v3_train.train(deepseek_v3_train.TrainingReference(init), tokens, 4, SEQ_LEN, BATCH,
                                            lr=3e-3, warmup=2)
        np.testing.assert_allclose([l for _, l in losses(run + ".jsonl")], reference, rtol=1e-5)

        text = harness.run_megamoe("generate", "--model", run, "--prompt", "The license", "--max-tokens", 8,
                                   "--temperature", 0.8, "--seed", 1)
        self.assertTrue(text.strip())
        tokens = harness.random_tokens(CONFIG["vocab_size"], 9, 2)
        import deepseek_v3
        harness.assert_logits_close(self, harness.megamoe_logits(run, tokens, self.path("pooled.npy")),
                                    deepseek_v3.logits(run, tokens), 1e-4, "trained pooled model")

    # ---- load balancing ----

    def test_bias_balancing_evens_the_loads(self):
        # 16 experts top-2 without group limits; the same seed and data with and without the bias.
        config = self.path("balance.json")
        write_text(config, json.dumps(dict(CONFIG, n_routed_experts=16, n_group=1, topk_group=1)))
        flags = ("--steps", 30, "--eval-every", 30, "--tokenizer", self.run_dir, "--sample-lines", 0)
        runs = {}
        for balance in ("none", "bias"):
            run = self.path(f"balance-{balance}")
            extra = ("--bias-update-rate", "2e-2") if balance == "bias" else ()
            self.train(run, *flags, "--balance", balance, *extra, "--metrics", run + ".jsonl", config=config)
            runs[balance] = metrics(run + ".jsonl")
        late = {b: np.mean([m["maxvio_batch"] for m in lines if "loss" in m][-10:]) for b, lines in runs.items()}
        final = {b: [m for m in lines if "val_loss" in m][-1]["maxvio_global"] for b, lines in runs.items()}
        print(f"MaxVio_batch over the last 10 steps: {late}; MaxVio_global at the end: {final}")
        self.assertLess(late["bias"], 0.7 * late["none"])
        self.assertLess(final["bias"], final["none"])
        # The bias is in the checkpoint (F32), and the run's settings in its state.
        bias = safetensors_np.Checkpoint(self.path("balance-bias")).array("model.layers.1.mlp.gate.e_score_correction_bias")
        self.assertGreater(np.abs(bias).max(), 0.05)
        self.assertTrue(np.all(safetensors_np.Checkpoint(self.path("balance-none")).array(
            "model.layers.1.mlp.gate.e_score_correction_bias") == 0))
        hyper = harness.load_json(self.path("balance-bias", "training", "state.json"))["hyperparameters"]
        self.assertEqual((hyper["balance"], hyper["bias_update_rate"]), ("bias", 2e-2))

    def test_aux_loss_is_logged_apart_and_resumed(self):
        # seq-aux-loss: `loss` stays the cross-entropy, `aux_loss` is the auxiliary term (alpha at
        # perfect balance, more otherwise); a resumed run keeps the strategy without repeating it.
        run, resumed = self.path("seq-aux"), self.path("seq-aux-resumed")
        flags = ("--steps", 4, "--eval-every", 2, "--tokenizer", self.run_dir, "--sample-lines", 0)
        self.train(run, *flags, "--balance", "seq-aux-loss", "--balance-alpha", "0.5", "--metrics", run + ".jsonl")
        self.train(resumed, *flags, "--balance", "seq-aux-loss", "--balance-alpha", "0.5", "--stop-at", 2,
                   "--metrics", resumed + ".jsonl")
        self.train(resumed, *flags, "--resume", "--metrics", resumed + ".jsonl")
        steps = [m for m in metrics(run + ".jsonl") if "loss" in m]
        for m in steps:
            self.assertGreaterEqual(m["aux_loss"], 0.5 * (1 - 1e-6))
            self.assertLess(m["aux_loss"], 0.5 * CONFIG["n_routed_experts"])
        self.assertEqual([m["loss"] for m in metrics(resumed + ".jsonl") if "loss" in m], [m["loss"] for m in steps])
        hyper = harness.load_json(os.path.join(resumed, "training", "state.json"))["hyperparameters"]
        self.assertEqual((hyper["balance"], hyper["balance_alpha"]), ("seq-aux-loss", 0.5))
        self.train_fails(resumed, "--steps", 6, "--resume", "--balance", "aux-loss", expect="--balance \"aux-loss\" differs")

    def test_bad_balance_flags(self):
        greedy = self.path("greedy.json")
        write_text(greedy, json.dumps(dict(CONFIG, topk_method="greedy", n_group=1, topk_group=1)))
        for extra, expect, config in ((("--balance", "fancy"), "unknown balancing strategy 'fancy'", None),
                                      (("--balance", "aux-loss", "--balance-alpha", "0"), "positive", None),
                                      (("--balance", "bias", "--bias-update-rate", "-1"), "positive", None),
                                      (("--balance", "bias", "--balance-alpha", "0.1"), "--balance-alpha applies", None),
                                      (("--bias-update-rate", "0.1",), "--bias-update-rate applies", None),
                                      (("--balance", "bias"), "noaux_tc", greedy)):
            with self.subTest(extra=extra):
                self.train_fails(self.path("none"), "--steps", 1, *extra, config=config, expect=expect)
        self.assertFalse(os.path.exists(self.path("none")))

    def test_generate_writes_expert_stats(self):
        path = self.path("stats", "expert-stats.json")
        os.makedirs(os.path.dirname(path))
        ids = harness.run_megamoe("generate", "--model", self.run_dir, "--prompt-ids", "1,2,3,4,5", "--max-tokens", 6,
                                  "--ignore-eos", "--print-ids", "--expert-stats", path, "--temperature", 0)
        forwarded = 5 + len(ids.split()) - 1  # the prompt, then every generated token but the last
        stats = harness.load_json(path)
        self.assertEqual(stats["layers"], [1])
        loads = np.array(stats["expert_loads"])
        self.assertEqual(loads.shape, (1, CONFIG["n_routed_experts"]))
        self.assertEqual(loads.sum(), forwarded * CONFIG["num_experts_per_tok"])
        mean = loads.mean()
        self.assertAlmostEqual(stats["maxvio"], (loads.max() - mean) / mean, places=12)
        self.assertAlmostEqual(stats["load_cv_per_layer"][0], loads.std() / mean, places=12)
        self.assertAlmostEqual(stats["dead_expert_share"], float((loads == 0).mean()), places=12)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["expert-stats.json"])  # no temporary left
        result = subprocess.run([harness.megamoe_binary(), "generate", "--model", self.run_dir, "--prompt-ids", "1",
                                 "--expert-stats", self.path("no-such-dir", "x.json")], capture_output=True, text=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn("no-such-dir", result.stderr)

    # ---- bad input ----

    def test_bad_data(self):
        self.train_fails(self.path("none"), "--steps", 1, data=self.path("missing.txt"), expect="missing.txt")
        empty_dir = self.path("empty-dir")
        os.makedirs(empty_dir)
        self.train_fails(self.path("none"), "--steps", 1, data=empty_dir, expect="no files")
        empty = self.path("empty-file.txt")
        write_text(empty, "")
        self.train_fails(self.path("none"), "--steps", 1, "--tokenizer", self.run_dir, data=empty, expect="no text")
        short = self.path("short.txt")
        write_text(short, "too short")
        self.train_fails(self.path("none"), "--steps", 1, "--tokenizer", self.run_dir, data=short, expect="too few")
        self.assertFalse(os.path.exists(self.path("none")))

    def test_configs_it_cannot_train_name_the_key(self):
        for key, value, expect in (("quantization_config", {"quant_method": "fp8", "weight_block_size": [128, 128]},
                                    "quantization_config"),
                                   ("max_position_embeddings", 16, "max_position_embeddings"),
                                   ("vocab_size", 100, "vocab_size"),
                                   ("num_experts_per_tok", 9, "num_experts_per_tok")):
            with self.subTest(key=key):
                config = self.path(f"bad-{key}.json")
                write_text(config, json.dumps(dict(CONFIG, **{key: value})))
                self.train_fails(self.path("none"), "--steps", 1, config=config, expect=f"'{key}'")

    def test_resume_refuses_another_run(self):
        other = self.path("other.json")
        write_text(other, json.dumps(dict(CONFIG, hidden_size=48)))
        self.train_fails(self.run_dir, "--steps", 8, "--resume", config=other, expect="'hidden_size' is 32 there but 48")
        self.train_fails(self.run_dir, "--steps", 8, "--resume", seq_len=16, expect="--seq-len 16 differs")
        self.train_fails(self.run_dir, "--steps", 8, expect="continue it with --resume")
        self.train_fails(self.path("nothing"), "--steps", 8, "--resume", expect="holds no training/state.json")

    def test_kill_while_saving_keeps_a_whole_checkpoint(self):
        # A larger model saved every step, killed at moments spread over its steps and saves.
        run = self.path("killed")
        config = self.path("larger.json")
        write_text(config, json.dumps(dict(CONFIG, hidden_size=128, moe_intermediate_size=96, n_routed_experts=32)))
        command = [harness.megamoe_binary(), "train", "--model-config", config, "--data", self.data,
                   "--tokenizer", self.run_dir, "--seq-len", SEQ_LEN, "--batch-size", BATCH, "--output", run,
                   "--steps", 400, "--save-every", 1, "--threads", 2, "--sample-lines", 0]
        command = [str(c) for c in command]
        rng = random.Random(5)
        interrupted_saves = 0
        for attempt in range(6):
            process = subprocess.Popen(command + (["--resume"] if os.path.exists(run) else []),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, 1.2) if os.path.exists(run) else 1.5)
            process.send_signal(signal.SIGKILL)
            process.wait()
            interrupted_saves += any(p.startswith("killed.tmp.") for p in os.listdir(self.tmp.name))
            if not os.path.exists(run):
                continue
            state = harness.load_json(os.path.join(run, "training", "state.json"))
            checkpoint = safetensors_np.Checkpoint(run)  # every tensor whole
            for name in checkpoint.entries:
                checkpoint.array(name)
            harness.run_megamoe("inspect", run)
            print(f"kill {attempt + 1} ({interrupted_saves} in a save so far): checkpoint of step {state['step']} intact")
        self.assertTrue(os.path.exists(run), "no checkpoint was ever saved")
        self.assertGreater(interrupted_saves, 0, "no kill landed in a save")
        harness.run_megamoe("train", *command[2:], "--resume", "--stop-at",
                            harness.load_json(os.path.join(run, "training", "state.json"))["step"] + 1)
        self.assertEqual([p for p in os.listdir(self.tmp.name) if p.startswith("killed.tmp.")], [])

    def test_full_disk_leaves_the_previous_checkpoint(self):
        run = self.path("full-disk")
        self.train(run, "--steps", 4, "--stop-at", 2, "--tokenizer", self.run_dir, "--sample-lines", 0)
        before = {name: read_bytes(os.path.join(run, name)) for name in ("model.safetensors", "training/state.json")}

        def small_files():  # writes past 64 KiB fail with EFBIG, as on a full disk
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

        result = subprocess.run([harness.megamoe_binary(), "train", "--model-config", self.config, "--data", self.data,
                                 "--seq-len", str(SEQ_LEN), "--batch-size", str(BATCH), "--output", run,
                                 "--steps", "4", "--resume", "--threads", "2"],
                                capture_output=True, text=True, preexec_fn=small_files)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("saving the checkpoint of step", result.stderr)
        self.assertIn("write failed", result.stderr)
        for name, content in before.items():
            self.assertEqual(read_bytes(os.path.join(run, name)), content, name)
        self.assertEqual([p for p in os.listdir(self.tmp.name) if p.startswith("full-disk.tmp.")], [])


if __name__ == "__main__":
    unittest.main()
