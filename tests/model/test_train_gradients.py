"""Training gradients: megamoe's backward passes against PyTorch autograd of the independent
training reference (tests/reference/deepseek_v3_train.py, float64) for every parameter tensor of
every tiny DeepSeek-V2/V3 config, and the reference itself against finite differences.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_train_gradients
"""
import os
import subprocess
import tempfile
import unittest

import numpy as np
import torch

import harness  # first: puts tests/reference on the path
import safetensors_np
from deepseek_v3_train import TrainingReference

SEQUENCES, SEQ_LEN = 2, 12
TOLERANCE = 1e-4  # max|megamoe - autograd| / max|autograd| per tensor


def read_gradients(path):
    """(loss, {name: float64 array}) of a `megamoe gradients` file."""
    header, metadata, offset = safetensors_np.read_header(path)
    gradients = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        gradients[name] = np.fromfile(path, dtype="<f4", count=(end - begin) // 4,
                                      offset=offset + begin).reshape(entry["shape"]).astype(np.float64)
    return float(metadata["loss"]), gradients


class TrainGradients(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-train-gradients-")
        cls.models = {}
        for i, (name, path) in enumerate(harness.tiny_v3_configs()):
            config = harness.load_json(path)
            model = os.path.join(cls.tmp.name, name)
            # Weights written independently of megamoe, as F32 so both sides start from equal values.
            harness.write_v3_checkpoint(model, config, harness.random_v3_weights(config, 70 + i), "f32")
            cls.models[name] = (model, config)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check_against_autograd(self, name, balance="none", alpha=0.0):
        model, config = self.models[name]
        rows = np.array(harness.random_tokens(config["vocab_size"], SEQUENCES * (SEQ_LEN + 1), 3))
        output = os.path.join(self.tmp.name, f"{name}.{balance}.grads.safetensors")
        flags = ["--balance", balance, "--balance-alpha", alpha] if balance != "none" else []
        harness.run_megamoe("gradients", "--model", model, "--tokens", ",".join(map(str, rows)),
                            "--sequences", SEQUENCES, "--output", output, *flags)
        loss, gradients = read_gradients(output)
        reference = TrainingReference(model, balance=balance, alpha=alpha)
        ref_loss, ref_gradients = reference.gradients(rows.reshape(SEQUENCES, -1))
        self.assertAlmostEqual(loss, ref_loss, delta=1e-6 * ref_loss, msg=f"{name}: loss")
        if balance != "none":
            _, ref_aux = reference.losses(rows.reshape(SEQUENCES, -1))
            aux = float(safetensors_np.read_header(output)[1]["aux_loss"])
            self.assertAlmostEqual(aux, float(ref_aux), delta=1e-6 * float(ref_aux), msg=f"{name}: aux_loss")
        self.assertEqual(sorted(gradients), sorted(harness.v3_tensor_shapes(config)), name)
        worst = 0.0
        for tensor, reference_gradient in ref_gradients.items():
            scale = np.abs(reference_gradient).max()
            error = np.abs(gradients[tensor] - reference_gradient).max()
            if scale == 0:  # frozen router biases, experts no token chose
                self.assertEqual(error, 0.0, f"{name}: {tensor} should have no gradient")
                continue
            self.assertLessEqual(error / scale, TOLERANCE, f"{name}: {tensor}")
            worst = max(worst, error / scale)
        print(f"{name} ({balance}): loss {loss:.6f} (reference {ref_loss:.6f}), worst tensor error {worst:.1e}")

    def test_every_tensor_matches_autograd(self):
        self.assertTrue(self.models, "no tiny V2/V3 configs in tests/configs")
        for name in self.models:
            with self.subTest(config=name):
                self.check_against_autograd(name)

    def test_balance_losses_match_autograd(self):
        # A large alpha, so the auxiliary loss's share of the gate's gradient is far above the
        # tolerance: a wrong gradient of it cannot hide behind the cross-entropy's.
        for name in ("v2-lite-greedy", "v3-noaux-yarn"):  # softmax and sigmoid scores
            for balance in ("aux-loss", "seq-aux-loss"):
                with self.subTest(config=name, balance=balance):
                    self.check_against_autograd(name, balance, 3.0)

    def test_balance_flags_rejected(self):
        model, _ = self.models["v3-noaux-yarn"]
        output = os.path.join(self.tmp.name, "rejected.safetensors")
        for flags, message in ((["--balance", "bias"], "no loss"), (["--balance", "fancy"], "unknown balancing"),
                               (["--balance", "aux-loss", "--balance-alpha", "-1"], "positive"),
                               (["--balance-alpha", "0.1"], "applies to")):
            with self.subTest(flags=flags):
                result = subprocess.run([harness.megamoe_binary(), "gradients", "--model", model, "--tokens",
                                         "1,2,3", "--output", output, *flags], capture_output=True, text=True)
                self.assertEqual(result.returncode, 1, result.stderr)
                self.assertIn(message, result.stderr)
                self.assertFalse(os.path.exists(output))

    def test_reference_gradients_match_finite_differences(self):
        # The reference's autograd against central differences, in float64, along each tensor's
        # own gradient (the largest signal); steps small enough to keep every expert choice.
        # With the sequence-wise auxiliary loss on, so its autograd is checked too.
        name = "v3-noaux-yarn"
        model, config = self.models[name]
        rows = np.array(harness.random_tokens(config["vocab_size"], SEQUENCES * (SEQ_LEN + 1), 4))
        rows = rows.reshape(SEQUENCES, -1)
        reference = TrainingReference(model, balance="seq-aux-loss", alpha=3.0)
        _, gradients = reference.gradients(rows)
        with torch.no_grad():
            for tensor, gradient in gradients.items():
                norm = np.linalg.norm(gradient)
                if norm == 0:
                    continue
                param = reference.params[tensor]
                saved = param.clone()
                direction = torch.from_numpy(gradient / norm)
                losses = []
                for h in (1e-5, -1e-5):
                    param.copy_(saved + h * direction)
                    losses.append(float(reference.loss(rows)))
                param.copy_(saved)
                numeric = (losses[0] - losses[1]) / 2e-5
                self.assertAlmostEqual(numeric, norm, delta=1e-5 * norm + 1e-9, msg=tensor)


if __name__ == "__main__":
    unittest.main()
