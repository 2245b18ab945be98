// Block-quantized weight formats. q8_0 and q4_0 have exactly llama.cpp's byte layout and rounding
// rules, so files and results compare one to one with it; FP4 e2m1 with one ue8m0 scale per 32
// inputs is DeepSeek-V4's routed-expert format (docs/models.md#number-formats).
#pragma once
#include <cstdint>
#include <vector>

#include "ops/weight.h"

namespace megamoe {

inline constexpr int64_t kQuantBlock = 32;  // inputs per scale in q8_0, q4_0 and FP4

// x[j] = d * qs[j]. 34 bytes: 8.5 bits per weight.
struct BlockQ8_0 {
  uint16_t d;  // fp16
  int8_t qs[kQuantBlock];
};
// x[j] = d * ((qs[j] & 15) - 8), x[j + 16] = d * ((qs[j] >> 4) - 8). 18 bytes: 4.5 bits per weight.
struct BlockQ4_0 {
  uint16_t d;  // fp16
  uint8_t qs[kQuantBlock / 2];
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18, "llama.cpp block layouts");

// x [n] -> n/32 blocks; n must be a multiple of 32. llama.cpp's quantize_row_q8_0_ref:
// d = amax / 127, q = round(x / d) (halves away from zero).
void quantize_row_q8_0(BlockQ8_0* out, const float* x, int64_t n);
// llama.cpp's quantize_row_q4_0_ref: d = max / -8 with max the value of largest magnitude (its sign
// kept), q = min(15, int8(x / d + 8.5)).
void quantize_row_q4_0(BlockQ4_0* out, const float* x, int64_t n);
// x [n] -> out: one row in `format`, F32, F16 or BF16 (rounded to nearest even), or Q8_0 / Q4_0
// blocks ([n/32]).
void encode_row(uint8_t* out, DType format, const float* x, int64_t n);
void dequantize_row_q8_0(float* out, const BlockQ8_0* blocks, int64_t n);
void dequantize_row_q4_0(float* out, const BlockQ4_0* blocks, int64_t n);

// FP4 e2m1 code c (4 bits): bit 3 is the sign, the magnitude is kE2M1Values[c & 7].
inline constexpr float kE2M1Values[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.f, -.5f, -1, -1.5f, -2, -3, -4, -6};
// The same codes as integers, twice the value (ggml's kvalues_mxfp4; 16-byte aligned for table lookups).
alignas(16) inline constexpr int8_t kFp4Doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// x [n] -> packed [n/2] (element 2j in the low nibble of byte j, 2j+1 in the high one) and
// scales [n/32] (ue8m0). Each block of 32 takes the smallest power-of-two scale that puts its largest
// magnitude at or below 6, then rounds to the nearest e2m1 value (ties to the even code).
void quantize_row_fp4(uint8_t* packed, uint8_t* scales, const float* x, int64_t n);
void dequantize_row_fp4(float* out, const uint8_t* packed, const uint8_t* scales, int64_t n);

// DeepSeek FP8: w [rows, cols] -> e4m3 codes q [rows, cols] and one multiplier per B x B block
// (B = `block`, 128 or V4.1's 32), scales [ceil(rows/B), ceil(cols/B)], W = q * scale. Each block's amax
// maps to 448 (V2/V3's F32 scale_inv), or with `power_of_two` (V4's ue8m0 scales) to the smallest power
// of two keeping it within 448.
void quantize_fp8_blocks(uint8_t* q, float* scales, const float* w, int64_t rows, int64_t cols,
                         bool power_of_two = false, int64_t block = kFp8BlockSize);

// A weight held in memory in any WeightView format (tests, benchmarks, checkpoint conversion).
// Move-only: `view` points into the vectors.
struct OwnedWeight {
  std::vector<uint8_t> data;
  std::vector<float> scale_inv;     // F8_E4M3
  std::vector<uint8_t> scale_e8m0;  // F4_E2M1
  WeightView view;

  OwnedWeight() = default;
  OwnedWeight(OwnedWeight&&) = default;
  OwnedWeight& operator=(OwnedWeight&&) = default;
};

// w [rows, cols] in `format`: rounded to nearest for F16/BF16, F8_E4M3 with scale_inv = amax / 448 per
// 128x128 block, the block formats by the rules above.
OwnedWeight quantize_weight(DType format, const float* w, int64_t rows, int64_t cols);

}  // namespace megamoe
