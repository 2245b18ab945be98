// A weight matrix as stored: element type, shape [rows = out, cols = in], pointer and block-scale
// layout. Kernels dispatch on it, so model code never branches on formats.
#pragma once
#include <cstdint>

#include "ops/dtype.h"

namespace megamoe {

inline constexpr int64_t kFp8BlockSize = 128;      // DeepSeek-V3/V4 FP8: one scale per 128x128 block
inline constexpr int64_t kFp8SmallBlockSize = 32;  // DeepSeek-V4.1 FP8: one per 32x32 block

struct WeightView {
  // F32, F16, BF16, F8_E4M3, or a block format of ops/quant.h: Q8_0 and Q4_0 (rows of cols/32
  // llama.cpp blocks, scales inside) or F4_E2M1 (rows of cols/2 bytes, scales in scale_e8m0).
  DType dtype = DType::F32;
  int64_t rows = 0;  // output features
  int64_t cols = 0;  // input features
  const void* data = nullptr;
  // F8_E4M3 only: [ceil((rows + scale_row_offset)/B), ceil(cols/B)] multipliers for B = scale_block,
  // W[i,j] = q[i,j] * scale_inv[(i + scale_row_offset)/B, j/B].
  const float* scale_inv = nullptr;
  // F8_E4M3 only: how many rows of the first B-row scale block lie above row 0, for a row_slice that
  // starts inside a block (V4's wo_a groups when o_lora_rank is not a multiple of 128).
  int64_t scale_row_offset = 0;
  int64_t scale_block = kFp8BlockSize;  // F8_E4M3 only: B, kFp8BlockSize or kFp8SmallBlockSize
  // F4_E2M1 only: [rows, cols/32] ue8m0 exponents, W[i,j] = e2m1(q[i,j]) * 2^(scale_e8m0[i, j/32] - 127).
  const uint8_t* scale_e8m0 = nullptr;

  int64_t scale_cols() const { return (cols + scale_block - 1) / scale_block; }
  int64_t scale_rows() const { return (rows + scale_row_offset + scale_block - 1) / scale_block; }
  // F8_E4M3: the scale_inv index of element (row, col).
  int64_t scale_index(int64_t row, int64_t col) const {
    return (row + scale_row_offset) / scale_block * scale_cols() + col / scale_block;
  }
  int64_t row_bytes() const { return cols / dtype_block_size(dtype) * int64_t(dtype_size(dtype)); }
  // Bytes a full read of the weight touches (data + scales).
  int64_t bytes() const;
  // The sub-matrix of rows [first, first + count), e.g. one head's slice of kv_b.
  WeightView row_slice(int64_t first, int64_t count) const;
  // Throws unless the kernels can read this weight: a format they know, cols a whole number of
  // blocks, and the scales its format needs.
  void check() const;
};

}  // namespace megamoe
