#include "ops/dtype.h"

#include <array>

namespace megamoe {
namespace {
struct DTypeInfo {
  DType type;
  std::string_view name;
  size_t size;        // bytes per block
  int64_t block = 1;  // elements per block; > 1 only for the weight formats, which files never name
};
constexpr std::array<DTypeInfo, 26> kDTypes{{
    {DType::F32, "F32", 4},
    {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},
    {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::F8_E8M0, "F8_E8M0", 1},
    {DType::I8, "I8", 1},
    {DType::I16, "I16", 2},
    {DType::I32, "I32", 4},
    {DType::I64, "I64", 8},
    {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
    {DType::F64, "F64", 8},
    {DType::Q8_0, "Q8_0", 34, 32},
    {DType::Q4_0, "Q4_0", 18, 32},
    {DType::F4_E2M1, "F4_E2M1", 1, 2},
    {DType::Q4_1, "Q4_1", 20, 32},
    {DType::Q5_0, "Q5_0", 22, 32},
    {DType::Q5_1, "Q5_1", 24, 32},
    {DType::Q2_K, "Q2_K", 84, 256},
    {DType::Q3_K, "Q3_K", 110, 256},
    {DType::Q4_K, "Q4_K", 144, 256},
    {DType::Q5_K, "Q5_K", 176, 256},
    {DType::Q6_K, "Q6_K", 210, 256},
    {DType::IQ4_NL, "IQ4_NL", 18, 32},
    {DType::IQ4_XS, "IQ4_XS", 136, 256},
    {DType::MXFP4, "MXFP4", 17, 32},
}};
}  // namespace

std::string_view dtype_name(DType t) { return kDTypes[size_t(t)].name; }
size_t dtype_size(DType t) { return kDTypes[size_t(t)].size; }
int64_t dtype_block_size(DType t) { return kDTypes[size_t(t)].block; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& info : kDTypes)
    if (info.name == name && info.block == 1) return info.type;
  return std::nullopt;
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;                // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;               // overflow (>= 65520) -> inf
  if (abs < 0x38800000u) {                                     // below 2^-14: subnormal
    const float scaled = std::bit_cast<float>(abs) * 0x1p24f;  // in units of 2^-24
    return sign | uint16_t(std::nearbyint(scaled));            // nearbyint rounds half to even
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return sign | uint16_t((rounded - (112u << 23)) >> 13);
}

uint8_t f32_to_fp8_e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= 448.f) return sign | 0x7e;  // saturate to the largest finite value
  if (a < 0x1p-6f) {                   // subnormal: multiples of 2^-9
    const int m = int(std::nearbyint(a * 0x1p9f));
    return sign | uint8_t(m);  // m == 8 lands exactly on the smallest normal (0x08)
  }
  const uint32_t u = std::bit_cast<uint32_t>(a);
  const uint32_t rounded = u + 0x7ffffu + ((u >> 20) & 1u);  // keep 3 mantissa bits, ties to even
  const uint32_t exp = (rounded >> 23) - 120u;               // at most 15 with mantissa 6: inputs >= 448 returned above
  const uint32_t mant = (rounded >> 20) & 0x7u;
  return sign | uint8_t((exp << 3) | mant);
}

}  // namespace megamoe
