"""megamoe's own q8_0 / q4_0 checkpoints (docs/quantization.md): `megamoe quantize` and
`megamoe synth --dtype q8_0|q4_0` against the PyTorch references, against each other and against
the unquantized model; bad input named in one line with nothing left behind.

The references read the U8 blocks with safetensors_np's dequantizer (written from llama.cpp's
block_q8_0 / block_q4_0). megamoe runs with --numerics exact (fp32 activations against the
dequantized weights) against the references on every prompt (harness.assert_matches_reference_on_every_prompt);
the fast default, which rounds the activations to q8_0 blocks for these weights, is held to a bound
against exact mode that a broken kernel cannot meet.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_quantize
"""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import numpy as np

import harness  # first: puts tests/reference on the path
import deepseek_v3
import deepseek_v4
import safetensors_np

# Every column count of these is a multiple of 32 but o_proj's and the experts' down_proj (48, 136)
# in the V3 one: those fall back to BF16.
CONFIGS = {"v3": "v3-no-qlora-no-shared", "v4": "v4-csa-hca"}
SEED = 7
TOKEN_COUNT = 40
REFERENCE_LOGITS = {"v3": lambda model, tokens: (deepseek_v3.logits(model, tokens), 0),
                    "v4": deepseek_v4.logits_and_near_ties}
# Fast against exact mode: the median position's max|fast - exact| / max|exact| (measured 7e-3 to 4e-2
# on these models, where rounded activations also change routing choices); a broken kernel is off by
# the size of the logits.
FAST_MEDIAN_POSITION_BOUND = 1e-1
# ||quantized - bf16|| / ||bf16|| on these random models, whose routing (and V4's FP8/FP4 round
# trips) turn small weight errors into discrete changes; V4's q8_0 is ~9e-2 in the PyTorch reference
# too (deepseek_v4.logits on the q8_0 and the bf16 checkpoints), not an error of megamoe's.
AGAINST_BF16_TOLERANCE = {"v3": {"q8_0": 5e-2, "q4_0": 5e-1}, "v4": {"q8_0": 1.5e-1, "q4_0": 5e-1}}


def config_path(family):
    return os.path.join(harness.CONFIG_DIR, CONFIGS[family] + ".json")


def run(*args):
    return subprocess.run([harness.megamoe_binary(), *map(str, args)], capture_output=True, text=True, timeout=300)


def quantize(model, dtype, output, *extra):
    return harness.run_megamoe("quantize", "--model", model, "--dtype", dtype, "--output", output, *extra)


def raw_tensors(model_dir):
    """{name: (dtype, shape, bytes)} of every tensor of a checkpoint."""
    checkpoint = safetensors_np.Checkpoint(model_dir)
    tensors = {}
    for name, (path, entry, data_offset) in checkpoint.entries.items():
        begin, end = entry["data_offsets"]
        with open(path, "rb") as f:
            f.seek(data_offset + begin)
            tensors[name] = (entry["dtype"], entry["shape"], f.read(end - begin))
    return tensors


class QuantizedModels(harness.ScratchTestCase):
    @classmethod
    def setUpClass(cls):
        cls.make_scratch("megamoe-quantize-")
        cls.models = {}
        for family in CONFIGS:
            for dtype in ("bf16", "fp8", "q8_0", "q4_0"):
                cls.models[family, dtype] = cls.path(f"{family}-{dtype}")
                harness.synth(config_path(family), dtype, SEED, cls.models[family, dtype])
            for source in ("bf16", "fp8"):
                for dtype in ("q8_0", "q4_0"):
                    cls.models[family, f"{dtype} of {source}"] = cls.path(f"{family}-{dtype}-of-{source}")
                    quantize(cls.models[family, source], dtype, cls.models[family, f"{dtype} of {source}"])
            cls.models[family, "fp8 of bf16"] = cls.path(f"{family}-fp8-of-bf16")
            quantize(cls.models[family, "bf16"], "fp8", cls.models[family, "fp8 of bf16"])

    def logits(self, model, tokens, numerics="exact"):
        return harness.megamoe_logits(model, tokens, self.path("logits.npy"), "--numerics", numerics)

    def check_against_reference(self, family):
        vocab = harness.load_json(config_path(family))["vocab_size"]
        for kind in ("q8_0", "q4_0", "q8_0 of fp8", "q4_0 of fp8", "fp8 of bf16"):
            with self.subTest(family=family, model=kind):
                model = self.models[family, kind]
                harness.assert_matches_reference_on_every_prompt(
                    self, f"{family} {kind}", vocab, lambda tokens: self.logits(model, tokens),
                    lambda tokens: REFERENCE_LOGITS[family](model, tokens), TOKEN_COUNT)

    def test_v3_logits_match_the_reference(self):
        self.check_against_reference("v3")

    def test_v4_logits_match_the_reference(self):
        self.check_against_reference("v4")

    def test_fast_numerics_stay_near_exact(self):
        for family in CONFIGS:
            vocab = harness.load_json(config_path(family))["vocab_size"]
            tokens = harness.random_tokens(vocab, TOKEN_COUNT, 2)
            for dtype in ("q8_0", "q4_0"):
                with self.subTest(family=family, dtype=dtype):
                    model = self.models[family, dtype]
                    exact = self.logits(model, tokens).astype(np.float64)
                    fast = self.logits(model, tokens, "fast")
                    per_position = np.abs(fast - exact).max(axis=1) / np.abs(exact).max()
                    print(f"{family} {dtype} fast against exact: median position {np.median(per_position):.1e}")
                    self.assertGreater(per_position.max(), 0, "fast mode should round the activations")
                    self.assertLessEqual(np.median(per_position), FAST_MEDIAN_POSITION_BOUND)

    def test_quantize_of_bf16_equals_synth(self):
        for family in CONFIGS:
            for dtype in ("q8_0", "q4_0"):
                with self.subTest(family=family, dtype=dtype):
                    synthesized = self.models[family, dtype]
                    quantized = self.models[family, f"{dtype} of bf16"]
                    self.assertEqual(raw_tensors(quantized), raw_tensors(synthesized))
                    self.assertEqual(harness.load_json(os.path.join(quantized, "config.json")),
                                     harness.load_json(os.path.join(synthesized, "config.json")))

    def test_fp8_is_the_official_layout(self):
        """quantize --dtype fp8 writes what synth --dtype fp8 writes (DeepSeek's names, dtypes, shapes and
        config), the values from the BF16 weights."""
        for family in CONFIGS:
            with self.subTest(family=family):
                quantized = raw_tensors(self.models[family, "fp8 of bf16"])
                official = raw_tensors(self.models[family, "fp8"])
                self.assertEqual({n: t[:2] for n, t in quantized.items()}, {n: t[:2] for n, t in official.items()})
                self.assertEqual(harness.load_json(os.path.join(self.models[family, "fp8 of bf16"], "config.json")),
                                 harness.load_json(os.path.join(self.models[family, "fp8"], "config.json")))

    def test_layout(self):
        """Blocks for the linear layers and experts (Q8_0 for the head), BF16 where the columns are
        not a multiple of 32, everything else as in the BF16 checkpoint."""
        for family in CONFIGS:
            for dtype in ("q8_0", "q4_0"):
                with self.subTest(family=family, dtype=dtype):
                    model = self.models[family, dtype]
                    config = harness.load_json(os.path.join(model, "config.json"))
                    self.assertEqual(config["quantization_config"],
                                     {"quant_method": "megamoe", "weight_format": dtype})
                    self.assertNotIn("expert_dtype", config)
                    bf16 = safetensors_np.Checkpoint(self.models[family, "bf16"])
                    quantized = safetensors_np.Checkpoint(model)
                    self.assertEqual(sorted(quantized.entries), sorted(bf16.entries))
                    blocked = 0
                    for name in bf16.entries:
                        shape = bf16.shape(name)
                        head = name in ("lm_head.weight", "head.weight")
                        official = (harness.stored_dtype(name, "fp8") if family == "v3"
                                    else harness.v4_stored_dtype(name, "fp8"))
                        if (official in ("F8_E4M3", "I8") or head) and shape[1] % 32 == 0:
                            size = 34 if dtype == "q8_0" or head else 18
                            self.assertEqual((quantized.dtype(name), quantized.shape(name)),
                                             ("U8", [shape[0], shape[1] // 32, size]), name)
                            blocked += 1
                        else:
                            self.assertEqual((quantized.dtype(name), quantized.shape(name)),
                                             (bf16.dtype(name), shape), name)
                    self.assertGreater(blocked, 10)

    def check_close_to_bf16(self, family):
        """||quantized - bf16|| / ||bf16|| over all logits; q4_0 must be clearly coarser than q8_0."""
        vocab = harness.load_json(config_path(family))["vocab_size"]
        tokens = harness.random_tokens(vocab, TOKEN_COUNT, 3)
        bf16 = self.logits(self.models[family, "bf16"], tokens).astype(np.float64)
        errors = {}
        for dtype in ("q8_0", "q4_0"):
            logits = self.logits(self.models[family, dtype], tokens)
            errors[dtype] = float(np.linalg.norm(logits - bf16) / np.linalg.norm(bf16))
            print(f"{family} {dtype} against bf16: ||a-b|| / ||bf16|| = {errors[dtype]:.2e} "
                  f"(tolerance {AGAINST_BF16_TOLERANCE[family][dtype]:.1e})")
        for dtype, error in errors.items():
            self.assertLessEqual(error, AGAINST_BF16_TOLERANCE[family][dtype], f"{family} {dtype}")
        self.assertLess(errors["q8_0"], errors["q4_0"] / 2, f"{family}: q4_0 should be much coarser")

    def test_v3_quantized_logits_are_close_to_bf16(self):
        self.check_close_to_bf16("v3")

    def test_v4_quantized_logits_are_close_to_bf16(self):
        self.check_close_to_bf16("v4")

    def test_inspect_counts_blocks(self):
        for family in CONFIGS:
            with self.subTest(family=family):
                summaries = {d: json.loads(harness.run_megamoe("inspect", self.models[family, d], "--json"))
                             for d in ("bf16", "q8_0", "q4_0")}
                for dtype in ("q8_0", "q4_0"):
                    stored = {}
                    for d, _, data in raw_tensors(self.models[family, dtype]).values():
                        stored[d] = stored.get(d, 0) + len(data)
                    counted = summaries[dtype]["bytes_by_dtype"]
                    self.assertNotIn("U8", counted)
                    self.assertEqual(sum(counted.values()), sum(stored.values()))
                    self.assertEqual(counted.get("Q8_0", 0) + counted.get("Q4_0", 0), stored["U8"])
                    self.assertGreater(counted["Q8_0"], 0)
                    self.assertEqual(dtype == "q4_0", "Q4_0" in counted)
                    self.assertEqual(summaries[dtype]["total_parameters"], summaries["bf16"]["total_parameters"])
                active = {d: s["active_weight_bytes_per_token"] for d, s in summaries.items()}
                self.assertLess(active["q4_0"], active["q8_0"])
                self.assertLess(active["q8_0"], active["bf16"])
                # A bare config.json with the megamoe quantization_config counts the same bytes.
                bare = json.loads(harness.run_megamoe("inspect", os.path.join(self.models[family, "q4_0"], "config.json"),
                                                      "--json"))
                self.assertEqual(bare["active_weight_bytes_per_token"], active["q4_0"])

    def test_generate_on_q4_0(self):
        for family in CONFIGS:
            with self.subTest(family=family):
                out = harness.run_megamoe("generate", "--model", self.models[family, "q4_0"], "--prompt-ids", "3,4,5",
                                          "--max-tokens", 4, "--print-ids", "--ignore-eos")
                self.assertEqual(len(out.split()), 4, out)

    def test_generate_and_bench_in_exact_numerics(self):
        """generate --numerics exact decodes greedily what exact logits pick; bench says which mode ran;
        an unknown mode is named."""
        model, prompt, steps = self.models["v4", "q4_0"], [3, 4, 5], 4
        out = harness.run_megamoe("generate", "--model", model, "--prompt-ids", ",".join(map(str, prompt)),
                                  "--max-tokens", steps, "--print-ids", "--ignore-eos", "--numerics", "exact")
        sequence = list(prompt)
        for _ in range(steps):
            sequence.append(int(self.logits(model, sequence)[-1].argmax()))
        self.assertEqual([int(t) for t in out.split()], sequence[len(prompt):])
        for numerics in ("exact", "fast"):
            result = json.loads(harness.run_megamoe("bench", "--model", model, "--prompt-tokens", 8, "--gen-tokens", 4,
                                                    "--runs", 1, "--json", "--numerics", numerics))
            self.assertEqual(result["numerics"], numerics)
        for args in (("generate", "--prompt-ids", "3,4"), ("bench",), ("logits", "--tokens", "3,4", "--output",
                                                                       self.path("never.npy"))):
            result = run(*args, "--model", model, "--numerics", "precise")
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertEqual(result.stderr.strip(), "megamoe: error: --numerics: 'precise' is not a numerics mode "
                                                    "(exact or fast)")
        self.assertFalse(os.path.exists(self.path("never.npy")))

    def test_shards(self):
        sharded = self.path("sharded-bf16")
        harness.synth(config_path("v3"), "bf16", SEED, sharded, shards=3)
        like_input, by_size = self.path("sharded-q8_0"), self.path("sized-q8_0")
        quantize(sharded, "q8_0", like_input)
        quantize(self.models["v3", "bf16"], "q8_0", by_size, "--shard-size", 100000)
        for model, files in ((like_input, 3), (by_size, None)):
            index = harness.load_json(os.path.join(model, "model.safetensors.index.json"))
            written = sorted(set(index["weight_map"].values()))
            if files:
                self.assertEqual(len(written), files)
            else:
                self.assertGreater(len(written), 3)
            self.assertEqual(raw_tensors(model), raw_tensors(self.models["v3", "q8_0 of bf16"]))


class QuantizeBadInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-quantize-errors-")
        cls.good = os.path.join(cls.tmp.name, "good")
        harness.synth(config_path("v3"), "q8_0", 1, cls.good)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        self.dir = tempfile.mkdtemp(dir=self.tmp.name)
        self.model = os.path.join(self.dir, "model")
        shutil.copytree(self.good, self.model)

    def expect_failure(self, args, *fragments):
        result = run(*args)
        self.assertEqual(result.returncode, 1, f"{args}: exit {result.returncode}, stderr: {result.stderr}")
        message = result.stderr.strip()
        self.assertEqual(len(message.splitlines()), 1, f"one line expected, got: {message}")
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertEqual(sorted(os.listdir(self.dir)), ["model"], "no output, not even a temporary file")

    def logits_args(self):
        return ["logits", "--model", self.model, "--tokens", "1,2,3", "--output", os.path.join(self.dir, "out.npy")]

    def quantize_args(self, dtype="q4_0"):
        return ["quantize", "--model", self.model, "--dtype", dtype, "--output", os.path.join(self.dir, "out")]

    def edit_config(self, edit):
        path = os.path.join(self.model, "config.json")
        config = harness.load_json(path)
        edit(config)
        with open(path, "w") as f:
            json.dump(config, f)

    def test_misshaped_blocks(self):
        name = "model.layers.0.mlp.experts.0.gate_proj.weight"  # [136, 96]: 3 blocks of 34 bytes a row
        path = os.path.join(self.model, "model.safetensors")
        header, _, _ = safetensors_np.read_header(path)
        self.assertEqual(header[name]["shape"], [136, 3, 34])
        with open(path, "rb") as f:
            blob = bytearray(f.read())
        old = b'"shape":[136,3,34]'
        position = blob.find(old, blob.find(name.encode()))
        blob[position:position + len(old)] = b'"shape":[136,6,17]'
        with open(path, "wb") as f:
            f.write(blob)
        for args in (self.logits_args(), self.quantize_args()):
            self.expect_failure(args, name, "[136, 6, 17]", "[136, 3, 34]")

    def test_q4_0_blocks_in_a_q8_0_checkpoint(self):
        self.edit_config(lambda c: c["quantization_config"].update(weight_format="q4_0"))
        self.expect_failure(self.logits_args(), "model.layers.0.self_attn.q_proj.weight", "3, 18]")

    def test_unknown_weight_format(self):
        self.edit_config(lambda c: c["quantization_config"].update(weight_format="q5_k"))
        for args in (self.logits_args(), self.quantize_args()):
            self.expect_failure(args, "config.json", "weight_format", "q5_k")

    def test_blocks_without_megamoe_config(self):
        self.edit_config(lambda c: c.pop("quantization_config"))
        self.expect_failure(self.logits_args(), "model.layers.0.self_attn.q_proj.weight", "U8")

    def test_nonsense_dtype(self):
        self.expect_failure(self.quantize_args("nonsense"), "--dtype", "nonsense")

    def test_output_exists(self):
        os.mkdir(os.path.join(self.dir, "out"))
        result = run(*self.quantize_args())
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("already exists", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1)
        self.assertEqual(os.listdir(os.path.join(self.dir, "out")), [])

    def test_missing_tensor_fails_before_writing(self):
        os.remove(os.path.join(self.model, "model.safetensors"))
        harness.synth(config_path("v4"), "bf16", 1, os.path.join(self.dir, "v4"))
        shutil.move(os.path.join(self.dir, "v4", "model.safetensors"), os.path.join(self.model, "model.safetensors"))
        shutil.rmtree(os.path.join(self.dir, "v4"))
        self.expect_failure(self.quantize_args(), "missing tensor", "model.embed_tokens.weight")


if __name__ == "__main__":
    unittest.main()
