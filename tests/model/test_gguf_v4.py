"""DeepSeek-V4 in llama.cpp's GGUF files (architecture deepseek4). A synthetic V4 checkpoint (FP8
matrices, FP4 experts, hash and compressed layers, hyper-connections) is converted here as
llama.cpp's converter (conversion/deepseek.py) converts the official ones: its names, MXFP4 experts
(the FP4 codes and exponents rearranged), FP8 matrices dequantized and requantized to Q8_0, BF16
kept, vectors in F32, MTP dropped. megamoe then runs the file exactly as it runs the checkpoint
with those matrices replaced by their Q8_0 values, and within the requantization's error of the
checkpoint itself.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe /usr/bin/python3 -m unittest -v test_gguf_v4
"""
import json
import os
import shutil
import subprocess
import sys
import unittest

import numpy as np

import harness
from test_gguf_inspect import ARRAY, STRING, U32
from test_gguf_model import BOOL, F32, I32, read_gguf, write_gguf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reference"))
import safetensors_np  # noqa: E402

TOKENS = [5, 17, 300, 2, 99, 410, 23, 64, 7, 150, 33, 12]
GGML_F32, GGML_BF16, GGML_Q8_0, GGML_I32, GGML_MXFP4 = 0, 30, 8, 26, 39

MODEL_NAMES = {"embed.weight": "token_embd.weight", "norm.weight": "output_norm.weight", "head.weight": "output.weight",
               "hc_head_fn": "output_hc_fn.weight", "hc_head_base": "output_hc_base.weight",
               "hc_head_scale": "output_hc_scale.weight"}
LAYER_NAMES = {
    "attn_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
    "hc_attn_fn": "hc_attn_fn.weight", "hc_attn_base": "hc_attn_base.weight", "hc_attn_scale": "hc_attn_scale.weight",
    "hc_ffn_fn": "hc_ffn_fn.weight", "hc_ffn_base": "hc_ffn_base.weight", "hc_ffn_scale": "hc_ffn_scale.weight",
    "attn.attn_sink": "attn_sinks.weight", "attn.wq_a.weight": "attn_q_a.weight", "attn.q_norm.weight":
    "attn_q_a_norm.weight", "attn.wq_b.weight": "attn_q_b.weight", "attn.wkv.weight": "attn_kv.weight",
    "attn.kv_norm.weight": "attn_kv_a_norm.weight", "attn.wo_a.weight": "attn_output_a.weight",
    "attn.wo_b.weight": "attn_output_b.weight",
    "attn.compressor.wkv.weight": "attn_compressor_kv.weight", "attn.compressor.wgate.weight":
    "attn_compressor_gate.weight", "attn.compressor.ape": "attn_compressor_ape.weight",
    "attn.compressor.norm.weight": "attn_compressor_norm.weight",
    "attn.indexer.wq_b.weight": "indexer.attn_q_b.weight", "attn.indexer.weights_proj.weight": "indexer.proj.weight",
    "attn.indexer.compressor.wkv.weight": "indexer_compressor_kv.weight",
    "attn.indexer.compressor.wgate.weight": "indexer_compressor_gate.weight",
    "attn.indexer.compressor.ape": "indexer_compressor_ape.weight",
    "attn.indexer.compressor.norm.weight": "indexer_compressor_norm.weight",
    "ffn.gate.weight": "ffn_gate_inp.weight", "ffn.gate.bias": "exp_probs_b.bias",
    "ffn.gate.tid2eid": "ffn_gate_tid2eid.weight", "ffn.shared_experts.w1.weight": "ffn_gate_shexp.weight",
    "ffn.shared_experts.w3.weight": "ffn_up_shexp.weight", "ffn.shared_experts.w2.weight": "ffn_down_shexp.weight"}
EXPERT_NAMES = {"w1": "ffn_gate_exps.weight", "w3": "ffn_up_exps.weight", "w2": "ffn_down_exps.weight"}


def q8_0(values):
    """ggml's Q8_0 (quantize_row_q8_0_ref) of a float32 matrix [rows, cols]: bytes [rows, cols/32*34]
    and the values they hold."""
    rows, cols = values.shape
    blocks = values.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inverse = np.where(d == 0, np.float32(0), np.float32(1) / d)
    scaled = blocks * inverse
    codes = (np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))).astype(np.int8)
    d16 = d.astype(np.float16)
    data = np.concatenate([d16.view(np.uint8), codes.view(np.uint8)], axis=1).reshape(rows, -1)
    return data, (codes.astype(np.float32) * d16.astype(np.float32)).reshape(rows, cols)


def mxfp4(packed, scales):
    """MXFP4 blocks [rows, cols/32*17] from V4's FP4: codes two per byte (element 2j low) and a ue8m0
    exponent per 32. Each block: the exponent, then byte j = code j | code j+16 << 4."""
    rows = packed.shape[0]
    raw = packed.view(np.uint8)
    scales = scales.view(np.uint8)
    codes = np.stack([raw & 15, raw >> 4], axis=-1).reshape(rows, -1, 32)
    qs = codes[..., :16] | (codes[..., 16:] << 4)
    return np.concatenate([scales.reshape(rows, -1, 1), qs], axis=2).reshape(rows, -1)


def stored_bytes(ckpt, name):
    """A tensor's bytes as the checkpoint stores them."""
    path, entry, offset = ckpt.entries[name]
    begin, end = entry["data_offsets"]
    return np.fromfile(path, dtype=np.uint8, count=end - begin, offset=offset + begin)


def convert(model_dir, output, tokenizer_metadata):
    """model_dir's V4 checkpoint as llama.cpp's converter writes it; returns {checkpoint name: the
    float32 values a Q8_0 tensor holds} for the FP8 matrices it requantized."""
    ckpt = safetensors_np.Checkpoint(model_dir)
    c = ckpt.config
    L, E = c["num_hidden_layers"], c["n_routed_experts"]
    arch = "deepseek4"
    metadata = [("general.architecture", STRING, arch)]

    def kv(key, kind, value):
        metadata.append((f"{arch}.{key}", kind, value))
    kv("block_count", U32, L)
    kv("context_length", U32, c["max_position_embeddings"])
    kv("embedding_length", U32, c["hidden_size"])
    kv("attention.head_count", U32, c["num_attention_heads"])
    kv("attention.head_count_kv", U32, c["num_key_value_heads"])
    kv("rope.freq_base", F32, c["rope_theta"])
    kv("attention.layer_norm_rms_epsilon", F32, c["rms_norm_eps"])
    kv("expert_count", U32, E)
    kv("expert_used_count", U32, c["num_experts_per_tok"])
    kv("expert_gating_func", U32, 4)
    kv("attention.key_length", U32, c["head_dim"])
    kv("attention.value_length", U32, c["head_dim"])
    if c.get("rope_scaling"):
        r = c["rope_scaling"]
        kv("rope.scaling.type", STRING, "yarn")
        kv("rope.scaling.factor", F32, r["factor"])
        kv("rope.scaling.original_context_length", U32, r["original_max_position_embeddings"])
        kv("rope.scaling.yarn_beta_fast", F32, r["beta_fast"])
        kv("rope.scaling.yarn_beta_slow", F32, r["beta_slow"])
    kv("rope.dimension_count", U32, c["qk_rope_head_dim"])
    kv("attention.q_lora_rank", U32, c["q_lora_rank"])
    kv("attention.sliding_window", U32, c["sliding_window"])
    kv("expert_feed_forward_length", U32, c["moe_intermediate_size"])
    kv("expert_shared_count", U32, c["n_shared_experts"])
    kv("expert_weights_scale", F32, c["routed_scaling_factor"])
    kv("expert_weights_norm", BOOL, c["norm_topk_prob"])
    kv("swiglu_clamp_exp", ARRAY, (F32, [float(c["swiglu_limit"])] * L))
    kv("swiglu_clamp_shexp", ARRAY, (F32, [float(c["swiglu_limit"])] * L))
    kv("attention.indexer.head_count", U32, c["index_n_heads"])
    kv("attention.indexer.key_length", U32, c["index_head_dim"])
    kv("attention.indexer.top_k", U32, c["index_topk"])
    kv("attention.output_group_count", U32, c["o_groups"])
    kv("attention.output_lora_rank", U32, c["o_lora_rank"])
    kv("attention.compress_ratios", ARRAY, (I32, c["compress_ratios"]))  # verbatim, MTP entries too
    kv("attention.compress_rope_freq_base", F32, c["compress_rope_theta"])
    kv("hyper_connection.count", U32, c["hc_mult"])
    kv("hyper_connection.sinkhorn_iterations", U32, c["hc_sinkhorn_iters"])
    kv("hyper_connection.epsilon", F32, c["hc_eps"])
    kv("hash_layer_count", U32, c["num_hash_layers"])
    kv("embedding_length_out", U32, c["hidden_size"] * c["hc_mult"])
    metadata += tokenizer_metadata

    tensors, requantized = [], {}
    for name in sorted(ckpt.entries):
        if name.startswith("mtp.") or name.endswith(".scale") and ckpt.dtype(name) == "F8_E8M0":
            continue  # MTP is dropped; scales go with their weights
        if name.startswith("layers."):
            layer, rest = name[len("layers."):].split(".", 1)
            if ".experts." in rest:
                continue  # stacked below
            gguf = f"blk.{layer}.{LAYER_NAMES[rest]}"
        else:
            gguf = MODEL_NAMES[name]
        dtype, shape = ckpt.dtype(name), ckpt.shape(name)
        if dtype == "F8_E4M3":
            data, values = q8_0(ckpt.tensor(name).numpy())
            requantized[name] = values
            tensors.append((gguf, GGML_Q8_0, shape, data.tobytes()))
        elif dtype in ("I32", "I64"):
            tensors.append((gguf, GGML_I32, shape, ckpt.array(name).astype("<i4").tobytes()))
        elif dtype == "BF16" and len(shape) >= 2:
            tensors.append((gguf, GGML_BF16, shape, stored_bytes(ckpt, name).tobytes()))
        else:
            tensors.append((gguf, GGML_F32, shape, ckpt.tensor(name).numpy().astype("<f4").tobytes()))
    for layer in range(L):
        for proj, gguf in EXPERT_NAMES.items():
            rows, packed_cols = ckpt.shape(f"layers.{layer}.ffn.experts.0.{proj}.weight")
            blocks = [mxfp4(stored_bytes(ckpt, f"layers.{layer}.ffn.experts.{e}.{proj}.weight").reshape(rows, -1),
                            stored_bytes(ckpt, f"layers.{layer}.ffn.experts.{e}.{proj}.scale")) for e in range(E)]
            tensors.append((f"blk.{layer}.{gguf}", GGML_MXFP4, [E, rows, 2 * packed_cols],
                            np.stack(blocks).tobytes()))
    write_gguf(output, metadata, tensors)
    return requantized


class GgufV4(harness.ScratchTestCase):
    @classmethod
    def setUpClass(cls):
        cls.make_scratch("megamoe-gguf-v4-")
        tokenizer = harness.train_tokenizer(cls.path("tokenizer"))
        cls.model = cls.path("v4")
        harness.synth_with_tokenizer(harness.config_path("v4-csa-hca"), "fp8", 3, cls.model, tokenizer)
        # The tokenizer's keys as megamoe writes them for a deepseek2 file (they do not depend on the
        # architecture).
        v3 = cls.path("v3")
        harness.synth_with_tokenizer(harness.config_path("v3-noaux-yarn"), "bf16", 1, v3, tokenizer)
        harness.run_megamoe("export-gguf", "--model", v3, "--output", cls.path("v3.gguf"))
        metadata, _ = read_gguf(cls.path("v3.gguf"))
        cls.gguf = cls.path("v4.gguf")
        cls.requantized = convert(cls.model, cls.gguf, [m for m in metadata if m[0].startswith("tokenizer.")])

    def logits(self, model, name):
        return harness.megamoe_logits(model, TOKENS, self.path(name), "--numerics", "exact")

    def test_runs_as_the_checkpoint_with_its_matrices_in_q8_0(self):
        # The checkpoint with each FP8 matrix replaced by the F32 values of its Q8_0 copy.
        same = self.path("v4-q8-values")
        shutil.copytree(self.model, same)
        header, data = harness.read_raw(os.path.join(same, "model.safetensors"))
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            raw = np.frombuffer(data[begin:end], dtype=np.uint8)
            if name in self.requantized:
                tensors[name] = ("F32", self.requantized[name])
            elif not (name.endswith(".scale") and name[:-len(".scale")] + ".weight" in self.requantized):
                tensors[name] = (entry["dtype"], raw.view(safetensors_np.STORAGE_TYPE[entry["dtype"]])
                                 .reshape(entry["shape"]))
        safetensors_np.write_safetensors(os.path.join(same, "model.safetensors"), tensors)
        with open(os.path.join(same, "config.json")) as f:
            config = json.load(f)
        config.pop("quantization_config", None)
        with open(os.path.join(same, "config.json"), "w") as f:
            json.dump(config, f)
        from_gguf, expected = self.logits(self.gguf, "gguf.npy"), self.logits(same, "same.npy")
        harness.assert_logits_close(self, from_gguf, expected, 1e-5, "deepseek4 GGUF vs Q8_0-valued checkpoint")
        # The requantization moves every FP8 weight by up to half a Q8_0 step: logits stay close.
        harness.assert_logits_close(self, from_gguf, self.logits(self.model, "ckpt.npy"), 5e-2,
                                    "deepseek4 GGUF vs the FP8 checkpoint")

    def test_inspect_and_generate_read_the_file(self):
        shown = harness.run_megamoe("inspect", self.gguf)
        self.assertIn("DeepseekV4ForCausalLM", shown)
        self.assertIn("MXFP4", shown)
        text = harness.run_megamoe("generate", "--model", self.gguf, "--prompt", "the quick", "--max-tokens", 4,
                                   "--ignore-eos", "--print-ids")
        self.assertEqual(len(text.split()), 4)

    def test_mtp_alone_and_other_gating_are_refused(self):
        metadata, tensors = read_gguf(self.gguf)
        cases = {
            "gating": ([(k, t, 2 if k == "deepseek4.expert_gating_func" else v) for k, t, v in metadata], tensors,
                       "expert_gating_func is 2"),
            "mtp-only": (metadata + [("deepseek4.nextn_predict_layers", U32, 1)],
                         [t for t in tensors if not t[0].startswith("blk.0.")], "MTP module alone"),
        }
        for label, (keys, kept, message) in cases.items():
            with self.subTest(label):
                path = self.path(f"bad-{label}.gguf")
                write_gguf(path, keys, kept)
                result = subprocess.run([harness.megamoe_binary(), "logits", "--model", path, "--tokens", "1,2",
                                         "--output", self.path("bad.npy")], capture_output=True, text=True)
                self.assertEqual(result.returncode, 1, result.stderr)
                self.assertIn(message, result.stderr)
                self.assertFalse(os.path.exists(self.path("bad.npy")))


if __name__ == "__main__":
    unittest.main()
