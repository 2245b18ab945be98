"""`megamoe inspect FILE.gguf`: the header of a GGUF file written here by a small writer of
llama.cpp's layout (version 3, typed metadata, tensors at aligned offsets), independent of the C++
one; bad files fail with one line naming the file and what is wrong.

    cd tests/model && MEGAMOE_BIN=/path/to/megamoe PYTHONPATH=/work/main/tests \\
        /usr/bin/python3 -m unittest -v test_gguf_inspect
"""
import json
import os
import struct
import subprocess
import tempfile
import unittest

import harness

U32, F32, STRING, ARRAY = 4, 6, 8, 9
Q8_0, Q4_K, F32_TENSOR = 8, 12, 0


def gguf_string(text):
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_gguf(path, metadata, tensors, alignment=32):
    """metadata: [(key, type, value)] (arrays: (key, ARRAY, (element_type, values))); tensors:
    [(name, ggml_type, shape outermost first, bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, kind, value in metadata:
        out += gguf_string(key) + struct.pack("<I", kind)
        if kind == STRING:
            out += gguf_string(value)
        elif kind == U32:
            out += struct.pack("<I", value)
        elif kind == F32:
            out += struct.pack("<f", value)
        elif kind == ARRAY:
            element, values = value
            out += struct.pack("<IQ", element, len(values))
            out += b"".join(gguf_string(v) if element == STRING else struct.pack("<i", v) for v in values)
    offset, blobs = 0, b""
    for name, kind, shape, data in tensors:
        out += gguf_string(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<q", d) for d in reversed(shape)) + struct.pack("<IQ", kind, offset)
        padded = data + b"\0" * (-len(data) % alignment)
        blobs += padded
        offset += len(padded)
    out += b"\0" * (-len(out) % alignment)
    with open(path, "wb") as f:
        f.write(out + blobs)


class GgufInspect(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="megamoe-gguf-")
        self.path = os.path.join(self.tmp.name, "tiny.gguf")
        write_gguf(self.path, [
            ("general.architecture", STRING, "qwen2"),  # not a model megamoe runs: the header alone
            ("qwen2.block_count", U32, 2),
            ("qwen2.rope.freq_base", F32, 10000.0),
            ("tokenizer.ggml.tokens", ARRAY, (STRING, ["a", "b", "<｜User｜>"])),
        ], [
            ("token_embd.weight", F32_TENSOR, [3, 8], bytes(96)),
            ("blk.0.attn_k_b.weight", Q8_0, [4, 2, 128], bytes(4 * 2 * 4 * 34)),
            ("blk.1.ffn_down_exps.weight", Q4_K, [2, 3, 256], bytes(2 * 3 * 144)),
        ])

    def tearDown(self):
        self.tmp.cleanup()

    def inspect(self, *extra):
        return subprocess.run([harness.megamoe_binary(), "inspect", self.path, *extra], capture_output=True,
                              text=True, timeout=60)

    def test_header_is_shown(self):
        result = self.inspect("--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        summary = json.loads(result.stdout)
        self.assertEqual(summary["architecture"], "qwen2")
        self.assertEqual(summary["tensors"], 3)
        self.assertEqual(summary["tensors_by_type"]["Q4_K"], {"tensors": 1, "bytes": 864})
        self.assertEqual(summary["tensors_by_type"]["Q8_0"], {"tensors": 1, "bytes": 1088})
        self.assertEqual(summary["metadata"]["qwen2.block_count"], 2)
        self.assertEqual(summary["metadata"]["tokenizer.ggml.tokens"], {"array_of": "string", "length": 3})
        text = self.inspect().stdout
        self.assertIn("GGUF version 3", text)
        self.assertIn("Q4_K", text)
        self.assertIn("megamoe runs GGUF files of deepseek2", text)

    def test_bad_files_are_named(self):
        with open(self.path, "rb") as f:
            data = f.read()
        for cut, fragment in ((10, "truncated"), (len(data) - 100, "outside the file")):
            with self.subTest(cut=cut):
                with open(self.path, "wb") as f:
                    f.write(data[:cut])
                result = self.inspect()
                self.assertEqual(result.returncode, 1)
                self.assertIn("tiny.gguf", result.stderr)
                self.assertIn(fragment, result.stderr)
                self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)


if __name__ == "__main__":
    unittest.main()
