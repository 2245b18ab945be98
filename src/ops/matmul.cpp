// The scalar references of matmul.h; the kernels live in matmul_kernels.cpp.
#include "ops/matmul.h"

#include <vector>

#include "ops/ggml_blocks.h"
#include "ops/quant.h"
#include "util/error.h"

namespace megamoe {

float weight_element(const WeightView& W, int64_t row, int64_t col) {
  const int64_t i = row * W.cols + col;
  const auto* bytes = static_cast<const uint8_t*>(W.data);
  switch (W.dtype) {
    case DType::F32:
      return static_cast<const float*>(W.data)[i];
    case DType::F16:
      return f16_to_f32(static_cast<const uint16_t*>(W.data)[i]);
    case DType::BF16:
      return bf16_to_f32(static_cast<const uint16_t*>(W.data)[i]);
    case DType::F8_E4M3:
      return fp8_e4m3_to_f32(bytes[i]) * W.scale_inv[W.scale_index(row, col)];
    case DType::Q8_0: {
      const BlockQ8_0& block = static_cast<const BlockQ8_0*>(W.data)[i / kQuantBlock];
      return float(block.qs[col % kQuantBlock]) * f16_to_f32(block.d);
    }
    case DType::Q4_0: {
      const BlockQ4_0& block = static_cast<const BlockQ4_0*>(W.data)[i / kQuantBlock];
      const int j = int(col % kQuantBlock);
      const int code = j < 16 ? block.qs[j] & 15 : block.qs[j - 16] >> 4;
      return float(code - 8) * f16_to_f32(block.d);
    }
    case DType::F4_E2M1: {
      const uint8_t code = i % 2 == 0 ? bytes[i / 2] & 15 : bytes[i / 2] >> 4;
      return kE2M1Values[code] * e8m0_to_f32(W.scale_e8m0[i / kQuantBlock]);
    }
    default:
      if (const std::optional<GgmlBlock> format = ggml_block_of(W.dtype)) {
        const int64_t block = dtype_block_size(W.dtype);
        std::vector<float> values(static_cast<size_t>(block));
        dequantize_ggml_blocks(
            *format,
            static_cast<const std::byte*>(W.data) + row * W.row_bytes() + col / block * int64_t(dtype_size(W.dtype)),
            values.data(), block);
        return values[size_t(col % block)];
      }
      fail("weight format {} is not supported by the matrix kernels", dtype_name(W.dtype));
  }
}

void matmul_reference(float* y, const float* x, int64_t T, const WeightView& W) {
  W.check();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < W.rows; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < W.cols; ++j) sum += double(x[t * W.cols + j]) * weight_element(W, i, j);
      y[t * W.rows + i] = float(sum);
    }
}

void matmul_reference_quantized(float* y, const float* x, int64_t T, const WeightView& W) {
  W.check();
  std::vector<BlockQ8_0> blocks(size_t(W.cols / kQuantBlock));
  std::vector<float> rounded(size_t(T * W.cols));  // [T, K]
  for (int64_t t = 0; t < T; ++t) {
    quantize_row_q8_0(blocks.data(), x + t * W.cols, W.cols);
    dequantize_row_q8_0(rounded.data() + t * W.cols, blocks.data(), W.cols);
  }
  matmul_reference(y, rounded.data(), T, W);
}

}  // namespace megamoe
