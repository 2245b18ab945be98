"""Data-parallel training (`mpirun -np 2 megamoe train --batch-size 2`) against one process with
batch 4: the same losses, validation losses and balance within 1e-5 with --balance bias (global
loads) and aux-loss (global f_i and P_i), a --resume in the middle of the distributed run, the same
saved tensors, only rank 0 writing, and a failure on rank 0 ending every rank."""
import json
import os
import random
import sys
import tempfile
import unittest

import numpy as np

from dist_harness import mpirun_command, megamoe_binary, run

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model"))
import harness  # noqa: E402,F401  first: puts tests/reference on the path
import safetensors_np  # noqa: E402
from test_train import CONFIG, metrics  # noqa: E402

TOLERANCE = 1e-5
STEPS, SEQ_LEN = 4, 16
# Compared between the runs: every number a step or a validation logs except the speed.
COMPARED = ("loss", "grad_norm", "lr", "epoch", "aux_loss", "maxvio_batch", "val_loss", "maxvio_global")


class DataParallelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-dp-")
        cls.data = cls.path("data.txt")
        rng = random.Random(3)
        words = ["expert", "token", "the", "of", "rank", "batch", "gradient", "and", "model", "loss", "mean"]
        with open(cls.data, "w") as f:
            f.write(" ".join(rng.choice(words) for _ in range(6000)))
        cls.config = cls.path("config.json")
        with open(cls.config, "w") as f:
            json.dump(CONFIG, f)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, *names):
        return os.path.join(cls.tmp.name, *names)

    def train_args(self, output, batch, *extra):
        return list(map(str, ["train", "--model-config", self.config, "--data", self.data, "--steps", STEPS, "--seq-len", SEQ_LEN,
                "--batch-size", batch, "--eval-every", 2, "--eval-batches", 2, "--sample-lines", 0,
                "--output", output, "--metrics", output + ".jsonl", *extra]))

    def assert_same_runs(self, single, spread):
        lines_1, lines_2 = metrics(single + ".jsonl"), metrics(spread + ".jsonl")
        self.assertEqual([sorted(m) for m in lines_1], [sorted(m) for m in lines_2])
        for a, b in zip(lines_1, lines_2):
            for key in COMPARED:
                if key in a:
                    np.testing.assert_allclose(b[key], a[key], rtol=TOLERANCE, atol=1e-7, err_msg=f"{key} {a['step']}")
        one, two = safetensors_np.Checkpoint(single), safetensors_np.Checkpoint(spread)
        for name in one.entries:
            # AdamW's first steps move every weight by about lr whatever the gradient's size, so
            # rounding in the gradient's sum order shows as up to a few ulps of lr.
            np.testing.assert_allclose(two.array(name), one.array(name), rtol=0, atol=1e-5, err_msg=name)
        with open(os.path.join(single, "training", "state.json")) as f1, \
                open(os.path.join(spread, "training", "state.json")) as f2:
            self.assertEqual(f1.read(), f2.read())  # the global batch, the data position

    def test_bias_balancing_with_resume(self):
        single, spread = self.path("bias-1"), self.path("bias-2")
        run([megamoe_binary(), *self.train_args(single, 4, "--balance", "bias", "--bias-update-rate", "1e-2")])
        # Rank 0 trains the tokenizer and tokenizes the text while rank 1 waits; stopped and resumed.
        run(mpirun_command(2, *self.train_args(spread, 2, "--balance", "bias", "--bias-update-rate", "1e-2",
                                               "--stop-at", 2)))
        _, _, stderr, _ = run(mpirun_command(2, *self.train_args(spread, 2, "--resume")))
        self.assertIn("resuming", stderr)
        self.assertEqual(stderr.count("resuming"), 1)  # rank 0 alone reports
        self.assert_same_runs(single, spread)
        bias = safetensors_np.Checkpoint(spread).array("model.layers.1.mlp.gate.e_score_correction_bias")
        self.assertGreater(np.abs(bias).max(), 0)

    def test_aux_loss_over_the_global_batch(self):
        single, spread = self.path("aux-1"), self.path("aux-2")
        flags = ("--balance", "aux-loss", "--balance-alpha", "0.5")
        run([megamoe_binary(), *self.train_args(single, 4, *flags)])
        run(mpirun_command(2, *self.train_args(spread, 2, *flags)))
        self.assert_same_runs(single, spread)
        self.assertFalse([name for name in os.listdir(self.tmp.name) if ".tmp." in name])

    def test_a_failing_rank_stops_every_rank(self):
        # Only rank 0 opens the metrics file: its error must end rank 1 too, which waits in a collective.
        output = self.path("fails")
        code, _, stderr, seconds = run(mpirun_command(2, *self.train_args(output, 2)[:-1], self.path("no", "m.jsonl")),
                                       check=False)
        self.assertNotEqual(code, 0)
        self.assertIn("error (rank 0 of 2): --metrics", stderr)
        self.assertLess(seconds, 60)


if __name__ == "__main__":
    unittest.main()
