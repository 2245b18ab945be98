"""Hugging Face checkpoints read (and, for tests, written) with numpy alone.

Independent of megamoe's C++ reader, written from docs/models.md#1-checkpoints: a safetensors file is an
8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}} and the
raw bytes. Every floating point tensor comes back as a float32 torch tensor; quantized weights
are dequantized (torch 1.13 has no float8 dtype): DeepSeek-V3 FP8 with `<name>_scale_inv` F32
blocks, DeepSeek-V4 FP8 with `X.scale` ue8m0 blocks and V4 FP4 (`I8` nibbles, `X.scale` ue8m0 per
row and 32 inputs), and megamoe's own q8_0 / q4_0 checkpoints (quantization_config quant_method
"megamoe"): `U8` tensors [rows, cols/32, 34 | 18] of llama.cpp's block_q8_0 / block_q4_0.
Integer tensors (V4's `tid2eid`) come back as int64 torch tensors.
"""
import glob
import json
import math
import os
import struct

import numpy as np
import torch

BYTES_PER_ELEMENT = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E8M0": 1,
                     "I8": 1, "U8": 1, "I32": 4, "I64": 8}
STORAGE_TYPE = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F8_E4M3": "u1", "F8_E8M0": "u1",
                "I8": "i1", "U8": "u1", "I32": "<i4", "I64": "<i8"}
SCALE_SUFFIX = "_scale_inv"
DEFAULT_BLOCK = (128, 128)
FP4_BLOCK = 32  # inputs per ue8m0 scale of a V4 FP4 weight
GGML_BLOCK = 32  # values per llama.cpp q8_0 / q4_0 block
Q8_0_BLOCK_BYTES, Q4_0_BLOCK_BYTES = 34, 18  # fp16 scale + 32 int8 codes | + 16 bytes of nibbles
# FP4 e2m1 code -> value: bit 3 is the sign, the low 3 bits index 0 .5 1 1.5 2 3 4 6.
E2M1_VALUES = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], np.float32)


def v4_scale_name(name):
    """DeepSeek-V4 keeps the scale of `X.weight` in `X.scale`."""
    return name[:-len(".weight")] + ".scale" if name.endswith(".weight") else None


def _e4m3_values():
    """The 256 e4m3fn values from the bit definition: 1 sign, 4 exponent (bias 7), 3 mantissa,
    no infinities, 0x7F/0xFF NaN, subnormals m/8 * 2^-6."""
    values = np.empty(256, np.float32)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exponent, mantissa = (code >> 3) & 0xF, code & 0x7
        if exponent == 0xF and mantissa == 0x7:
            values[code] = np.nan
        elif exponent == 0:
            values[code] = sign * mantissa / 8 * 2.0 ** -6
        else:
            values[code] = sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7)
    return values


E4M3_VALUES = _e4m3_values()
E4M3_MAX = 448.0


def decode(dtype, raw, shape):
    """Storage bytes (a uint8 array) -> numpy array: float32 for float types, integers as stored."""
    stored = raw.view(STORAGE_TYPE[dtype]).reshape(shape)
    if dtype == "F32":
        return stored.copy()
    if dtype == "F16":
        return stored.astype(np.float32)
    if dtype == "BF16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F8_E4M3":
        return E4M3_VALUES[stored]
    if dtype == "F8_E8M0":
        # 2^(b-127); 0xFF is NaN in the OCP MX definition of e8m0.
        return np.where(stored == 0xFF, np.nan,
                        np.ldexp(1.0, stored.astype(np.int32) - 127)).astype(np.float32)
    return stored.copy()


def read_header(path):
    """(tensor entries {name: {dtype, shape, data_offsets}}, metadata, offset of the data)."""
    with open(path, "rb") as f:
        (header_length,) = struct.unpack("<Q", f.read(8))
        if header_length > os.path.getsize(path) - 8:
            raise ValueError(f"{path}: header length {header_length} exceeds the file")
        header = json.loads(f.read(header_length))
    metadata = header.pop("__metadata__", {})
    return header, metadata, 8 + header_length


class Checkpoint:
    """A model directory: config.json plus one or more safetensors files."""

    def __init__(self, model_dir):
        self.model_dir = model_dir
        with open(os.path.join(model_dir, "config.json")) as f:
            self.config = json.load(f)
        index_path = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(os.path.basename(p)
                           for p in glob.glob(os.path.join(model_dir, "*.safetensors")))
        self.entries = {}  # name -> (file path, header entry, data offset)
        for file in files:
            path = os.path.join(model_dir, file)
            header, _, data_offset = read_header(path)
            for name, entry in header.items():
                if name in self.entries:
                    raise ValueError(f"{name} appears in two files")
                self.entries[name] = (path, entry, data_offset)
        if os.path.exists(index_path):
            mismatched = [n for n, f in weight_map.items()
                          if n not in self.entries or
                          os.path.basename(self.entries[n][0]) != f]
            if mismatched:
                raise ValueError(f"weight_map disagrees with the files for {mismatched[:5]}")
        quantization = self.config.get("quantization_config") or {}
        self.block_rows, self.block_cols = quantization.get("weight_block_size", DEFAULT_BLOCK)
        self.megamoe_blocks = quantization.get("quant_method") == "megamoe"

    def __contains__(self, name):
        return name in self.entries

    def dtype(self, name):
        return self.entries[name][1]["dtype"]

    def shape(self, name):
        return list(self.entries[name][1]["shape"])

    def array(self, name):
        """The stored tensor decoded as numpy, without dequantization."""
        path, entry, data_offset = self.entries[name]
        dtype, shape = entry["dtype"], entry["shape"]
        begin, end = entry["data_offsets"]
        expected = BYTES_PER_ELEMENT[dtype] * math.prod(shape)
        if end - begin != expected:
            raise ValueError(f"{name}: {end - begin} bytes for {dtype}{shape}, expected {expected}")
        raw = np.fromfile(path, dtype=np.uint8, count=end - begin, offset=data_offset + begin)
        if raw.size != expected:
            raise ValueError(f"{name}: file {path} is truncated")
        return decode(dtype, raw, shape)

    def tensor(self, name):
        """float32 torch tensor with quantized weights dequantized (F8_E4M3 by 128x128 block
        scales, V3 `_scale_inv` or V4 `.scale`; V4 FP4 `I8` by its per-32 scales); integer
        tensors as int64."""
        values, dtype, v4_scale = self.array(name), self.dtype(name), v4_scale_name(name)
        if dtype == "F8_E4M3":
            if name + SCALE_SUFFIX in self:
                scale = self.array(name + SCALE_SUFFIX)
            elif v4_scale in self:
                scale = self.array(v4_scale)
            else:
                raise ValueError(f"{name} is F8_E4M3 without {name + SCALE_SUFFIX} or a .scale")
            values = dequantize_blocks(values, scale, self.block_rows, self.block_cols)
        elif dtype == "I8" and v4_scale in self:
            values = decode_fp4(values, self.array(v4_scale))
        elif dtype == "U8" and self.megamoe_blocks:
            values = decode_ggml_blocks(values)
        elif dtype in ("I8", "I32", "I64"):
            return torch.from_numpy(values.astype(np.int64))
        return torch.from_numpy(np.ascontiguousarray(values))


def dequantize_blocks(values, scale_inv, block_rows=128, block_cols=128):
    """W[i,j] = q[i,j] * scale_inv[i // block_rows, j // block_cols]; edge blocks are partial."""
    rows, cols = values.shape
    expected = (-(-rows // block_rows), -(-cols // block_cols))
    if scale_inv.shape != expected:
        raise ValueError(f"scale_inv shape {scale_inv.shape} for {values.shape}, expected {expected}")
    scale = np.repeat(np.repeat(scale_inv, block_rows, axis=0), block_cols, axis=1)
    return values * scale[:rows, :cols]


def decode_fp4(packed, scales):
    """FP4 weight [rows, cols] from I8 nibbles [rows, cols/2] (element 2j low, 2j+1 high) and
    scales [rows, cols/32] (already decoded from ue8m0)."""
    rows, half = packed.shape
    if scales.shape != (rows, 2 * half // FP4_BLOCK):
        raise ValueError(f"FP4 scales of shape {scales.shape} for packed {packed.shape}")
    codes = packed.view(np.uint8)
    nibbles = np.stack([codes & 15, codes >> 4], axis=-1).reshape(rows, 2 * half)
    return E2M1_VALUES[nibbles] * np.repeat(scales, FP4_BLOCK, axis=1)


def decode_ggml_blocks(blocks):
    """Weight [rows, cols] from megamoe's U8 [rows, cols/32, 34 | 18], llama.cpp's (ggml's) blocks:
    block_q8_0 = {fp16 d; int8 qs[32]}, x[j] = d * qs[j]; block_q4_0 = {fp16 d; uint8 qs[16]},
    x[j] = d * ((qs[j] & 0xF) - 8) and x[j + 16] = d * ((qs[j] >> 4) - 8). Little-endian fp16."""
    rows, count, size = blocks.shape
    d = blocks[..., :2].copy().view("<f2").astype(np.float32)  # [rows, count, 1]
    if size == Q8_0_BLOCK_BYTES:
        codes = blocks[..., 2:].view(np.int8).astype(np.float32)
    elif size == Q4_0_BLOCK_BYTES:
        nibbles = blocks[..., 2:]
        codes = np.concatenate([nibbles & 0xF, nibbles >> 4], axis=-1).astype(np.float32) - 8
    else:
        raise ValueError(f"U8 blocks of {size} bytes are neither q8_0 ({Q8_0_BLOCK_BYTES}) nor q4_0 ({Q4_0_BLOCK_BYTES})")
    return (codes * d).reshape(rows, count * GGML_BLOCK)


def q8_0_round_trip(x):
    """Activations x [..., n] rounded to llama.cpp's q8_0 blocks of 32 (d = amax / 127 kept in fp16,
    codes round(x / d) with halves away from zero): what megamoe's int8 kernels multiply FP4, q8_0
    and q4_0 weights with."""
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // GGML_BLOCK, GGML_BLOCK)
    d = (blocks.abs().amax(-1, keepdim=True).float() / 127).double()  # fp32, as llama.cpp computes it
    inverse = torch.where(d > 0, 1 / d.float(), torch.zeros_like(d.float())).double()
    codes = torch.sign(blocks) * torch.floor(blocks.abs() * inverse + 0.5)
    return (codes * d.half().double()).reshape(x.shape)


# ---- writing, for tests that build their own checkpoints ----

def encode_bf16(values):
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


_E4M3_FINITE_POSITIVE = E4M3_VALUES[:0x7F]  # codes 0..0x7E, increasing from 0 to 448


def encode_e4m3(values):
    """float -> e4m3fn codes (uint8), rounding to nearest even; |values| must be <= 448."""
    values = np.asarray(values, dtype=np.float64)
    magnitude = np.abs(values)
    if np.any(magnitude > E4M3_MAX):
        raise ValueError("value outside the e4m3 range")
    above = np.clip(np.searchsorted(_E4M3_FINITE_POSITIVE, magnitude), 1, 0x7E)
    below = above - 1
    distance_below = magnitude - _E4M3_FINITE_POSITIVE[below]
    distance_above = _E4M3_FINITE_POSITIVE[above] - magnitude
    take_above = (distance_above < distance_below) | \
                 ((distance_above == distance_below) & (above % 2 == 0))
    codes = np.where(take_above, above, below).astype(np.uint8)
    return codes | np.where(np.signbit(values), 0x80, 0).astype(np.uint8)


def quantize_fp8_blocks(weight, block_rows=128, block_cols=128):
    """float weight -> (e4m3 codes, float32 scale_inv per block) with each block's max at 448."""
    rows, cols = weight.shape
    scale_inv = np.ones((-(-rows // block_rows), -(-cols // block_cols)), np.float32)
    for bi in range(scale_inv.shape[0]):
        for bj in range(scale_inv.shape[1]):
            block = weight[bi * block_rows:(bi + 1) * block_rows,
                           bj * block_cols:(bj + 1) * block_cols]
            amax = float(np.abs(block).max())
            if amax > 0:
                scale_inv[bi, bj] = amax / E4M3_MAX
    scale = np.repeat(np.repeat(scale_inv, block_rows, 0), block_cols, 1)[:rows, :cols]
    return encode_e4m3(np.clip(weight / scale, -E4M3_MAX, E4M3_MAX)), scale_inv


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: (dtype, numpy array already in that dtype's storage type)}."""
    header, chunks, offset = {}, [], 0
    for name, (dtype, array) in tensors.items():
        data = np.ascontiguousarray(array, dtype=STORAGE_TYPE[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # keeps the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for chunk in chunks:
            f.write(chunk)
