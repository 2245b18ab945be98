// The block formats of llama.cpp's GGUF files beyond q8_0 and q4_0 (docs/gguf.md#block-formats):
// the 32-value legacy blocks (Q4_1, Q5_0, Q5_1, IQ4_NL), the 256-value k-quants (Q2_K .. Q6_K,
// IQ4_XS) and MXFP4 (DeepSeek-V4's FP4 experts as llama.cpp stores them), byte for byte as ggml lays
// them out. These are the slow references every kernel for
// them is checked against; they reproduce ggml's own dequantization bit for bit
// (tests/unit/test_ggml_blocks.cpp, against vectors computed by ggml).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "ops/dtype.h"

namespace megamoe {

enum class GgmlBlock { Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4 };

struct GgmlBlockLayout {
  std::string_view name;  // ggml's: "Q4_K"
  int64_t elements;       // values per block: 32 or 256
  int64_t bytes;          // bytes per block
};
inline constexpr GgmlBlockLayout kGgmlBlockLayouts[] = {
    {"Q4_1", 32, 20},   {"Q5_0", 32, 22},     {"Q5_1", 32, 24},   {"Q2_K", 256, 84},
    {"Q3_K", 256, 110}, {"Q4_K", 256, 144},   {"Q5_K", 256, 176}, {"Q6_K", 256, 210},
    {"IQ4_NL", 32, 18}, {"IQ4_XS", 256, 136}, {"MXFP4", 32, 17},
};
constexpr GgmlBlockLayout ggml_block_layout(GgmlBlock format) { return kGgmlBlockLayouts[size_t(format)]; }
std::optional<GgmlBlock> ggml_block_of(std::string_view name);  // "Q4_K" -> Q4_K
std::optional<GgmlBlock> ggml_block_of(DType dtype);            // DType::Q4_K -> Q4_K; nullopt for the others

// IQ4_NL and IQ4_XS map each 4-bit code through this non-linear grid (16-byte aligned for the
// kernels' table lookups).
alignas(16) inline constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                      1,    13,   25,  38,  53,  69,  89,  113};

// MXFP4's block multiplier for its doubled codes (kFp4Doubled): 2^(e - 128), as ggml computes it
// (e = 255 included, which it does not treat as NaN).
inline float mxfp4_half_scale(uint8_t e) { return std::ldexp(1.0f, int(e) - 128); }

// out [n] = the values of n / elements blocks of `format` at `blocks`; n must be a multiple of the
// block's elements.
void dequantize_ggml_blocks(GgmlBlock format, const std::byte* blocks, float* out, int64_t n);

}  // namespace megamoe
