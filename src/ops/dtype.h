// Element types of stored tensors and the scalar conversions between them.
// Written by hand because they sit in the innermost loops of the kernels and must inline.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace megamoe {

// The safetensors element types, then megamoe's block-quantized weight formats (ops/quant.h), which
// exist only as WeightView formats: Q8_0 and Q4_0 (llama.cpp's blocks of 32) and F4_E2M1 (FP4 codes
// packed two per byte, scales in a separate ue8m0 array).
enum class DType : uint8_t {
  F32,
  F16,
  BF16,
  F8_E4M3,
  F8_E8M0,
  I8,
  I16,
  I32,
  I64,
  U8,
  BOOL,
  F64,
  Q8_0,
  Q4_0,
  F4_E2M1,
  // llama.cpp's other block formats, as GGUF files store them (ops/ggml_blocks.h)
  Q4_1,
  Q5_0,
  Q5_1,
  Q2_K,
  Q3_K,
  Q4_K,
  Q5_K,
  Q6_K,
  IQ4_NL,
  IQ4_XS,
  MXFP4,
};

// Safetensors spelling ("F32", "BF16", "F8_E4M3", ...); the weight formats are named "Q8_0", "Q4_0",
// "F4_E2M1" in messages but never parsed from a file.
std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
// Elements are stored in blocks of dtype_block_size(t) (1 for the safetensors types, 32 for Q8_0/Q4_0,
// 2 for F4_E2M1, 32 or 256 for the other ggml formats) taking dtype_size(t) bytes each, as in ggml.
size_t dtype_size(DType t);
int64_t dtype_block_size(DType t);

inline float bf16_to_f32(uint16_t v) { return std::bit_cast<float>(uint32_t(v) << 16); }

// Round to nearest even, as PyTorch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float v = float(mant) * 0x1p-24f;
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t f32_to_f16(float f);  // round to nearest even

// e4m3fn: bias 7, no infinities, 0x7f/0xff are NaN, max 448.
inline float fp8_e4m3_to_f32(uint8_t v) {
  const uint32_t sign = uint32_t(v & 0x80u) << 24;
  const uint32_t exp = (v >> 3) & 0xfu;
  const uint32_t mant = v & 0x7u;
  if (exp == 0xf && mant == 0x7) return std::bit_cast<float>(sign | 0x7fc00000u);
  if (exp == 0) {
    const float m = float(mant) * 0x1p-9f;  // mant/8 * 2^-6
    return sign ? -m : m;
  }
  return std::bit_cast<float>(sign | ((exp + 120u) << 23) | (mant << 20));
}

uint8_t f32_to_fp8_e4m3(float f);  // round to nearest even, saturating at +-448

// ue8m0 scale byte b means 2^(b-127); 0xff is NaN.
inline float e8m0_to_f32(uint8_t b) {
  if (b == 0xff) return std::bit_cast<float>(0x7fc00000u);
  if (b == 0) return 0x1p-127f;
  return std::bit_cast<float>(uint32_t(b) << 23);
}

}  // namespace megamoe
