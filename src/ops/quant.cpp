#include "ops/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops/dtype.h"
#include "util/error.h"

namespace megamoe {
namespace {

void check_blocks(int64_t n, const char* format) {
  if (n % kQuantBlock != 0) fail("{} needs a multiple of {} values per row, got {}", format, kQuantBlock, n);
}

}  // namespace

void quantize_row_q8_0(BlockQ8_0* out, const float* x, int64_t n) {
  check_blocks(n, "Q8_0");
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    float amax = 0;
    for (int j = 0; j < kQuantBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float inverse = d != 0 ? 1 / d : 0;
    out[b].d = f32_to_f16(d);
    for (int j = 0; j < kQuantBlock; ++j) out[b].qs[j] = int8_t(std::round(x[j] * inverse));
  }
}

void quantize_row_q4_0(BlockQ4_0* out, const float* x, int64_t n) {
  check_blocks(n, "Q4_0");
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    float amax = 0, max = 0;
    for (int j = 0; j < kQuantBlock; ++j)
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    const float d = max / -8;
    const float inverse = d != 0 ? 1 / d : 0;
    out[b].d = f32_to_f16(d);
    auto code = [&](float v) { return uint8_t(std::min(15, int(int8_t(v * inverse + 8.5f)))); };
    for (int j = 0; j < kQuantBlock / 2; ++j) out[b].qs[j] = uint8_t(code(x[j]) | code(x[j + 16]) << 4);
  }
}

void encode_row(uint8_t* out, DType format, const float* x, int64_t n) {
  switch (format) {
    case DType::F32:
      std::memcpy(out, x, size_t(n) * sizeof(float));
      return;
    case DType::F16:
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t bits = format == DType::F16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
        std::memcpy(out + 2 * i, &bits, 2);
      }
      return;
    case DType::Q8_0:
      quantize_row_q8_0(reinterpret_cast<BlockQ8_0*>(out), x, n);
      return;
    case DType::Q4_0:
      quantize_row_q4_0(reinterpret_cast<BlockQ4_0*>(out), x, n);
      return;
    default:
      fail("cannot write a row of {} values in {}", n, dtype_name(format));
  }
}

void dequantize_row_q8_0(float* out, const BlockQ8_0* blocks, int64_t n) {
  check_blocks(n, "Q8_0");
  for (int64_t b = 0; b < n / kQuantBlock; ++b) {
    const float d = f16_to_f32(blocks[b].d);
    for (int j = 0; j < kQuantBlock; ++j) out[b * kQuantBlock + j] = float(blocks[b].qs[j]) * d;
  }
}

void dequantize_row_q4_0(float* out, const BlockQ4_0* blocks, int64_t n) {
  check_blocks(n, "Q4_0");
  for (int64_t b = 0; b < n / kQuantBlock; ++b) {
    const float d = f16_to_f32(blocks[b].d);
    for (int j = 0; j < kQuantBlock / 2; ++j) {
      out[b * kQuantBlock + j] = float((blocks[b].qs[j] & 15) - 8) * d;
      out[b * kQuantBlock + j + 16] = float((blocks[b].qs[j] >> 4) - 8) * d;
    }
  }
}

void quantize_row_fp4(uint8_t* packed, uint8_t* scales, const float* x, int64_t n) {
  check_blocks(n, "F4_E2M1");
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    float amax = 0;
    for (int j = 0; j < kQuantBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    // 2^e >= amax / 6 with e in the ue8m0 range [-127, 127].
    const int exponent = amax > 0 ? std::clamp(int(std::ceil(std::log2(amax / 6))), -127, 127) : -127;
    scales[b] = uint8_t(exponent + 127);
    const float inverse = std::ldexp(1.f, -exponent);
    for (int j = 0; j < kQuantBlock; ++j) {
      const float v = std::min(std::fabs(x[j]) * inverse, 6.f);
      int best = 0;  // nearest magnitude; on a tie the even code, which comes first in the scan
      for (int c = 1; c < 8; ++c) {
        const float gap = std::fabs(kE2M1Values[c] - v), best_gap = std::fabs(kE2M1Values[best] - v);
        if (gap < best_gap || (gap == best_gap && c % 2 == 0)) best = c;
      }
      const uint8_t code = uint8_t(best | (std::signbit(x[j]) && best != 0 ? 8 : 0));
      uint8_t& byte = packed[b * kQuantBlock / 2 + j / 2];
      byte = j % 2 == 0 ? code : uint8_t(byte | code << 4);
    }
  }
}

void dequantize_row_fp4(float* out, const uint8_t* packed, const uint8_t* scales, int64_t n) {
  check_blocks(n, "F4_E2M1");
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t code = j % 2 == 0 ? packed[j / 2] & 15 : packed[j / 2] >> 4;
    out[j] = kE2M1Values[code] * e8m0_to_f32(scales[j / kQuantBlock]);
  }
}

void quantize_fp8_blocks(uint8_t* q, float* scales, const float* w, int64_t rows, int64_t cols, bool power_of_two,
                         int64_t block) {
  const int64_t B = block, scale_cols = (cols + B - 1) / B;
  for (int64_t bi = 0; bi * B < rows; ++bi)
    for (int64_t bj = 0; bj * B < cols; ++bj) {
      const int64_t i_end = std::min(rows, (bi + 1) * B), j_end = std::min(cols, (bj + 1) * B);
      float amax = 0;
      for (int64_t i = bi * B; i < i_end; ++i)
        for (int64_t j = bj * B; j < j_end; ++j) amax = std::max(amax, std::fabs(w[i * cols + j]));
      float scale = amax > 0 ? amax / 448 : 1;
      if (power_of_two) scale = std::exp2(std::ceil(std::log2(scale)));
      scales[bi * scale_cols + bj] = scale;
      for (int64_t i = bi * B; i < i_end; ++i)
        for (int64_t j = bj * B; j < j_end; ++j) q[i * cols + j] = f32_to_fp8_e4m3(w[i * cols + j] / scale);
    }
}

OwnedWeight quantize_weight(DType format, const float* w, int64_t rows, int64_t cols) {
  OwnedWeight out;
  out.view = WeightView{.dtype = format, .rows = rows, .cols = cols};
  out.data.resize(size_t(rows * out.view.row_bytes()));
  uint8_t* data = out.data.data();
  switch (format) {
    case DType::F8_E4M3:
      out.scale_inv.resize(size_t((rows + kFp8BlockSize - 1) / kFp8BlockSize * out.view.scale_cols()));
      quantize_fp8_blocks(data, out.scale_inv.data(), w, rows, cols);
      out.view.scale_inv = out.scale_inv.data();
      break;
    case DType::F4_E2M1:
      out.scale_e8m0.resize(size_t(rows * (cols / kQuantBlock)));
      for (int64_t r = 0; r < rows; ++r)
        quantize_row_fp4(data + r * cols / 2, out.scale_e8m0.data() + r * (cols / kQuantBlock), w + r * cols, cols);
      out.view.scale_e8m0 = out.scale_e8m0.data();
      break;
    default:  // formats whose rows stand alone
      for (int64_t r = 0; r < rows; ++r) encode_row(data + r * out.view.row_bytes(), format, w + r * cols, cols);
  }
  out.view.data = data;
  return out;
}

}  // namespace megamoe
