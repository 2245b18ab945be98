"""DeepSeek-V2/V3 GGUF files as models (docs/gguf.md#deepseek2): `megamoe export-gguf` of a checkpoint
runs in every command that takes --model with the directory's logits bit for bit (f32), and files
taken apart and put together again here, by a reader and writer independent of the C++, test what
llama.cpp's own files do that megamoe's exports do not: the joined attn_kv_b of older files and
their per-head key_length, split files, a llama.cpp block format (Q5_0) in place of q8_0; and bad
files fail with one line naming the file and the tensor or key at fault.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_gguf_model
"""
import json
import os
import struct
import subprocess
import unittest

import numpy as np

import harness
from test_gguf_inspect import ARRAY, STRING, U32, gguf_string

TRAINING_TEXT = "/usr/share/common-licenses/GPL-3"
TOKENS = [5, 17, 300, 2, 99, 410, 23, 64, 7]
U16, BOOL, I32, F32 = 2, 7, 5, 6
F32_TENSOR, Q5_0, IQ2_XXS = 0, 6, 16
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", 10: "<Q", 11: "<q",
           12: "<d"}


def read_gguf(path):
    """[(key, type, value)] (arrays: (element type, [values])), [(name, ggml type, shape outermost first, bytes)]."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 4

    def take(fmt):
        nonlocal pos
        value = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value[0]

    def string():
        nonlocal pos
        n = take("<Q")
        pos += n
        return data[pos - n:pos].decode()

    def value(kind):
        return string() if kind == STRING else take(SCALARS[kind])

    version, n_tensors, n_keys = take("<I"), take("<Q"), take("<Q")
    assert version == 3
    metadata = []
    for _ in range(n_keys):
        key, kind = string(), take("<I")
        if kind == ARRAY:
            element, n = take("<I"), take("<Q")
            metadata.append((key, ARRAY, (element, [value(element) for _ in range(n)])))
        else:
            metadata.append((key, kind, value(kind)))
    infos = []
    for _ in range(n_tensors):
        name, dims = string(), take("<I")
        shape = [take("<q") for _ in range(dims)][::-1]
        infos.append((name, take("<I"), shape, take("<Q")))
    start = pos + (-pos % 32)
    ends = [offset for _, _, _, offset in infos[1:]] + [len(data) - start]
    return metadata, [(name, kind, shape, data[start + offset:start + end])
                      for (name, kind, shape, offset), end in zip(infos, ends)]


def write_gguf(path, metadata, tensors):
    """As read_gguf returns them; tensor bytes are written as given (padded to 32)."""
    def value(kind, v):
        return gguf_string(v) if kind == STRING else struct.pack(SCALARS[kind], v)

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, kind, v in metadata:
        out += gguf_string(key) + struct.pack("<I", kind)
        if kind == ARRAY:
            element, values = v
            out += struct.pack("<IQ", element, len(values)) + b"".join(value(element, x) for x in values)
        else:
            out += value(kind, v)
    blobs = b""
    for name, kind, shape, data in tensors:
        out += gguf_string(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<q", d) for d in reversed(shape)) + struct.pack("<IQ", kind, len(blobs))
        blobs += data + b"\0" * (-len(data) % 32)
    with open(path, "wb") as f:
        f.write(out + b"\0" * (-len(out) % 32) + blobs)


def quantize_q5_0(rows):
    """ggml's Q5_0 (quantize_row_q5_0_ref): per 32 values d = max/-16 by magnitude, q = x/d + 16.5
    truncated to [0, 31], low nibbles of q[j] and q[j+16] in byte j, fifth bits in a u32."""
    out = b""
    for block in rows.reshape(-1, 32).astype(np.float32):
        m = block[np.argmax(np.abs(block))]
        d = np.float32(m / -16)
        inv = np.float32(1 / d) if d else np.float32(0)
        q = np.minimum(31, (block * inv + np.float32(16.5)).astype(np.int8)).astype(np.uint8)
        high = sum(int((q[j] >> 4) & 1) << j for j in range(32))
        low = bytes(int(q[j] & 15) | int(q[j + 16] & 15) << 4 for j in range(16))
        out += np.float16(d).tobytes() + struct.pack("<I", high) + low
    return out


def dequantize_q5_0(data, n):
    values = []
    for b in range(n // 32):
        block = data[22 * b:22 * b + 22]
        d = float(np.frombuffer(block[:2], np.float16)[0])
        high = struct.unpack("<I", block[2:6])[0]
        q = [0] * 32
        for j in range(16):
            q[j] = (block[6 + j] & 15) | ((high >> j) & 1) << 4
            q[j + 16] = (block[6 + j] >> 4) | ((high >> (j + 16)) & 1) << 4
        values += [d * (x - 16) for x in q]
    return np.array(values, np.float32)


class GgufModel(harness.ScratchTestCase):
    @classmethod
    def setUpClass(cls):
        cls.make_scratch("megamoe-gguf-model-")
        tokenizer = harness.train_tokenizer(cls.path("tokenizer"), TRAINING_TEXT, 600)
        cls.model = cls.path("model")
        config = harness.synth_with_tokenizer(harness.config_path("v3-noaux-yarn"), "bf16", 3, cls.model, tokenizer)
        cls.gguf = cls.path("model.gguf")
        harness.run_megamoe("export-gguf", "--model", cls.model, "--output", cls.gguf, "--dtype", "f32")
        cls.config = config
        cls.reference = harness.megamoe_logits(cls.model, TOKENS, cls.path("reference.npy"), "--numerics", "exact")

    def logits(self, model):
        return harness.megamoe_logits(model, TOKENS, self.path("logits.npy"), "--numerics", "exact")

    def megamoe(self, *args):
        return subprocess.run([harness.megamoe_binary(), *map(str, args)], capture_output=True, text=True, timeout=120)

    def test_export_is_the_checkpoint(self):
        np.testing.assert_array_equal(self.logits(self.gguf), self.reference)
        # Token by token through the cache, and under a memory budget that streams the experts from the file.
        chunked = harness.megamoe_logits(self.gguf, TOKENS, self.path("chunked.npy"), "--numerics", "exact",
                                         "--chunk-size", 1)
        np.testing.assert_array_equal(chunked, self.reference)
        streamed = harness.megamoe_logits(self.gguf, TOKENS, self.path("streamed.npy"), "--numerics", "exact",
                                          "--memory-budget", "40MiB")
        np.testing.assert_array_equal(streamed, self.reference)
        summary = json.loads(harness.run_megamoe("inspect", self.gguf, "--json"))
        direct = json.loads(harness.run_megamoe("inspect", self.model, "--json"))
        for key in ("total_parameters", "active_parameters", "kv_cache_bytes_per_token"):
            self.assertEqual(summary[key], direct[key], key)
        self.assertEqual(summary["gguf"]["architecture"], "deepseek2")
        for command in (["generate", "--prompt", "Free software", "--max-tokens", 4, "--temperature", 0],
                        ["perplexity", "--text", TRAINING_TEXT, "--context", 64, "--json"]):
            with self.subTest(command=command[0]):
                from_file = self.megamoe(command[0], "--model", self.gguf, *command[1:])
                from_dir = self.megamoe(command[0], "--model", self.model, *command[1:])
                self.assertEqual(from_file.returncode, 0, from_file.stderr)
                self.assertEqual(from_file.stdout.split("\n")[0], from_dir.stdout.split("\n")[0])

    def test_quantize_reads_gguf(self):
        # A GGUF file becomes megamoe's q8_0 checkpoint, with its tokenizer: the same as from the directory.
        for source, name in ((self.gguf, "q8-from-gguf"), (self.model, "q8-from-dir")):
            harness.run_megamoe("quantize", "--model", source, "--dtype", "q8_0", "--output", self.path(name))
        np.testing.assert_array_equal(self.logits(self.path("q8-from-gguf")), self.logits(self.path("q8-from-dir")))
        text = "Free software is a matter of liberty"
        ids = [subprocess.run([harness.megamoe_binary(), "tokenize", "--tokenizer", self.path(name)], input=text,
                              capture_output=True, text=True, check=True).stdout for name in ("q8-from-gguf", "q8-from-dir")]
        self.assertEqual(ids[0], ids[1])
        self.assertGreater(len(ids[0].split()), 3)

    def test_older_files_and_other_layouts(self):
        metadata, tensors = read_gguf(self.gguf)
        c = self.config
        H, C, dn, dv = c["num_attention_heads"], c["kv_lora_rank"], c["qk_nope_head_dim"], c["v_head_dim"]
        by_name = {name: (kind, shape, data) for name, kind, shape, data in tensors}

        # An older file: kv_b joined again, per-head widths in key_length / value_length, no _mla keys.
        old_tensors = []
        for name, kind, shape, data in tensors:
            if name.endswith("attn_v_b.weight"):
                continue
            if name.endswith("attn_k_b.weight"):
                k_b = np.frombuffer(data, np.float32).reshape(H, C, dn)
                v_b = np.frombuffer(by_name[name.replace("k_b", "v_b")][2], np.float32).reshape(H, dv, C)
                kv_b = np.concatenate([k_b.transpose(0, 2, 1), v_b], axis=1).reshape(H * (dn + dv), C)
                old_tensors.append((name.replace("attn_k_b", "attn_kv_b"), F32_TENSOR, [H * (dn + dv), C],
                                    kv_b.astype(np.float32).tobytes()))
                continue
            old_tensors.append((name, kind, shape, data))
        widths = {"deepseek2.attention.key_length": c["qk_nope_head_dim"] + c["qk_rope_head_dim"],
                  "deepseek2.attention.value_length": dv}
        old_metadata = [(k, t, widths.get(k, v)) for k, t, v in metadata if not k.endswith("_mla")]
        write_gguf(self.path("old.gguf"), old_metadata, old_tensors)
        np.testing.assert_array_equal(self.logits(self.path("old.gguf")), self.reference)

        # Split in two by gguf-split's rules: the second part holds the later tensors.
        half = len(tensors) // 2
        for no, part in ((0, tensors[:half]), (1, tensors[half:])):
            keys = [("split.no", U16, no), ("split.count", U16, 2), ("split.tensors.count", I32, len(tensors))]
            write_gguf(self.path(f"split-{no + 1:05d}-of-00002.gguf"), (metadata if no == 0 else []) + keys, part)
        np.testing.assert_array_equal(self.logits(self.path("split-00002-of-00002.gguf")), self.reference)

        # Every matrix whose rows are whole 32-blocks in Q5_0, as llama.cpp's Q4_K files store rows that
        # are not whole 256-blocks (attn_k_b / attn_v_b among them): against the file with those very values.
        q5_tensors, q5_values = [], {}
        for name, kind, shape, data in tensors:
            if len(shape) > 1 and shape[-1] % 32 == 0 and name != "token_embd.weight":
                values = np.frombuffer(data, np.float32)
                packed = quantize_q5_0(values)
                q5_values[name] = dequantize_q5_0(packed, values.size).reshape(shape)
                q5_tensors.append((name, Q5_0, shape, packed))
            else:
                q5_tensors.append((name, kind, shape, data))
        self.assertGreater(len(q5_values), 4)
        write_gguf(self.path("q5.gguf"), metadata, q5_tensors)
        q5_f32 = [(name, F32_TENSOR, shape, q5_values[name].tobytes()) if name in q5_values else (name, k, shape, d)
                  for name, k, shape, d in tensors]
        write_gguf(self.path("q5-values.gguf"), metadata, q5_f32)
        np.testing.assert_allclose(self.logits(self.path("q5.gguf")), self.logits(self.path("q5-values.gguf")),
                                   rtol=0, atol=2e-5)
        inspected = json.loads(harness.run_megamoe("inspect", self.path("q5.gguf"), "--json"))
        self.assertIn("Q5_0", inspected["gguf"]["tensors_by_type"])

    def test_bad_files_are_named(self):
        metadata, tensors = read_gguf(self.gguf)
        down = next(t for t in tensors if t[0].endswith("ffn_down_exps.weight"))
        cases = {
            "architecture": ([(k, t, "llama" if k == "general.architecture" else v) for k, t, v in metadata], tensors,
                             ["general.architecture", "deepseek2"]),
            "missing key": ([m for m in metadata if m[0] != "deepseek2.expert_count"], tensors,
                            ["deepseek2.expert_count", "missing"]),
            "stacked shape": (metadata, [(n, k, [s[0] // 2, s[1], s[2] * 2] if n == down[0] else s, d)
                                         for n, k, s, d in tensors], [down[0], "experts stacked"]),
            "lone k_b": (metadata, [t for t in tensors if not t[0].startswith("blk.0.attn_v_b")],
                         ["blk.0.attn_k_b.weight", "blk.0.attn_v_b.weight"]),
            "unsupported type": (metadata, [(n, IQ2_XXS, [s[0], s[1], 256], bytes(s[0] * s[1] * 66))
                                            if n == down[0] else (n, k, s, d) for n, k, s, d in tensors],
                                 [down[0], "IQ2_XXS"]),
            "shape against metadata": ([(k, t, v + 1 if k == "deepseek2.expert_feed_forward_length" else v)
                                        for k, t, v in metadata], tensors, ["has shape", "expected"]),
        }
        for case, (bad_metadata, bad_tensors, fragments) in cases.items():
            with self.subTest(case=case):
                path = self.path("bad.gguf")
                write_gguf(path, bad_metadata, bad_tensors)
                result = self.megamoe("logits", "--model", path, "--tokens", "1,2", "--output", self.path("bad.npy"))
                self.assertEqual(result.returncode, 1, result.stderr)
                self.assertIn("bad.gguf", result.stderr)
                for fragment in fragments:
                    self.assertIn(fragment, result.stderr)
                self.assertFalse(os.path.exists(self.path("bad.npy")))


if __name__ == "__main__":
    unittest.main()
