"""Expert-parallel runs that go wrong end on every rank within seconds, with a message naming the
rank and the cause: a rank that cannot load its shard, a rank killed mid-run, ranks given different
models. And `serve` under mpirun answers from rank 0."""
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from dist_harness import MPI_ENV, config, mpirun_command, mpmd_command, run

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serve"))
from harness import run_megamoe, synth  # noqa: E402
import serve_harness  # noqa: E402

FAST = 20  # seconds within which every rank must be gone


class DistFaultTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = os.path.join(cls.tmp.name, "model")
        synth(config("v3-noaux-yarn"), "fp8", 3, cls.model, shards=3)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def logits_args(self, model):
        return ["logits", "--model", model, "--tokens", "1,2,3", "--output", os.path.join(self.tmp.name, "out.npy")]

    def test_a_rank_without_its_shard_ends_every_rank(self):
        broken = os.path.join(self.tmp.name, "broken")
        shutil.copytree(self.model, broken, dirs_exist_ok=True)
        shard = sorted(f for f in os.listdir(broken) if f.endswith(".safetensors"))[-1]
        os.remove(os.path.join(broken, shard))
        code, _, stderr, seconds = run(mpmd_command(self.logits_args(self.model), self.logits_args(broken)),
                                       check=False, timeout=60)
        self.assertNotEqual(code, 0)
        self.assertLess(seconds, FAST)
        self.assertIn("rank 1 of 2", stderr)
        self.assertIn(shard, stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp.name, "out.npy")))

    def test_ranks_with_different_models_are_refused(self):
        other = os.path.join(self.tmp.name, "other")
        synth(config("v2-lite-greedy"), "bf16", 3, other)
        code, _, stderr, seconds = run(mpmd_command(self.logits_args(self.model), self.logits_args(other)),
                                       check=False, timeout=60)
        self.assertNotEqual(code, 0)
        self.assertLess(seconds, FAST)
        self.assertIn("differs between rank 0 and rank 1", stderr)

    def test_a_rank_killed_mid_run_ends_every_rank(self):
        command = mpirun_command(3, "generate", "--model", self.model, "--prompt-ids", "1,2,3", "--max-tokens", 30000,
                                 "--ignore-eos", "--print-ids")
        mpirun = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=MPI_ENV)
        try:
            deadline = time.monotonic() + 60
            while not select.select([mpirun.stdout], [], [], 0.05)[0]:  # generating: ids stream out
                self.assertIsNone(mpirun.poll(), "mpirun ended before generating")
                self.assertLess(time.monotonic(), deadline, "no token within 60 s")
            victim = rank_pid(mpirun.pid, 1)
            os.kill(victim, signal.SIGKILL)
            start = time.monotonic()
            code = mpirun.wait(FAST)
            self.assertLess(time.monotonic() - start, FAST)
            self.assertNotEqual(code, 0)
            stderr = mpirun.stderr.read().decode()
            self.assertIn("rank 1", stderr)  # mpirun names the rank that died
            self.assertIn("signal 9", stderr)
        finally:
            if mpirun.poll() is None:
                mpirun.kill()
                mpirun.wait()
            mpirun.stdout.close()
            mpirun.stderr.close()

    def test_serve_answers_from_rank_zero(self):
        directory = os.path.join(self.tmp.name, "serve")
        model = serve_harness.make_model(directory)
        prompt = "the quick brown fox"
        expected = run_megamoe("generate", "--model", model, "--prompt", prompt, "--max-tokens", 8, "--temperature", 0,
                               "--ignore-eos")
        # serve_harness.Server starts `megamoe_binary() serve ...`: make that mpirun with 2 ranks.
        wrapper = os.path.join(self.tmp.name, "megamoe-mpirun")
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\nexec " + " ".join(mpirun_command(2)) + ' "$@"\n')
        os.chmod(wrapper, 0o755)
        saved_binary, saved_env = serve_harness.megamoe_binary, dict(os.environ)
        serve_harness.megamoe_binary = lambda: wrapper
        os.environ.update(MPI_ENV)
        try:
            server = serve_harness.Server(model)
            try:
                answers = [server.complete(prompt=prompt, max_tokens=8, temperature=0, ignore_eos=True)
                           for _ in range(2)]  # the second reuses nothing but must match too
            finally:
                server.stop()
        finally:
            serve_harness.megamoe_binary = saved_binary
            os.environ.clear()
            os.environ.update(saved_env)
        for answer in answers:
            self.assertEqual(answer["choices"][0]["text"], expected.rstrip("\n"))


def rank_pid(mpirun_pid, rank):
    """The pid of rank `rank` among mpirun's children (Open MPI puts the rank in their environment)."""
    with open(f"/proc/{mpirun_pid}/task/{mpirun_pid}/children") as f:
        children = f.read().split()
    for child in children:
        with open(f"/proc/{child}/environ", "rb") as f:
            if f"OMPI_COMM_WORLD_RANK={rank}".encode() in f.read().split(b"\0"):
                return int(child)
    raise AssertionError(f"no rank {rank} among mpirun's children")


if __name__ == "__main__":
    unittest.main()
