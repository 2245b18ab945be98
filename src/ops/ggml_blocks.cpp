#include "ops/ggml_blocks.h"

#include <cstring>

#include "ops/dtype.h"
#include "ops/quant.h"
#include "util/error.h"

namespace megamoe {

namespace {

constexpr int64_t kK = 256;  // QK_K: values per k-quant block

float half(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return f16_to_f32(bits);
}

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K block's 12 packed bytes.
void scale_min_k4(int j, const uint8_t* q, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *min = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Q4_1: d, m (fp16), 16 bytes of nibbles: x = q * d + m.
void q4_1(const uint8_t* b, float* y) {
  const float d = half(b), m = half(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = float(qs[j] & 0xF) * d + m;
    y[j + 16] = float(qs[j] >> 4) * d + m;
  }
}

// Q5_0 / Q5_1: the fifth bit of value j is bit j of the 32-bit qh.
void q5(const uint8_t* b, float* y, bool with_min) {
  const float d = half(b), m = with_min ? half(b + 2) : 0.f;
  const uint8_t* p = b + (with_min ? 4 : 2);
  uint32_t qh;
  std::memcpy(&qh, p, 4);
  const uint8_t* qs = p + 4;
  for (int j = 0; j < 16; ++j) {
    const int high0 = int((qh >> j) << 4) & 0x10, high1 = int(qh >> (j + 12)) & 0x10;
    const int x0 = (qs[j] & 0x0F) | high0, x1 = (qs[j] >> 4) | high1;
    if (with_min) {
      y[j] = float(x0) * d + m;
      y[j + 16] = float(x1) * d + m;
    } else {
      y[j] = float(x0 - 16) * d;
      y[j + 16] = float(x1 - 16) * d;
    }
  }
}

// Q2_K: 16 bytes of (4-bit scale | 4-bit min) per 16 values, 64 bytes of 2-bit codes, d, dmin.
void q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  const float d = half(b + 80), dmin = half(b + 82);
  int is = 0;
  for (int n = 0; n < kK; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      for (int half_block = 0; half_block < 2; ++half_block) {
        const uint8_t sc = scales[is++];
        const float dl = d * float(sc & 0xF), ml = dmin * float(sc >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * float((q[l + 16 * half_block] >> shift) & 3) - ml;
      }
      shift += 2;
    }
    q += 32;
  }
}

// Q3_K: a high-bit mask, 2-bit codes, 16 6-bit scales packed in 12 bytes, d.
void q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* q = b + 32;
  const float d = half(b + 108);
  uint32_t aux[4];
  std::memcpy(aux, b + 96, 12);
  constexpr uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
  const uint32_t tmp = aux[2];
  aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
  aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
  aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
  aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
  int8_t scales[16];
  std::memcpy(scales, aux, 16);
  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < kK; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      for (int half_block = 0; half_block < 2; ++half_block) {
        const float dl = d * float(scales[is++] - 32);
        for (int l = 16 * half_block; l < 16 * half_block + 16; ++l)
          *y++ = dl * float(((q[l] >> shift) & 3) - ((hmask[l] & m) ? 0 : 4));
      }
      shift += 2;
      m = uint8_t(m << 1);
    }
    q += 32;
  }
}

// Q4_K / Q5_K: d, dmin, 8 6-bit scales and mins in 12 bytes, (Q5_K: 32 bytes of fifth bits), nibbles.
void q45_k(const uint8_t* b, float* y, bool five) {
  const float d = half(b), dmin = half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* q = b + (five ? 48 : 16);
  int is = 0;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < kK; j += 64) {
    uint8_t sc, mn;
    scale_min_k4(is, scales, &sc, &mn);
    const float d1 = d * float(sc), m1 = dmin * float(mn);
    scale_min_k4(is + 1, scales, &sc, &mn);
    const float d2 = d * float(sc), m2 = dmin * float(mn);
    for (int l = 0; l < 32; ++l) *y++ = d1 * float((q[l] & 0xF) + (five && (qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * float((q[l] >> 4) + (five && (qh[l] & u2) ? 16 : 0)) - m2;
    q += 32;
    is += 2;
    u1 = uint8_t(u1 << 2);
    u2 = uint8_t(u2 << 2);
  }
}

// Q6_K: low nibbles, high 2-bit pairs, 16 int8 scales, d.
void q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half(b + 208);
  for (int n = 0; n < kK; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * float(sc[is]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void iq4_nl(const uint8_t* b, float* y) {
  const float d = half(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(kIq4Values[qs[j] & 0xF]);
    y[j + 16] = d * float(kIq4Values[qs[j] >> 4]);
  }
}

// MXFP4: the ue8m0 exponent e, then 16 bytes of e2m1 codes (as q4_0's nibbles).
void mxfp4(const uint8_t* b, float* y) {
  const float d = mxfp4_half_scale(b[0]);
  const uint8_t* qs = b + 1;
  for (int j = 0; j < 16; ++j) {
    y[j] = float(kFp4Doubled[qs[j] & 0xF]) * d;
    y[j + 16] = float(kFp4Doubled[qs[j] >> 4]) * d;
  }
}

// IQ4_XS: d, 8 6-bit sub-block scales (low nibbles in scales_l, high pairs in scales_h), codes.
void iq4_xs(const uint8_t* b, float* y) {
  const float d = half(b);
  uint16_t scales_h;
  std::memcpy(&scales_h, b + 2, 2);
  const uint8_t* scales_l = b + 4;
  const uint8_t* qs = b + 8;
  for (int ib = 0; ib < kK / 32; ++ib) {
    const int ls = ((scales_l[ib / 2] >> 4 * (ib % 2)) & 0xF) | (((scales_h >> 2 * ib) & 3) << 4);
    const float dl = d * float(ls - 32);
    for (int j = 0; j < 16; ++j) {
      y[j] = dl * float(kIq4Values[qs[j] & 0xF]);
      y[j + 16] = dl * float(kIq4Values[qs[j] >> 4]);
    }
    y += 32;
    qs += 16;
  }
}

}  // namespace

std::optional<GgmlBlock> ggml_block_of(std::string_view name) {
  for (size_t i = 0; i < std::size(kGgmlBlockLayouts); ++i)
    if (kGgmlBlockLayouts[i].name == name) return GgmlBlock(i);
  return std::nullopt;
}

std::optional<GgmlBlock> ggml_block_of(DType dtype) {
  if (dtype < DType::Q4_1) return std::nullopt;  // the DType list follows GgmlBlock from Q4_1 on
  return GgmlBlock(int(dtype) - int(DType::Q4_1));
}

void dequantize_ggml_blocks(GgmlBlock format, const std::byte* blocks, float* out, int64_t n) {
  const GgmlBlockLayout layout = ggml_block_layout(format);
  if (n % layout.elements != 0) fail("{} rows take whole blocks of {} values, not {}", layout.name, layout.elements, n);
  const auto* b = reinterpret_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n / layout.elements; ++i, b += layout.bytes, out += layout.elements) {
    switch (format) {
      case GgmlBlock::Q4_1:
        q4_1(b, out);
        break;
      case GgmlBlock::Q5_0:
        q5(b, out, false);
        break;
      case GgmlBlock::Q5_1:
        q5(b, out, true);
        break;
      case GgmlBlock::Q2_K:
        q2_k(b, out);
        break;
      case GgmlBlock::Q3_K:
        q3_k(b, out);
        break;
      case GgmlBlock::Q4_K:
        q45_k(b, out, false);
        break;
      case GgmlBlock::Q5_K:
        q45_k(b, out, true);
        break;
      case GgmlBlock::Q6_K:
        q6_k(b, out);
        break;
      case GgmlBlock::IQ4_NL:
        iq4_nl(b, out);
        break;
      case GgmlBlock::IQ4_XS:
        iq4_xs(b, out);
        break;
      case GgmlBlock::MXFP4:
        mxfp4(b, out);
        break;
    }
  }
}

}  // namespace megamoe
