// The conversions in ops/dtype.h against slow decoders and a brute-force rounder written here from
// the format definitions (docs/models.md#number-formats, IEEE 754).
#include "ops/dtype.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace megamoe {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// An IEEE 754 binary format with `exp_bits` exponent and `mant_bits` mantissa bits.
double decode_ieee(uint32_t code, int exp_bits, int mant_bits) {
  const bool negative = (code >> (exp_bits + mant_bits)) & 1;
  const uint32_t exp_all_ones = (1u << exp_bits) - 1;
  const uint32_t exp = (code >> mant_bits) & exp_all_ones;
  const uint32_t mant = code & ((1u << mant_bits) - 1);
  const int bias = (1 << (exp_bits - 1)) - 1;
  double magnitude;
  if (exp == exp_all_ones) magnitude = mant ? kNaN : kInf;
  else if (exp == 0) magnitude = std::ldexp(double(mant), 1 - bias - mant_bits);
  else magnitude = std::ldexp(1.0 + std::ldexp(double(mant), -mant_bits), int(exp) - bias);
  return negative ? -magnitude : magnitude;
}

double decode_bf16(uint32_t code) { return decode_ieee(code, 8, 7); }
double decode_f16(uint32_t code) { return decode_ieee(code, 5, 10); }

// e4m3fn: bias 7, no infinities, S.1111.111 is NaN, subnormals m/8 * 2^-6.
double decode_e4m3(uint32_t code) {
  const bool negative = code & 0x80;
  const uint32_t exp = (code >> 3) & 0xf, mant = code & 7;
  double magnitude;
  if (exp == 15 && mant == 7) magnitude = kNaN;
  else if (exp == 0) magnitude = mant / 8.0 * std::ldexp(1.0, -6);
  else magnitude = (1 + mant / 8.0) * std::ldexp(1.0, int(exp) - 7);
  return negative ? -magnitude : magnitude;
}

// ue8m0: 2^(b-127), 0xff NaN.
double decode_e8m0(uint32_t code) { return code == 0xff ? kNaN : std::ldexp(1.0, int(code) - 127); }

// `got` equals `want` exactly, sign of zero included; NaN matches any NaN.
void expect_same(float got, double want, uint32_t code) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << "code " << code;
  } else {
    EXPECT_EQ(double(got), want) << "code " << code;
    EXPECT_EQ(std::signbit(got), std::signbit(want)) << "code " << code;
  }
}

TEST(DType, DecodesEveryCode) {
  for (uint32_t code = 0; code < 65536; ++code) {
    expect_same(bf16_to_f32(uint16_t(code)), decode_bf16(code), code);
    expect_same(f16_to_f32(uint16_t(code)), decode_f16(code), code);
  }
  for (uint32_t code = 0; code < 256; ++code) {
    expect_same(fp8_e4m3_to_f32(uint8_t(code)), decode_e4m3(code), code);
    expect_same(e8m0_to_f32(uint8_t(code)), decode_e8m0(code), code);
  }
  EXPECT_EQ(fp8_e4m3_to_f32(0x7e), 448.f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), 0x1p-9f);
}

// Rounds by brute force: the nearest representable value, ties to the even code. Beyond the
// largest finite value IEEE formats go to infinity (past the halfway point to the next power of
// two); e4m3fn saturates.
class Rounder {
 public:
  Rounder(int bits, double (*decode)(uint32_t), bool saturates) : sign_bit_(1u << (bits - 1)), saturates_(saturates) {
    for (uint32_t code = 0; code < sign_bit_; ++code)
      if (std::isfinite(decode(code))) values_.push_back({decode(code), code});
    std::sort(values_.begin(), values_.end());
    if (!saturates) {
      infinity_code_ = 0;
      while (!std::isinf(decode(infinity_code_))) ++infinity_code_;
      // Rounding treats infinity as the next step above the largest finite value.
      values_.push_back({2 * values_.back().first - values_[values_.size() - 2].first, infinity_code_});
    }
  }

  uint32_t round(float x) const {
    const uint32_t sign = std::signbit(x) ? sign_bit_ : 0;
    const double a = std::fabs(double(x));
    const auto hi = std::lower_bound(values_.begin(), values_.end(), std::pair(a, 0u));
    if (hi == values_.end()) return sign | (saturates_ ? values_.back().second : infinity_code_);
    if (hi->first == a || hi == values_.begin()) return sign | hi->second;
    const auto lo = hi - 1;
    const double below = a - lo->first, above = hi->first - a;  // exact in double
    if (below != above) return sign | (below < above ? lo : hi)->second;
    return sign | ((lo->second & 1) == 0 ? lo : hi)->second;
  }

  // Inputs worth trying: every value, its float neighbours, every midpoint and its neighbours.
  std::vector<float> interesting_inputs() const {
    std::vector<float> inputs = {0.f,
                                 std::numeric_limits<float>::max(),
                                 std::numeric_limits<float>::infinity(),
                                 std::numeric_limits<float>::denorm_min(),
                                 1e30f,
                                 65504.f,
                                 65519.99f,
                                 65520.f,
                                 448.f,
                                 449.f,
                                 464.f,
                                 480.f,
                                 1e6f};
    for (size_t i = 0; i < values_.size(); ++i) {
      const float v = float(values_[i].first);
      const float mid = i + 1 < values_.size() ? float((values_[i].first + values_[i + 1].first) / 2) : v;
      for (float point : {v, mid})
        for (float near : {point, std::nextafter(point, 0.f), std::nextafter(point, INFINITY)})
          for (float signed_point : {near, -near}) inputs.push_back(signed_point);
    }
    return inputs;
  }

 private:
  std::vector<std::pair<double, uint32_t>> values_;  // finite non-negative values, ascending
  uint32_t sign_bit_, infinity_code_ = 0;
  bool saturates_;
};

template <typename Convert>
void expect_rounds_like(const Rounder& rounder, Convert convert, double (*decode)(uint32_t)) {
  std::vector<float> inputs = rounder.interesting_inputs();
  std::mt19937 random(12345);
  for (int i = 0; i < (1 << 20); ++i) inputs.push_back(std::bit_cast<float>(uint32_t(random())));
  int failures = 0;
  for (float x : inputs) {
    const uint32_t got = convert(x);
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(decode(got))) << "NaN input " << std::bit_cast<uint32_t>(x) << " gave " << got;
      continue;
    }
    const uint32_t want = rounder.round(x);
    if (got != want && ++failures <= 10)
      ADD_FAILURE() << std::hexfloat << x << " (bits " << std::hex << std::bit_cast<uint32_t>(x) << ") -> 0x" << got
                    << ", expected 0x" << want;
  }
  EXPECT_EQ(failures, 0);
}

TEST(DType, F32ToBf16RoundsToNearestEven) {
  expect_rounds_like(Rounder(16, decode_bf16, false), f32_to_bf16, decode_bf16);
  EXPECT_EQ(f32_to_bf16(1.f + 0x1p-8f), 0x3f80);      // tie, down to even
  EXPECT_EQ(f32_to_bf16(1.f + 3 * 0x1p-8f), 0x3f82);  // tie, up to even
}

TEST(DType, F32ToF16RoundsToNearestEven) {
  expect_rounds_like(Rounder(16, decode_f16, false), f32_to_f16, decode_f16);
  EXPECT_EQ(f32_to_f16(65520.f), 0x7c00);                       // halfway past the max: infinity
  EXPECT_EQ(f32_to_f16(std::nextafter(65520.f, 0.f)), 0x7bff);  // just below: the max
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);                      // half the smallest subnormal: to even (zero)
  EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002);
}

TEST(DType, F32ToFp8E4m3RoundsToNearestEvenAndSaturates) {
  expect_rounds_like(Rounder(8, decode_e4m3, true), f32_to_fp8_e4m3, decode_e4m3);
  EXPECT_EQ(f32_to_fp8_e4m3(1e9f), 0x7e);
  EXPECT_EQ(f32_to_fp8_e4m3(-std::numeric_limits<float>::infinity()), 0xfe);
  EXPECT_EQ(f32_to_fp8_e4m3(0x1p-10f), 0x00);       // half the smallest subnormal: to even (zero)
  EXPECT_EQ(f32_to_fp8_e4m3(3 * 0x1p-10f), 0x02);   // 1.5 subnormal steps: up to even
  EXPECT_EQ(f32_to_fp8_e4m3(15 * 0x1p-10f), 0x08);  // between the largest subnormal and the smallest normal
  EXPECT_EQ(f32_to_fp8_e4m3(-0.f), 0x80);
}

TEST(DType, NamesAndSizes) {
  const std::pair<DType, size_t> sizes[] = {{DType::F32, 4},     {DType::F16, 2}, {DType::BF16, 2}, {DType::F8_E4M3, 1},
                                            {DType::F8_E8M0, 1}, {DType::I8, 1},  {DType::I16, 2},  {DType::I32, 4},
                                            {DType::I64, 8},     {DType::U8, 1},  {DType::BOOL, 1}, {DType::F64, 8}};
  for (const auto& [type, size] : sizes) {
    EXPECT_EQ(dtype_size(type), size) << dtype_name(type);
    EXPECT_EQ(dtype_from_name(dtype_name(type)), type);
  }
  EXPECT_EQ(dtype_name(DType::F8_E4M3), "F8_E4M3");
  EXPECT_EQ(dtype_from_name("BF16"), DType::BF16);
  EXPECT_EQ(dtype_from_name("bf16"), std::nullopt);
  EXPECT_EQ(dtype_from_name("F4"), std::nullopt);
}

}  // namespace
}  // namespace megamoe
