#include "ops/round_trip.h"

#include <algorithm>
#include <cmath>

#include "ops/dtype.h"
#include "ops/quant.h"
#include "util/error.h"

namespace megamoe {

void fp8_round_trip(float* x, int64_t n) {
  constexpr int64_t kBlock = 64;
  if (n % kBlock) fail("the FP8 round trip needs a multiple of {} values, got {}", kBlock, n);
  for (int64_t b = 0; b < n; b += kBlock) {
    float amax = 1e-4f;
    for (int64_t j = b; j < b + kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    // 2^ceil(log2(v)) exactly: v = m * 2^e with m in [0.5, 1), and v is 2^(e-1) when m is 0.5.
    int exponent;
    const double m = std::frexp(double(amax) / 448.0, &exponent);
    const float scale = std::ldexp(1.f, m == 0.5 ? exponent - 1 : exponent);
    for (int64_t j = b; j < b + kBlock; ++j) x[j] = fp8_e4m3_to_f32(f32_to_fp8_e4m3(x[j] / scale)) * scale;
  }
}

void fp4_round_trip(float* x, int64_t n) {
  if (n % kQuantBlock) fail("the FP4 round trip needs a multiple of {} values, got {}", kQuantBlock, n);
  // The FP4 weight format's own rounding (ops/quant.h) is this round trip's: power-of-two scale
  // per 32, nearest e2m1 with ties to even.
  uint8_t packed[kQuantBlock / 2], scale;
  for (int64_t b = 0; b < n; b += kQuantBlock) {
    quantize_row_fp4(packed, &scale, x + b, kQuantBlock);
    dequantize_row_fp4(x + b, packed, &scale, kQuantBlock);
  }
}

namespace {

// 2^ceil(log2(v)) for v > 0, exactly: v = m * 2^e with m in [0.5, 1), and v is 2^(e-1) when m is 0.5.
float power_of_two_at_least(float v) {
  int exponent;
  const float m = std::frexp(v, &exponent);
  return std::ldexp(1.f, m == 0.5f ? exponent - 1 : exponent);
}

// The e2m1 value nearest to v (|v| <= 6), ties to the even code (0.25 -> 0, 0.75 -> 1, 2.5 -> 2, 5 -> 4).
float round_e2m1(float v) {
  const float a = std::fabs(v);
  const float r = a <= 0.25f   ? 0.f
                  : a < 0.75f  ? 0.5f
                  : a <= 1.25f ? 1.f
                  : a < 1.75f  ? 1.5f
                  : a <= 2.5f  ? 2.f
                  : a < 3.5f   ? 3.f
                  : a <= 5.f   ? 4.f
                               : 6.f;
  return std::copysign(r, v);
}

void check_blocks(int64_t n, int64_t block, const char* name) {
  if (n % block) fail("the {} round trip needs a multiple of {} values, got {}", name, block, n);
}

}  // namespace

void q8_round_trip(float* x, int64_t n) {
  constexpr int64_t kBlock = 32;
  check_blocks(n, kBlock, "Q8");
  for (int64_t b = 0; b < n; b += kBlock) {
    float amax = 1e-4f;
    for (int64_t j = b; j < b + kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float scale = power_of_two_at_least(amax * (1.f / 448.f));
    for (int64_t j = b; j < b + kBlock; ++j) x[j] = fp8_e4m3_to_f32(f32_to_fp8_e4m3(x[j] / scale)) * scale;
  }
}

void q4_round_trip_e8(float* x, int64_t n) {
  constexpr int64_t kBlock = 32;
  check_blocks(n, kBlock, "Q4e8");
  for (int64_t b = 0; b < n; b += kBlock) {
    float amax = 6 * 0x1p-126f;
    for (int64_t j = b; j < b + kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float scale = power_of_two_at_least(amax * (1.f / 6.f));
    for (int64_t j = b; j < b + kBlock; ++j) x[j] = round_e2m1(std::clamp(x[j] / scale, -6.f, 6.f)) * scale;
  }
}

void q4_round_trip_e4(float* x, int64_t n) {
  constexpr int64_t kBlock = 16;
  check_blocks(n, kBlock, "Q4e4");
  for (int64_t b = 0; b < n; b += kBlock) {
    float amax = 6 * 0x1p-9f;
    for (int64_t j = b; j < b + kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float scale = fp8_e4m3_to_f32(f32_to_fp8_e4m3(amax / 6));
    for (int64_t j = b; j < b + kBlock; ++j) x[j] = round_e2m1(std::clamp(x[j] / scale, -6.f, 6.f)) * scale;
  }
}

void hadamard_rotate(float* x, int64_t n) {
  if (n <= 0 || (n & (n - 1))) fail("a Hadamard rotation needs a power of two values, got {}", n);
  for (int64_t half = 1; half < n; half *= 2)  // fast Walsh-Hadamard transform, Sylvester order
    for (int64_t i = 0; i < n; i += 2 * half)
      for (int64_t j = i; j < i + half; ++j) {
        const float a = x[j], b = x[j + half];
        x[j] = a + b;
        x[j + half] = a - b;
      }
  const float norm = float(1 / std::sqrt(double(n)));
  for (int64_t i = 0; i < n; ++i) x[i] *= norm;
}

}  // namespace megamoe
