"""Shared helpers of the model tests: running megamoe, the tiny configs, comparing logits, and
building DeepSeek-V2/V3 checkpoints independently of megamoe (names and shapes from docs/models.md)."""
import glob
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(TESTS_DIR, "configs")
REFERENCE_DIR = os.path.join(TESTS_DIR, "reference")
sys.path.insert(0, REFERENCE_DIR)  # the references import each other by plain module name

import expert_pools  # noqa: E402
import safetensors_np  # noqa: E402

V3_ARCHITECTURES = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")


# ---- the megamoe binary ----

def megamoe_binary():
    path = os.environ.get("MEGAMOE_BIN")
    if not path:
        raise unittest.SkipTest("MEGAMOE_BIN is not set")
    if not os.access(path, os.X_OK):
        raise AssertionError(f"MEGAMOE_BIN={path} is not an executable")
    return path


def run_megamoe(*args):
    """Runs `megamoe args...`; a failure reports the command and its stderr."""
    command = [megamoe_binary(), *[str(a) for a in args]]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited with {result.returncode}:\n"
                             f"{result.stderr.strip()}")
    return result.stdout


def synth(config_path, dtype, seed, output_dir, shards=None):
    args = ["synth", "--model-config", config_path, "--dtype", dtype, "--seed", seed,
            "--output", output_dir]
    if shards:
        args += ["--shards", shards]
    run_megamoe(*args)


def train_tokenizer(output_dir, text="/usr/share/common-licenses/GPL-3", vocab_size=600):
    """A byte-level BPE tokenizer of vocab_size tokens learnt from text, in output_dir."""
    run_megamoe("tokenizer", "train", "--vocab-size", vocab_size, "--input", text, "--output", output_dir)
    return output_dir


def synth_with_tokenizer(config_file, dtype, seed, output_dir, tokenizer_dir):
    """A checkpoint of config_file with random weights and the tokenizer of tokenizer_dir beside them,
    its vocab_size set to the tokenizer's."""
    config = load_json(config_file)
    with open(os.path.join(tokenizer_dir, "tokenizer.json")) as f:
        tokenizer = json.load(f)
    config["vocab_size"] = max([*tokenizer["model"]["vocab"].values(), *(t["id"] for t in tokenizer["added_tokens"])]) + 1
    with open(output_dir + ".config.json", "w") as f:
        json.dump(config, f)
    synth(output_dir + ".config.json", dtype, seed, output_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), output_dir)
    return config


def megamoe_logits(model_dir, tokens, output_path, *extra):
    run_megamoe("logits", "--model", model_dir, "--tokens", ",".join(map(str, tokens)),
                "--output", output_path, *extra)
    return np.load(output_path)


# ---- inputs and comparisons ----

def config_path(name):
    """tests/configs/<name>.json."""
    return os.path.join(CONFIG_DIR, name + ".json")


def read_raw(path):
    """(header dict, data bytes) of a safetensors file, parsed by hand."""
    with open(path, "rb") as f:
        blob = f.read()
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def write_raw(path, header, data):
    """A safetensors file from a header dict and data bytes, for malformed-input tests."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned, as writers do
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


class ScratchTestCase(unittest.TestCase):
    """A test class whose tests share one scratch directory (make_scratch in setUpClass): cls.path(name)."""

    @classmethod
    def make_scratch(cls, prefix):
        cls.tmp = tempfile.TemporaryDirectory(prefix=prefix)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)


def load_json(path):
    with open(path) as f:
        return json.load(f)


def tiny_v3_configs():
    """[(name, path)] of the tests/configs made for the DeepSeek-V2/V3 family."""
    paths = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.json")))
    return [(os.path.basename(p)[:-len(".json")], p) for p in paths
            if load_json(p).get("architectures", [None])[0] in V3_ARCHITECTURES]


def random_tokens(vocab_size, count, seed):
    rng = random.Random(seed)
    return [rng.randrange(vocab_size) for _ in range(count)]


def relative_max_error(actual, reference):
    """max|actual - reference| / max|reference|."""
    return float(np.abs(np.asarray(actual, np.float64) - reference).max() /
                 np.abs(reference).max())


# megamoe in exact numerics (fp32 activations) against a float64 reference: what every prompt must
# meet, relative to the largest reference logit.
EXACT_TOLERANCE = 1e-4
# The V4 round trips (FP8 keys, FP4 indexer) are discrete: a value the reference finds within 1e-6 of a
# rounding boundary (deepseek_v4.near_ties) may round the other way in fp32, and moves later logits by
# up to ~1e-3. Such prompts only need to stay within NEAR_TIE_TOLERANCE; at least MIN_CLEAN_PROMPTS
# prompts per model must have no near tie, so that the strict tolerance always applies somewhere.
NEAR_TIE_TOLERANCE = 1e-2
MIN_CLEAN_PROMPTS = 3
EXACT_PROMPT_SEEDS = (2, 0, 1, 6, 4, 9, 3, 5)


def assert_matches_reference_on_every_prompt(test, label, vocab_size, megamoe, reference, token_count=40):
    """megamoe(tokens) -> logits; reference(tokens) -> (logits, near_ties). Every prompt of
    EXACT_PROMPT_SEEDS is compared: within EXACT_TOLERANCE, or NEAR_TIE_TOLERANCE where the
    reference saw a near tie (and then at least MIN_CLEAN_PROMPTS prompts saw none)."""
    results = []
    for seed in EXACT_PROMPT_SEEDS:
        tokens = random_tokens(vocab_size, token_count, seed)
        expected, near_ties = reference(tokens)
        results.append((seed, relative_max_error(megamoe(tokens), expected), near_ties))
    clean = [error for _, error, ties in results if ties == 0]
    print(f"{label}: max|a-b| / max|ref| = {max(e for _, e, _ in results):.2e} over {len(results)} prompts "
          f"({len(clean)} without near ties: max {max(clean, default=0):.2e}; tolerance {EXACT_TOLERANCE:.0e})")
    for seed, error, ties in results:
        tolerance = NEAR_TIE_TOLERANCE if ties else EXACT_TOLERANCE
        test.assertLessEqual(error, tolerance, f"{label}: prompt {seed} ({ties} near ties): {results}")
    test.assertGreaterEqual(len(clean), MIN_CLEAN_PROMPTS, f"{label}: too few prompts without near ties: {results}")


def assert_logits_close(test, actual, reference, tolerance, label):
    test.assertEqual(actual.shape, reference.shape, f"{label}: logits shape")
    error = relative_max_error(actual, reference)
    print(f"{label}: max|a-b| / max|ref| = {error:.2e} (tolerance {tolerance:.0e})")
    test.assertLessEqual(error, tolerance, label)


# ---- DeepSeek-V2/V3 checkpoint layout (docs/models.md#1-checkpoints) ----

def v3_tensor_shapes(config):
    """{tensor name: shape} of a V2/V3 checkpoint without its MTP layer and FP8 scales; an
    expert pool's experts appear once, under the first layer of its group (docs/models.md#4-mega-moe-extensions)."""
    c = config
    owners = expert_pools.expert_owners(c)
    D, heads = c["hidden_size"], c["num_attention_heads"]
    dn, dr, dv, C = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]
    shapes = {"model.embed_tokens.weight": [c["vocab_size"], D], "model.norm.weight": [D],
              "lm_head.weight": [c["vocab_size"], D]}

    def mlp(prefix, width):
        shapes.update({prefix + "gate_proj.weight": [width, D], prefix + "up_proj.weight": [width, D],
                       prefix + "down_proj.weight": [D, width]})

    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes[p + "input_layernorm.weight"] = [D]
        shapes[p + "post_attention_layernorm.weight"] = [D]
        a = p + "self_attn."
        if c["q_lora_rank"] is None:
            shapes[a + "q_proj.weight"] = [heads * (dn + dr), D]
        else:
            shapes[a + "q_a_proj.weight"] = [c["q_lora_rank"], D]
            shapes[a + "q_a_layernorm.weight"] = [c["q_lora_rank"]]
            shapes[a + "q_b_proj.weight"] = [heads * (dn + dr), c["q_lora_rank"]]
        shapes[a + "kv_a_proj_with_mqa.weight"] = [C + dr, D]
        shapes[a + "kv_a_layernorm.weight"] = [C]
        shapes[a + "kv_b_proj.weight"] = [heads * (dn + dv), C]
        shapes[a + "o_proj.weight"] = [D, heads * dv]
        if layer not in owners:
            mlp(p + "mlp.", c["intermediate_size"])
            continue
        shapes[p + "mlp.gate.weight"] = [c["n_routed_experts"], D]
        if c["topk_method"] == "noaux_tc":
            shapes[p + "mlp.gate.e_score_correction_bias"] = [c["n_routed_experts"]]
        routed_layer, shared_layer = owners[layer]
        for expert in range(c["n_routed_experts"] if routed_layer == layer else 0):
            mlp(f"{p}mlp.experts.{expert}.", c["moe_intermediate_size"])
        if c["n_shared_experts"] and shared_layer == layer:
            mlp(p + "mlp.shared_experts.", c["n_shared_experts"] * c["moe_intermediate_size"])
    return shapes


def is_linear_weight(name):
    """Linear weights are the ones FP8 checkpoints quantize (the gate and lm_head stay BF16)."""
    return name.endswith("_proj.weight") or name.endswith("_proj_with_mqa.weight")


def stored_dtype(name, checkpoint_dtype):
    """The safetensors dtype of a tensor in an f32 | bf16 | fp8 checkpoint."""
    if checkpoint_dtype == "f32" or name.endswith("e_score_correction_bias"):
        return "F32"
    if checkpoint_dtype == "fp8" and is_linear_weight(name):
        return "F8_E4M3"
    return "BF16"


def random_v3_weights(config, seed):
    """{name: float32 array} with scales that keep activations of order one."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in v3_tensor_shapes(config).items():
        if name.endswith("norm.weight"):
            values = 1 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("e_score_correction_bias"):
            values = 0.05 * rng.standard_normal(shape)
        elif name == "model.embed_tokens.weight":
            values = rng.standard_normal(shape)
        else:
            values = rng.standard_normal(shape) / np.sqrt(shape[1])
        weights[name] = values.astype(np.float32)
    return weights


def write_v3_checkpoint(directory, config, weights, dtype, shards=1):
    """Writes config.json and the weights as f32 | bf16 | fp8 (128x128 blocks) safetensors,
    split round-robin over `shards` files with an index when there is more than one."""
    os.makedirs(directory, exist_ok=True)
    config = dict(config)
    if dtype == "fp8":
        config["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)] \
        if shards > 1 else ["model.safetensors"]
    contents = [{} for _ in files]
    for i, (name, values) in enumerate(weights.items()):
        tensors = contents[i % len(files)]
        kind = stored_dtype(name, dtype)
        if kind == "F8_E4M3":
            codes, scale_inv = safetensors_np.quantize_fp8_blocks(values)
            tensors[name] = ("F8_E4M3", codes)
            tensors[name + safetensors_np.SCALE_SUFFIX] = ("F32", scale_inv)
        elif kind == "BF16":
            tensors[name] = ("BF16", safetensors_np.encode_bf16(values))
        else:
            tensors[name] = ("F32", values)
    for file, tensors in zip(files, contents):
        safetensors_np.write_safetensors(os.path.join(directory, file), tensors,
                                         metadata={"format": "pt"})
    if shards > 1:
        weight_map = {n: file for file, tensors in zip(files, contents) for n in tensors}
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)


# ---- DeepSeek-V4 checkpoint layout (docs/models.md sections 1 and 3) ----

V4_ARCHITECTURES = ("DeepseekV4ForCausalLM",)


def tiny_v4_configs():
    """[(name, path)] of the tests/configs made for the DeepSeek-V4 family."""
    paths = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.json")))
    return [(os.path.basename(p)[:-len(".json")], p) for p in paths
            if load_json(p).get("architectures", [None])[0] in V4_ARCHITECTURES]


def v4_layer_shapes(config, prefix, ratio, hash_layer):
    """{name: shape} of one V4 block (a layer or an MTP module's block) under `prefix`."""
    c = config
    D, H, hd, M = c["hidden_size"], c["num_attention_heads"], c["head_dim"], c["hc_mult"]
    q_rank, G, R = c["q_lora_rank"], c["o_groups"], c["o_lora_rank"]
    E, I = c["n_routed_experts"], c["moe_intermediate_size"]
    shapes = {prefix + "attn_norm.weight": [D], prefix + "ffn_norm.weight": [D]}
    for sub in ("attn", "ffn"):
        shapes.update({f"{prefix}hc_{sub}_fn": [(2 + M) * M, M * D], f"{prefix}hc_{sub}_base": [(2 + M) * M],
                       f"{prefix}hc_{sub}_scale": [3]})
    a = prefix + "attn."
    shapes.update({a + "attn_sink": [H], a + "wq_a.weight": [q_rank, D], a + "q_norm.weight": [q_rank],
                   a + "wq_b.weight": [H * hd, q_rank], a + "wkv.weight": [hd, D], a + "kv_norm.weight": [hd],
                   a + "wo_a.weight": [G * R, H * hd // G], a + "wo_b.weight": [D, G * R]})

    def compressor(p, width, r):
        overlap = 2 if r == 4 else 1
        shapes.update({p + "wkv.weight": [overlap * width, D], p + "wgate.weight": [overlap * width, D],
                       p + "ape": [r, overlap * width], p + "norm.weight": [width]})

    if ratio:
        compressor(a + "compressor.", hd, ratio)
    if ratio == 4:
        nh, dI = c["index_n_heads"], c["index_head_dim"]
        shapes.update({a + "indexer.wq_b.weight": [nh * dI, q_rank], a + "indexer.weights_proj.weight": [nh, D]})
        compressor(a + "indexer.compressor.", dI, 4)
    f = prefix + "ffn."
    shapes[f + "gate.weight"] = [E, D]
    if hash_layer:
        shapes[f + "gate.tid2eid"] = [c["vocab_size"], c["num_experts_per_tok"]]
    else:
        shapes[f + "gate.bias"] = [E]

    def mlp(p, width):
        shapes.update({p + "w1.weight": [width, D], p + "w3.weight": [width, D], p + "w2.weight": [D, width]})

    for expert in range(E):
        mlp(f"{f}experts.{expert}.", I)
    if c.get("n_shared_experts"):
        mlp(f + "shared_experts.", c["n_shared_experts"] * I)
    return shapes


def v4_tensor_shapes(config):
    """{tensor name: shape} of a V4 checkpoint (MTP modules included), without weight scales."""
    c = config
    D, V, M, L = c["hidden_size"], c["vocab_size"], c["hc_mult"], c["num_hidden_layers"]
    shapes = {"embed.weight": [V, D], "head.weight": [V, D], "norm.weight": [D],
              "hc_head_fn": [M, M * D], "hc_head_base": [M], "hc_head_scale": [1]}
    for layer in range(L):
        shapes.update(v4_layer_shapes(c, f"layers.{layer}.", c["compress_ratios"][layer],
                                      layer < c["num_hash_layers"]))
    for i in range(c.get("num_nextn_predict_layers", 0)):
        p = f"mtp.{i}."
        shapes.update(v4_layer_shapes(c, p, c["compress_ratios"][L + i], False))
        shapes.update({p + "e_proj.weight": [D, D], p + "h_proj.weight": [D, D], p + "enorm.weight": [D],
                       p + "hnorm.weight": [D], p + "norm.weight": [D], p + "hc_head_fn": [M, M * D],
                       p + "hc_head_base": [M], p + "hc_head_scale": [1]})
    return shapes


def v4_stored_dtype(name, checkpoint_dtype):
    """The safetensors dtype of a tensor in a bf16 | fp8 (the official layout) V4 checkpoint."""
    f32_suffixes = ("attn_sink", "ape", "gate.bias", "_fn", "_base", "_scale")
    if name.endswith("tid2eid"):
        return "I32"
    if name.endswith(f32_suffixes):
        return "F32"
    if checkpoint_dtype == "fp8" and name.endswith(".weight"):
        if ".experts." in name:
            return "I8"  # FP4 e2m1 pairs
        unquantized = ("norm.weight", "embed.weight", "head.weight", "gate.weight", "compressor.wkv.weight",
                       "compressor.wgate.weight", "weights_proj.weight")
        if not name.endswith(unquantized):
            return "F8_E4M3"
    return "BF16"


def random_v4_weights(config, seed):
    """{name: float64 torch tensor (int64 for tid2eid)} keeping activations of order one."""
    import torch
    rng = np.random.default_rng(seed)
    weights = {}
    E, k = config["n_routed_experts"], config["num_experts_per_tok"]
    for name, shape in v4_tensor_shapes(config).items():
        if name.endswith("tid2eid"):
            values = np.stack([rng.permutation(E)[:k] for _ in range(shape[0])])
        elif name.endswith("norm.weight"):
            values = 1 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("gate.bias"):
            values = 0.05 * rng.standard_normal(shape)
        elif name.endswith(("_base", "_scale", "ape", "attn_sink")):
            values = 0.5 * rng.standard_normal(shape)
        elif name == "embed.weight":
            values = rng.standard_normal(shape)
        else:
            values = rng.standard_normal(shape) / np.sqrt(shape[1])
        weights[name] = torch.from_numpy(values)
    return weights
