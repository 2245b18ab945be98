// The SIMD kernels behind matmul.h, compiled by Highway once per instruction set (AVX-512 with VNNI,
// AVX-512, AVX2, and SCALAR, its portable one-lane fallback) and chosen at run time.
//
// One loop covers every format and every number of tokens, parallel over output rows (of one product,
// or of many in one pass: MatmulTasks, an MoE layer's experts): tiles of R rows x C tokens, each sum a dot product along K with SIMD lanes along K (per-lane partial sums reduced
// by one SumOfLanes at the end), like llamafile's tinyBLAS. Every sum is computed in the same order
// whatever the tile shape, T and the other tokens of the batch, so y[t, r] is bit for bit the same
// for one token alone (decode), in a prefill of 512 or in any batch (batch invariance: prefill and
// step-by-step decode agree exactly, and top-k choices downstream do not flip). For Q8_0, Q4_0 and
// F4_E2M1 the activations are rounded to q8_0 blocks per token (--numerics fast, the default; exact
// reads them as float formats instead: ExactRows) and the products are int8
// (vpdpbusd / pmaddubsw), scaled per block of 32; on AVX3_DL two blocks share a 512-bit vector
// (Int8PairTile), on AVX2 and AVX3 each lane of a vector is one row (RowLaneTile), and the scalar
// fallback takes one block per vector (Int8Tile). From kDecodeMinTokens tokens on,
// the float formats decode each tile's rows once into an fp32 buffer (unscaled, exactly the values
// decoded in registers) that every token of the block reads, instead of decoding them again for
// every C tokens. A tile's rows lie far apart in the matrix (StridedTiles), so that decode reads
// long sequential streams that the hardware prefetchers follow.
#ifndef MEGAMOE_MATMUL_KERNELS_CONFIG
#define MEGAMOE_MATMUL_KERNELS_CONFIG
#define HWY_WANT_AVX3_DL                             // the VNNI target, which Highway skips by default
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4)  // CPUs without AVX2 take the scalar fallback
// The fallback is written for HWY_SCALAR (one lane per part of a block), which Highway 1.0.3 picks
// under GCC 12 only; clang (the fuzz build) would take HWY_EMU128.
#define HWY_BROKEN_EMU128 1
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/matmul_kernels.cpp"
#include <hwy/foreach_target.h>  // re-includes this file once per target

#include <fmt/ranges.h>
#include <hwy/aligned_allocator.h>
#include <hwy/highway.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "ops/elementwise.h"
#include "ops/ggml_blocks.h"
#include "ops/matmul.h"
#include "ops/numerics.h"
#include "ops/quant.h"
#include "util/error.h"
#include "util/parallel.h"

#ifndef MEGAMOE_MATMUL_KERNELS_SHARED
#define MEGAMOE_MATMUL_KERNELS_SHARED
namespace megamoe {

// From how many tokens on the float formats decode a tile's rows into an fp32 buffer first rather
// than in registers for every C tokens (the same values either way).
constexpr int64_t kDecodeMinTokens = 8;
// Activation bytes a block of tokens may take so that it stays in L2 (1 MB per Zen 5 core) while
// every row tile of a thread passes over it.
constexpr int64_t kTokenBlockBytes = 256 << 10;

// Activations rounded to q8_0 blocks (quantize_row_q8_0), split for the int8 kernels.
struct QuantizedActivations {
  std::vector<int8_t> q;      // [T, K]; for F4_E2M1 each block holds its even elements, then its odd ones
  std::vector<float> d;       // [T, K/32]
  std::vector<int32_t> sums;  // [T, K/32]: each block's sum of codes (row-lane tiles' offset correction)
};

// F8_E4M3 code as the fp16 with the same sign, exponent and mantissa bits one place lower: the value
// times 2^-8, subnormals included (the kernels fold 2^8 into the block scale). Sign-extending the
// byte to 16 bits, shifting by 7 and clearing bit 14 does it in three integer operations, and
// vcvtph2ps widens to fp32. NaN codes are not kept: checkpoints hold none.
inline constexpr float kFp8Rescale = 256;
inline constexpr uint16_t kFp8HalfMask = 0xbf80;
inline float fp8_unscaled(uint8_t v) { return f16_to_f32(uint16_t(int16_t(int8_t(v)) << 7) & kFp8HalfMask); }

// FP4 e2m1 codes as integers: twice the value (kFp4Doubled; the kernels halve the scale), and that
// plus 12, which is unsigned for vpdpbusd / pmaddubsw (the kernels subtract 12 times the activations'
// sums).
alignas(16) inline constexpr int8_t kFp4Unsigned[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
// The block scale for those codes, e8m0_to_f32(byte) / 2, by table: one load instead of branches.
inline const std::array<float, 256> kFp4Scales = [] {
  std::array<float, 256> scales;
  for (int byte = 0; byte < 256; ++byte) scales[size_t(byte)] = e8m0_to_f32(uint8_t(byte)) * 0.5f;
  return scales;
}();
// MXFP4's (ggml's, which takes e = 255 as a number): mxfp4_half_scale.
inline const std::array<float, 256> kMxfp4Scales = [] {
  std::array<float, 256> scales;
  for (int byte = 0; byte < 256; ++byte) scales[size_t(byte)] = mxfp4_half_scale(uint8_t(byte));
  return scales;
}();

}  // namespace megamoe
#endif

#if HWY_TARGET == HWY_AVX3_DL
// Highway 1.0.3 compiles AVX3_DL with "avxvnni" but checks the CPU for AVX512-VNNI, which is what
// _mm256_dpbusd_epi32 (EVEX) needs: added to the target's features, for functions and lambdas
// (HWY_ATTR) alike.
#undef HWY_TARGET_STR
#define HWY_TARGET_STR                                                            \
  HWY_TARGET_STR_AVX3                                                             \
  ",vpclmulqdq,avx512vbmi,avx512vbmi2,vaes,avxvnni,avx512bitalg,avx512vpopcntdq," \
  "avx512vnni"
#endif
HWY_BEFORE_NAMESPACE();
namespace megamoe::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class D>
using V = hn::Vec<D>;
using DF = hn::ScalableTag<float>;
using DI8 = hn::CappedTag<int8_t, kQuantBlock>;  // one block of 32 per vector (32 one-lane vectors on SCALAR)
using DI32 = hn::Repartition<int32_t, DI8>;
using DF8 = hn::Repartition<float, DI8>;  // float lanes of a block-sized vector

// The register blocking, which changes the speed but never the results: R rows x C tokens of sums,
// R weight vectors and one activation vector in registers (AVX-512 has 32, AVX2 16). Formats with a
// scale per 128 inputs (FP8) hold two sums per pair (the block's and the total), so fewer tokens.
constexpr size_t kTileRows = 4;
constexpr bool kWide = HWY_TARGET <= HWY_AVX3;
// One token (decode) needs a single accumulator per row, so AVX-512 takes more rows at once: more
// independent work per activation load and more weight streams in flight.
constexpr size_t kDecodeRows = kWide ? 8 : kTileRows;
// Int8 formats in row lanes (see RowLaneTile), on the targets whose int8 products are 256-bit.
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3
constexpr bool kRowLanes = true;
#else
constexpr bool kRowLanes = false;
#endif
template <class Rows>
constexpr bool RowLanes() {
  if constexpr (Rows::kInt8) return kRowLanes && !Rows::kPairs && !Rows::kMins && !Rows::kLaneScales;
  else return false;
}
constexpr size_t kLaneRows = 8;  // int32 lanes of a 256-bit vector, one row each
// Rows per tile: whole vectors of rows in row lanes, else taller tiles for one token.
template <class Rows>
constexpr size_t TileRows(bool one_token) {
  if constexpr (RowLanes<Rows>()) return kLaneRows;
  else return one_token ? kDecodeRows : kTileRows;
}
template <class Rows>
constexpr size_t TokensPerTile() {
  if constexpr (RowLanes<Rows>()) return 6;
  else if constexpr (Rows::kInt8) return kWide ? 4 : 2;
  else if constexpr (Rows::kScaleCols != 0) return kWide ? 3 : 1;
  else return kWide ? 6 : 3;  // AVX2: 12 sums cover FMA latency x 2 pipes; 4 x 2 left them idle
}

constexpr bool kVnni = HWY_TARGET == HWY_AVX3_DL;

// The int8 dot products, written by hand because Highway 1.0.3 has none: acc + the sums of w * x over
// each group of 4 adjacent lanes. vpdpbusd and pmaddubsw multiply unsigned by signed bytes, so the
// weights come either unsigned, as code + offset (the caller subtracts offset * sum(x)), or signed,
// as |w| times x with w's sign (llama.cpp's trick; |w| <= 128 keeps pmaddubsw's int16 pair sums from
// saturating). pmaddubsw also saturates on unsigned codes above 128, so only the VNNI target takes
// q8_0 unsigned.
HWY_INLINE V<DI32> DotUnsigned(V<DI32> acc, V<DI8> w, V<DI8> x) {
#if HWY_TARGET == HWY_AVX3_DL
  return V<DI32>{_mm256_dpbusd_epi32(acc.raw, w.raw, x.raw)};
#elif HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX2
  return V<DI32>{
      _mm256_add_epi32(acc.raw, _mm256_madd_epi16(_mm256_maddubs_epi16(w.raw, x.raw), _mm256_set1_epi16(1)))};
#else  // HWY_SCALAR: one lane
  const DI32 d32;
  return hn::Add(
      acc,
      hn::Mul(hn::BitCast(d32, hn::PromoteTo(hn::Rebind<uint32_t, DI8>(), hn::BitCast(hn::Rebind<uint8_t, DI8>(), w))),
              hn::PromoteTo(d32, x)));
#endif
}

HWY_INLINE V<DI32> DotSigned(V<DI32> acc, V<DI8> w, V<DI8> x) {
#if HWY_TARGET == HWY_SCALAR
  const DI32 d32;
  return hn::Add(acc, hn::Mul(hn::PromoteTo(d32, w), hn::PromoteTo(d32, x)));
#else
  return DotUnsigned(acc, V<DI8>{_mm256_abs_epi8(w.raw)}, V<DI8>{_mm256_sign_epi8(x.raw, w.raw)});
#endif
}

// acc + w . x in the way the format's codes are stored (unsigned, with an offset or a minimum per
// block, or signed).
template <class Rows>
HWY_INLINE V<DI32> DotCodes(V<DI32> acc, V<DI8> w, V<DI8> x) {
  return Rows::kOffset || Rows::kMins ? DotUnsigned(acc, w, x) : DotSigned(acc, w, x);
}

// Half-precision scale to fp32: one vcvtph2ps with F16C (every x86 target here).
HWY_INLINE float HalfToFloat(uint16_t bits) {
#if HWY_TARGET == HWY_SCALAR
  return f16_to_f32(bits);
#else
  return _cvtsh_ss(bits);
#endif
}

#if HWY_TARGET == HWY_AVX3_DL
// Two blocks of int8 codes in one 512-bit vector (Int8PairTile), and helpers to build such pairs.
using PairVec = V<hn::ScalableTag<int8_t>>;

HWY_INLINE __m128i Load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
HWY_INLINE __m256i Load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
HWY_INLINE __m512i Join(__m256i low, __m256i high) { return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1); }
HWY_INLINE V<DF> Join(float low, float high) {  // [low x8, high x8]
  return V<DF>{_mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(low)), _mm256_set1_ps(high), 1)};
}
HWY_INLINE V<DF> LowHalf(V<DF> v) { return V<DF>{_mm512_maskz_mov_ps(0x00ff, v.raw)}; }
// [fp16 word 0 x8, fp16 word `second_word` x8] of `bytes` as fp32: one vpermw and one vcvtph2ps.
HWY_INLINE V<DF> HalfWords(__m512i bytes, int second_word) {
  const __m512i index = _mm512_mask_set1_epi16(_mm512_setzero_si512(), 0xff00, int16_t(second_word));
  return V<DF>{_mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(index, bytes)))};
}
#endif

// ---------------------------------------------------------------------------------------------
// Weight formats. Each reads its rows as float vectors (Load, unscaled) with a scale per
// kScaleCols inputs, or as int8 vectors per block of 32 (Part) with a scale per block, and
// dequantizes spans of a row to fp32 (Dequantize, exact: dequantize_row uses it).

template <class Derived>
struct FloatRows {
  static constexpr bool kInt8 = false;
  // unscaled: the codes as Load and Element give them (DecodedRows), without the block scale.
  void Dequantize(float* out, int64_t row, int64_t k0, int64_t n, bool unscaled = false) const {
    const auto& self = static_cast<const Derived&>(*this);
    const DF df;
    const int64_t N = int64_t(hn::Lanes(df));
    for (int64_t k = k0; k < k0 + n;) {
      const int64_t chunk_end =
          Derived::kScaleCols ? std::min(k0 + n, (k / Derived::kScaleCols + 1) * Derived::kScaleCols) : k0 + n;
      const float scale = unscaled ? 1.f : self.Scale(row, k);
      const auto scale_v = hn::Set(df, scale);
      for (; k + N <= chunk_end; k += N) hn::StoreU(hn::Mul(self.Load(df, row, k), scale_v), df, out + k - k0);
      for (; k < chunk_end; ++k) out[k - k0] = self.Element(row, k) * scale;
    }
  }
};

struct F32Rows : FloatRows<F32Rows> {
  static constexpr int64_t kScaleCols = 0;  // unscaled
  const float* data;
  int64_t cols;
  F32Rows(const WeightView& W) : data(static_cast<const float*>(W.data)), cols(W.cols) {}
  V<DF> Load(DF df, int64_t row, int64_t k) const { return hn::LoadU(df, data + row * cols + k); }
  float Element(int64_t row, int64_t k) const { return data[row * cols + k]; }
  float Scale(int64_t, int64_t) const { return 1; }
};

template <class Half>  // hwy::float16_t or hwy::bfloat16_t
struct HalfRows : FloatRows<HalfRows<Half>> {
  static constexpr int64_t kScaleCols = 0;
  const Half* data;
  int64_t cols;
  HalfRows(const WeightView& W) : data(static_cast<const Half*>(W.data)), cols(W.cols) {}
  V<DF> Load(DF df, int64_t row, int64_t k) const {
    return hn::PromoteTo(df, hn::LoadU(hn::Rebind<Half, DF>(), data + row * cols + k));
  }
  float Element(int64_t row, int64_t k) const {
    uint16_t bits;
    std::memcpy(&bits, data + row * cols + k, 2);
    return std::is_same_v<Half, hwy::bfloat16_t> ? bf16_to_f32(bits) : f16_to_f32(bits);
  }
  float Scale(int64_t, int64_t) const { return 1; }
};

// kBlock: the side of the square scale blocks (WeightView::scale_block), a constant so that the
// tiles' scale chunks are too.
template <int64_t kBlock>
struct Fp8Rows : FloatRows<Fp8Rows<kBlock>> {
  static constexpr int64_t kScaleCols = kBlock;
  const uint8_t* data;
  const float* scale_inv;
  int64_t cols, scale_cols, scale_row_offset;
  Fp8Rows(const WeightView& W)
      : data(static_cast<const uint8_t*>(W.data)),
        scale_inv(W.scale_inv),
        cols(W.cols),
        scale_cols(W.scale_cols()),
        scale_row_offset(W.scale_row_offset) {}
  // The code's sign, exponent and mantissa moved into fp32's fields (sign-extended, shifted by 20,
  // masked) read as the e4m3 value x 2^-120, subnormals included as fp32 denormals (never flushed:
  // nothing sets DAZ); x 2^112 gives exactly what fp8_unscaled gives, the value x 2^-8: one
  // instruction fewer than widening through fp16 (vcvtph2ps) in a loop that decode keeps busy.
  V<DF> Load(DF df, int64_t row, int64_t k) const {
    const hn::RebindToSigned<DF> di;
    const auto codes =
        hn::PromoteTo(di, hn::LoadU(hn::Rebind<int8_t, DF>(), reinterpret_cast<const int8_t*>(data + row * cols + k)));
    const auto bits = hn::And(hn::ShiftLeft<20>(codes), hn::Set(di, int32_t(0x87f00000u)));
    return hn::Mul(hn::BitCast(df, bits), hn::Set(df, 0x1p112f));
  }
  float Element(int64_t row, int64_t k) const { return fp8_unscaled(data[row * cols + k]); }
  float Scale(int64_t row, int64_t k) const {
    return scale_inv[(row + scale_row_offset) / kBlock * scale_cols + k / kBlock] * kFp8Rescale;
  }
};

template <class Derived>
struct Int8Rows {
  static constexpr bool kInt8 = true;
  static constexpr bool kPairs = false;       // whether it reads two blocks per vector (Int8PairTile)
  static constexpr bool kHalfScales = false;  // whether ScaleBits gives each block's fp16 scale
  // Whether a block's values are Scale x code - Min (unsigned codes): Int8Tile subtracts Min times
  // the activations' block sum (or, with kLaneScales, each lane's).
  static constexpr bool kMins = false;
  // Whether each 16-value half of a block has a scale (and minimum) of its own: one per int32 lane
  // of the block's dot product, whose first 4 lanes sum the first half (x86 targets only).
  static constexpr bool kLaneScales = false;
  // kMins and kLaneScales formats give the scales and minimums of kBlocksPerSuper blocks at once:
  // GroupScales(row, b, scales, mins), per block or, with kLaneScales, per half block.
  static constexpr int64_t kBlocksPerSuper = 1;
  void Dequantize(float* out, int64_t row, int64_t k0, int64_t n) const {
    const auto& self = static_cast<const Derived&>(*this);
    const DF df;
    const hn::Rebind<int8_t, DF> d8;
    alignas(64) int8_t codes[kQuantBlock];
    for (int64_t b = k0 / kQuantBlock; b < (k0 + n) / kQuantBlock; ++b) {
      self.Codes(codes, row, b);
      const auto scale = hn::Set(df, self.Scale(row, b));
      for (size_t j = 0; j < kQuantBlock; j += hn::Lanes(df))
        hn::StoreU(hn::Mul(hn::ConvertTo(df, hn::PromoteTo(hn::RebindToSigned<DF>(), hn::LoadU(d8, codes + j))), scale),
                   df, out + b * kQuantBlock - k0 + j);
    }
  }
};

struct Q8Rows : Int8Rows<Q8Rows> {
  static constexpr int kOffset = kVnni ? 128 : 0;  // 0: signed
  static constexpr bool kPairs = kVnni;
  const BlockQ8_0* data;
  int64_t blocks;
  Q8Rows(const WeightView& W) : data(static_cast<const BlockQ8_0*>(W.data)), blocks(W.cols / kQuantBlock) {}
  static constexpr bool kHalfScales = true;
  uint16_t ScaleBits(int64_t row, int64_t b) const { return data[row * blocks + b].d; }
  float Scale(int64_t row, int64_t b) const { return HalfToFloat(ScaleBits(row, b)); }
#if HWY_TARGET == HWY_AVX3_DL
  PairVec PairCodes(int64_t row, int64_t j, bool half) const {
    const BlockQ8_0* p = data + row * blocks + 2 * j;
    const __m512i q = half ? _mm512_zextsi256_si512(Load256(p->qs)) : Join(Load256(p[0].qs), Load256(p[1].qs));
    return PairVec{_mm512_xor_si512(q, _mm512_set1_epi8(-128))};  // q + 128
  }
  // The 64-byte load at the pair's start holds both fp16 scales (words 0 and 17) and ends inside it.
  V<DF> PairScales(int64_t row, int64_t j) const {
    return HalfWords(_mm512_loadu_si512(data + row * blocks + 2 * j), 17);
  }
#endif
  V<DI8> Part(int64_t row, int64_t b, size_t part) const {
    const auto q = hn::LoadU(DI8(), data[row * blocks + b].qs + part);
    return kOffset ? hn::Xor(q, hn::Set(DI8(), int8_t(-128))) : q;  // q + 128 as unsigned
  }
  void Codes(int8_t* out, int64_t row, int64_t b) const { std::memcpy(out, data[row * blocks + b].qs, kQuantBlock); }
};

// Q4_0 and F4_E2M1: 16 bytes of nibbles per block, used unsigned: q4_0's codes as they are (offset 8),
// FP4's through kFp4Unsigned (offset 12). Part gives the low nibbles first (elements 0..15 of q4_0;
// the even elements of FP4, whose activations are permuted to match), then the high nibbles.
// With a `table` (16-byte aligned), each code is looked up in its 16 entries.
HWY_INLINE V<DI8> NibblePart(const uint8_t* nibbles, size_t part, const int8_t* table = nullptr) {
#if HWY_TARGET == HWY_SCALAR
  const uint8_t byte = nibbles[part % 16];
  const uint8_t code = part < 16 ? byte & 15 : byte >> 4;
  return hn::Set(DI8(), table ? table[code] : int8_t(code));
#else
  static_assert(hn::MaxLanes(DI8()) == kQuantBlock, "x86 targets hold a block per vector");
  // The 16 bytes in both halves, the upper half's 32-bit words shifted right by 4 (bits crossing
  // into a byte's high nibble are masked off): 2 instructions after the load, where shifting bytes
  // (16-bit shift and mask) and joining the halves took 4.
  const __m256i twice = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(nibbles)));
  const __m256i shifted = _mm256_srlv_epi32(twice, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
  const auto both = V<DI8>{_mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))};
  return table ? hn::TableLookupBytes(hn::LoadDup128(DI8(), table), both) : both;
#endif
}

template <class Derived>
struct NibbleRows : Int8Rows<Derived> {
  static constexpr bool kLookup = Derived::kOffset == 12;
  V<DI8> Part(int64_t row, int64_t b, size_t part) const {
    const uint8_t* nibbles = static_cast<const Derived&>(*this).Nibbles(row, b);
    return NibblePart(nibbles, part, kLookup ? kFp4Unsigned : nullptr);
  }
#if HWY_TARGET == HWY_AVX3_DL
  static constexpr bool kPairs = true;
  // [low nibbles, high nibbles] of block 2j, then of block 2j+1 (zeros for a half pair), from the
  // format's NibblesTwice: each block's 16 bytes twice, [n, n, n', n'].
  PairVec PairCodes(int64_t row, int64_t j, bool half) const {
    const auto& self = static_cast<const Derived&>(*this);
    const __m512i twice =
        half ? _mm512_maskz_broadcast_i32x4(0x00ff, Load128(self.Nibbles(row, 2 * j))) : self.NibblesTwice(row, j);
    const __m512i codes = _mm512_and_si512(_mm512_mask_srli_epi16(twice, 0xff00ff00, twice, 4), _mm512_set1_epi8(0x0f));
    if constexpr (kLookup) return PairVec{_mm512_shuffle_epi8(_mm512_broadcast_i32x4(Load128(kFp4Unsigned)), codes)};
    return PairVec{codes};
  }
#endif
  // Natural element order: byte j holds elements 2j, 2j+1 (FP4) or j, j + 16 (q4_0).
  void Codes(int8_t* out, int64_t row, int64_t b) const {
    const uint8_t* nibbles = static_cast<const Derived&>(*this).Nibbles(row, b);
    for (int j = 0; j < kQuantBlock / 2; ++j) {
      const int8_t low = Derived::Value(nibbles[j] & 15), high = Derived::Value(nibbles[j] >> 4);
      out[Derived::kInterleaved ? 2 * j : j] = low;
      out[Derived::kInterleaved ? 2 * j + 1 : j + kQuantBlock / 2] = high;
    }
  }
};

struct Q4Rows : NibbleRows<Q4Rows> {
  static constexpr int kOffset = 8;
  static constexpr bool kInterleaved = false;
  static int8_t Value(int code) { return int8_t(code - 8); }
  const BlockQ4_0* data;
  int64_t blocks;
  Q4Rows(const WeightView& W) : data(static_cast<const BlockQ4_0*>(W.data)), blocks(W.cols / kQuantBlock) {}
  const uint8_t* Nibbles(int64_t row, int64_t b) const { return data[row * blocks + b].qs; }
  static constexpr bool kHalfScales = true;
  uint16_t ScaleBits(int64_t row, int64_t b) const { return data[row * blocks + b].d; }
  float Scale(int64_t row, int64_t b) const { return HalfToFloat(ScaleBits(row, b)); }
#if HWY_TARGET == HWY_AVX3_DL
  // The pair's 36 bytes as two overlapping 32-byte loads: bytes 0..31 (both fp16 scales, words 0
  // and 9) and 4..35; one vpermt2b picks the nibbles (bytes 2..17 and 20..35) twice from them.
  const uint8_t* Pair(int64_t row, int64_t j) const {
    return reinterpret_cast<const uint8_t*>(data + row * blocks + 2 * j);
  }
  V<DF> PairScales(int64_t row, int64_t j) const { return HalfWords(_mm512_castsi256_si512(Load256(Pair(row, j))), 9); }
  __m512i NibblesTwice(int64_t row, int64_t j) const {
    static constexpr auto kIndex = [] {  // vpermt2b: bytes 0..63 from the first load, 64.. the second
      std::array<uint8_t, 64> index{};
      for (int i = 0; i < 16; ++i) {
        index[i] = index[16 + i] = uint8_t(2 + i);
        index[32 + i] = index[48 + i] = uint8_t(64 + 16 + i);
      }
      return index;
    }();
    return _mm512_permutex2var_epi8(_mm512_castsi256_si512(Load256(Pair(row, j))), _mm512_loadu_si512(kIndex.data()),
                                    _mm512_castsi256_si512(Load256(Pair(row, j) + 4)));
  }
#endif
};

struct Fp4Rows : NibbleRows<Fp4Rows> {
  static constexpr int kOffset = 12;
  static constexpr bool kInterleaved = true;
  static int8_t Value(int code) { return kFp4Doubled[code]; }
  const uint8_t* data;
  const uint8_t* scales;
  int64_t blocks;
  Fp4Rows(const WeightView& W)
      : data(static_cast<const uint8_t*>(W.data)), scales(W.scale_e8m0), blocks(W.cols / kQuantBlock) {}
  const uint8_t* Nibbles(int64_t row, int64_t b) const { return data + (row * blocks + b) * (kQuantBlock / 2); }
  float Scale(int64_t row, int64_t b) const { return kFp4Scales[scales[row * blocks + b]]; }
#if HWY_TARGET == HWY_AVX3_DL
  V<DF> PairScales(int64_t row, int64_t j) const { return Join(Scale(row, 2 * j), Scale(row, 2 * j + 1)); }
  __m512i NibblesTwice(int64_t row, int64_t j) const {  // the pair's 32 bytes are contiguous
    const __m512i both = _mm512_castsi256_si512(Load256(Nibbles(row, 2 * j)));
    return _mm512_shuffle_i64x2(both, both, _MM_SHUFFLE(1, 1, 0, 0));
  }
#endif
};

// llama.cpp's block formats (ops/ggml_blocks.h): rows of ggml blocks of kFormat, each
// a superblock of 8 of our 32-value blocks for the k-quants, one block for the 32-value formats.
// Values as the bit-exact reference decodes them (Dequantize: dequantize_row).
template <class Derived, GgmlBlock kFormat>
struct GgmlRows : Int8Rows<Derived> {
  static constexpr int64_t kSuperBytes = ggml_block_layout(kFormat).bytes;
  static constexpr int64_t kBlocksPerSuper = ggml_block_layout(kFormat).elements / kQuantBlock;
  const uint8_t* data;
  int64_t row_bytes;
  explicit GgmlRows(const WeightView& W) : data(static_cast<const uint8_t*>(W.data)), row_bytes(W.row_bytes()) {}
  // The ggml block holding block b of `row`.
  const uint8_t* Super(int64_t row, int64_t b) const {
    return data + row * row_bytes + b / kBlocksPerSuper * kSuperBytes;
  }
  void Dequantize(float* out, int64_t row, int64_t k0, int64_t n) const {
    dequantize_ggml_blocks(kFormat, reinterpret_cast<const std::byte*>(Super(row, k0 / kQuantBlock)), out, n);
  }
  static float Half(const uint8_t* p) {
    uint16_t bits;
    std::memcpy(&bits, p, 2);
    return HalfToFloat(bits);
  }
};

// Q5_0, Q5_1's and the fifth bits of 32 values: bit j of the 4 bytes at `bits` for value j, as 16
// (part: the first value the vector holds).
HWY_INLINE V<DI8> FifthBits(const uint8_t* bits, size_t part) {
  uint32_t word;
  std::memcpy(&word, bits, 4);
  word >>= part;
  return hn::IfThenElseZero(hn::LoadMaskBits(DI8(), reinterpret_cast<const uint8_t*>(&word)), hn::Set(DI8(), 16));
}

// llama.cpp's 32-value formats with nibble codes: fp16 d, (Q4_1, Q5_1: fp16 m,) (Q5_0, Q5_1: the
// fifth bits,) 16 bytes of nibbles, value j's in byte j % 16 (low nibbles first). Q5_0's values are
// d * (code - 16): unsigned codes with offset 16; Q4_1's and Q5_1's d * code + m: unsigned codes
// with a minimum, -m (kMins).
template <GgmlBlock kFormat>
struct LegacyRows : GgmlRows<LegacyRows<kFormat>, kFormat> {
  using Base = GgmlRows<LegacyRows<kFormat>, kFormat>;
  static constexpr bool kMins = kFormat != GgmlBlock::Q5_0;
  static constexpr bool kFifthBit = kFormat != GgmlBlock::Q4_1;
  static constexpr int kOffset = kMins ? 0 : 16;
  static constexpr int64_t kNibbles = 2 + 2 * kMins + 4 * kFifthBit;  // where the nibbles start in a block
  using Base::Base;
  using Base::Half;
  using Base::Super;
  float Scale(int64_t row, int64_t b) const { return Half(Super(row, b)); }
  void GroupScales(int64_t row, int64_t b, float* scales, float* mins) const {
    scales[0] = Half(Super(row, b));
    mins[0] = -Half(Super(row, b) + 2);
  }
  V<DI8> Part(int64_t row, int64_t b, size_t part) const {
    const uint8_t* s = Super(row, b);
    const V<DI8> codes = NibblePart(s + kNibbles, part);
    if constexpr (kFifthBit) return hn::Or(codes, FifthBits(s + kNibbles - 4, part));
    return codes;
  }
};

// llama.cpp's non-linear 4-bit formats: codes through the 16 values of kIq4Values, signed, or
// unsigned with offset 128 where products are VNNI's (as q8_0). IQ4_NL: fp16 d, 16 bytes of nibbles
// (as q4_0's); IQ4_XS: superblocks of fp16 d, 8 6-bit scales (low nibbles in 4 bytes, high pairs
// in 2), then each block's 16 bytes of nibbles; block j's values are d * (scale_j - 32) * value.
template <GgmlBlock kFormat>
struct Iq4Rows : GgmlRows<Iq4Rows<kFormat>, kFormat> {
  using Base = GgmlRows<Iq4Rows<kFormat>, kFormat>;
  static constexpr bool kSuper = kFormat == GgmlBlock::IQ4_XS;
  static constexpr int kOffset = kVnni ? 128 : 0;
  using Base::Base;
  using Base::Half;
  using Base::kBlocksPerSuper;
  using Base::Super;
  float Scale(int64_t row, int64_t b) const {
    const uint8_t* s = Super(row, b);
    if constexpr (!kSuper) return Half(s);
    const int64_t j = b % kBlocksPerSuper;
    const int high = (s[2 + j / 4] >> (2 * (j % 4))) & 3;  // scales_h, little endian
    return Half(s) * float((((s[4 + j / 2] >> (4 * (j % 2))) & 15) | (high << 4)) - 32);
  }
  V<DI8> Part(int64_t row, int64_t b, size_t part) const {
    const uint8_t* s = Super(row, b);
    const V<DI8> values = NibblePart(kSuper ? s + 8 + 16 * (b % kBlocksPerSuper) : s + 2, part, kIq4Values);
    return kOffset ? hn::Xor(values, hn::Set(DI8(), int8_t(-128))) : values;  // value + 128 as unsigned
  }
};

// MXFP4 (ggml's; DeepSeek-V4's experts in llama.cpp's files): blocks of 17 bytes, the ue8m0
// exponent e and 16 bytes of e2m1 codes in q4_0's order (value j in byte j % 16, low nibbles first);
// value j is kFp4Doubled[code] * 2^(e - 128). The codes go to the int8 products as FP4's do.
struct Mxfp4Rows : NibbleRows<Mxfp4Rows> {
  static constexpr int kOffset = 12;
  static constexpr bool kInterleaved = false;
  static constexpr int64_t kBlockBytes = 17;
  static int8_t Value(int code) { return kFp4Doubled[code]; }
  const uint8_t* data;
  int64_t blocks;
  Mxfp4Rows(const WeightView& W) : data(static_cast<const uint8_t*>(W.data)), blocks(W.cols / kQuantBlock) {}
  const uint8_t* Block(int64_t row, int64_t b) const { return data + (row * blocks + b) * kBlockBytes; }
  const uint8_t* Nibbles(int64_t row, int64_t b) const { return Block(row, b) + 1; }
  float Scale(int64_t row, int64_t b) const { return kMxfp4Scales[Block(row, b)[0]]; }
#if HWY_TARGET == HWY_AVX3_DL
  V<DF> PairScales(int64_t row, int64_t j) const { return Join(Scale(row, 2 * j), Scale(row, 2 * j + 1)); }
  __m512i NibblesTwice(int64_t row, int64_t j) const {
    return Join(_mm256_broadcastsi128_si256(Load128(Nibbles(row, 2 * j))),
                _mm256_broadcastsi128_si256(Load128(Nibbles(row, 2 * j + 1))));
  }
#endif
};

// llama.cpp's Q4_K and Q5_K (ops/ggml_blocks.h): superblocks of 256 values, fp16 d and dmin, 6-bit
// scales and minimums of their eight 32-value blocks packed in 12 bytes, Q5_K's fifth bits (32
// bytes: bit b of byte j for block b's value j), then 128 bytes of nibbles: each 32 bytes hold one
// block in their low nibbles and the next in their high ones. Block b's value j is
// d * scale_b * code - dmin * min_b; the codes go to the int8 products unsigned, the minimum through
// the activations' block sums (kMins).
template <bool kFifthBit>
struct MinScaleRows : GgmlRows<MinScaleRows<kFifthBit>, kFifthBit ? GgmlBlock::Q5_K : GgmlBlock::Q4_K> {
  using Base = GgmlRows<MinScaleRows<kFifthBit>, kFifthBit ? GgmlBlock::Q5_K : GgmlBlock::Q4_K>;
  static constexpr int kOffset = 0;
  static constexpr bool kMins = true;
  static constexpr int64_t kNibbles = kFifthBit ? 48 : 16;  // where the nibbles start in a superblock
  using Base::Base;
  using Base::Half;
  using Base::kBlocksPerSuper;
  using Base::Super;
  // The scales and minimums of the kBlocksPerSuper blocks from block b (a superblock's first) on,
  // unpacked once for all of them (Int8Tile), as ggml's get_scale_min_k4 does for block j of the 12
  // packed bytes q: j < 4: q[j] & 63 and q[j + 4] & 63; else (q[j + 4] & 15) | (q[j - 4] >> 6) << 4
  // and (q[j + 4] >> 4) | (q[j] >> 6) << 4. In vectors, block j in lane j.
  void GroupScales(int64_t row, int64_t b, float* scales, float* mins) const {
    const DF8 df;
    const hn::Rebind<uint32_t, DF8> du32;
    const hn::Rebind<uint8_t, DF8> du8;
    const uint8_t* s = Super(row, b);
    const uint8_t* q = s + 4;
    const auto d = hn::Set(df, Half(s)), dmin = hn::Set(df, Half(s + 2));
    const auto low6 = hn::Set(du32, 63u), low4 = hn::Set(du32, 15u);
    for (size_t j = 0; j < size_t(kBlocksPerSuper); j += hn::Lanes(df)) {
      const auto first = hn::Lt(hn::Iota(du32, uint32_t(j)), hn::Set(du32, 4u));  // lanes of blocks 0..3
      const auto at = [&](int64_t offset) { return hn::PromoteTo(du32, hn::LoadU(du8, q + offset + j)); };
      const auto q_j = at(0), q_j4 = at(4), q_jm4 = at(-4);  // q[j], q[j + 4], q[j - 4] (s[j] below 4)
      const auto scale = hn::IfThenElse(first, hn::And(q_j, low6),
                                        hn::Or(hn::And(q_j4, low4), hn::ShiftLeft<4>(hn::ShiftRight<6>(q_jm4))));
      const auto min = hn::IfThenElse(first, hn::And(q_j4, low6),
                                      hn::Or(hn::ShiftRight<4>(q_j4), hn::ShiftLeft<4>(hn::ShiftRight<6>(q_j))));
      hn::StoreU(hn::Mul(hn::ConvertTo(df, hn::BitCast(hn::Rebind<int32_t, DF8>(), scale)), d), df, scales + j);
      hn::StoreU(hn::Mul(hn::ConvertTo(df, hn::BitCast(hn::Rebind<int32_t, DF8>(), min)), dmin), df, mins + j);
    }
  }
  V<DI8> Part(int64_t row, int64_t b, size_t part) const {
    const hn::Repartition<uint8_t, DI8> du8;
    const uint8_t* s = Super(row, b);
    const int64_t j = b % kBlocksPerSuper;
    const auto bytes = hn::LoadU(du8, s + kNibbles + 32 * (j / 2) + part);
    auto codes = j % 2 ? hn::ShiftRight<4>(bytes) : hn::And(bytes, hn::Set(du8, uint8_t(15)));
    if constexpr (kFifthBit) {
      const auto fifth = hn::And(hn::ShiftRightSame(hn::LoadU(du8, s + 16 + part), int(j)), hn::Set(du8, uint8_t(1)));
      codes = hn::Or(codes, hn::ShiftLeft<4>(fifth));
    }
    return hn::BitCast(DI8(), codes);
  }
};
using Q4KRows = MinScaleRows<false>;
using Q5KRows = MinScaleRows<true>;

#if HWY_TARGET != HWY_SCALAR
// Block j's two half scales (or minimums) from a superblock's 16, halves[2j] and halves[2j+1], as the
// lanes of its dot product: [halves[2j] x 4, halves[2j+1] x 4].
HWY_INLINE V<DF8> HalfLanes(const float* halves, int64_t j) {
  // Through __m128i, which may alias the floats (a double* load could be moved before their stores).
  const __m128 pair = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(halves + 2 * j)));
  return V<DF8>{_mm256_permutevar8x32_ps(_mm256_castps128_ps256(pair), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))};
}

// The 2-bit codes of llama.cpp's Q2_K and Q3_K: in each half superblock (128 values, 32 bytes),
// block k's value j is bits 2k..2k+1 of byte j.
HWY_INLINE V<DI8> CrumbPart(const uint8_t* half_codes, int64_t k) {
  const hn::Repartition<uint8_t, DI8> du8;
  return hn::BitCast(DI8(),
                     hn::And(hn::ShiftRightSame(hn::LoadU(du8, half_codes), int(2 * k)), hn::Set(du8, uint8_t(3))));
}

// llama.cpp's Q6_K: superblocks of 256 values, 128 bytes of low nibbles, 64 of high 2-bit pairs, 16
// int8 scales (one per 16 values) and fp16 d. In each half superblock (128 values), block k's value j
// is d * scale[2k + j/16] * (code - 32), code = nibble k/2 of byte j (+32 for odd k) of the low
// nibbles, high bits 2k of byte j of the high pairs: unsigned codes with offset 32, a scale per lane
// half (kLaneScales).
struct Q6KRows : GgmlRows<Q6KRows, GgmlBlock::Q6_K> {
  static constexpr int kOffset = 32;
  static constexpr bool kLaneScales = true;
  using GgmlRows::GgmlRows;
  V<DI8> Part(int64_t row, int64_t b, size_t /*part: one per block*/) const {
    const hn::Repartition<uint8_t, DI8> du8;
    const int64_t j = b % kBlocksPerSuper, half = j / 4, k = j % 4;
    const uint8_t* s = Super(row, b);
    const auto low = hn::LoadU(du8, s + 64 * half + 32 * (k % 2));
    const auto high = hn::LoadU(du8, s + 128 + 32 * half);
    const auto nibble = k / 2 ? hn::ShiftRight<4>(low) : hn::And(low, hn::Set(du8, uint8_t(15)));
    const auto pair = hn::And(hn::ShiftRightSame(high, int(2 * k)), hn::Set(du8, uint8_t(3)));
    return hn::BitCast(DI8(), hn::Or(nibble, hn::ShiftLeft<4>(pair)));
  }
  float Scale(int64_t, int64_t) const { return 1; }  // GroupScales has them
  void GroupScales(int64_t row, int64_t b, float* halves, float* /*mins: none*/) const {
    const uint8_t* s = Super(row, b);
    const float d = Half(s + 208);
    const DF8 df;
    const hn::Rebind<int8_t, DF8> d8;
    const hn::Rebind<int32_t, DF8> d32;
    for (size_t i = 0; i < 16; i += hn::Lanes(df))
      hn::StoreU(
          hn::Mul(hn::ConvertTo(df, hn::PromoteTo(d32, hn::LoadU(d8, reinterpret_cast<const int8_t*>(s + 192 + i)))),
                  hn::Set(df, d)),
          df, halves + i);
  }
};

// llama.cpp's Q3_K: superblocks of 256 values, 32 bytes of high bits (bit j of byte i for block j's
// value i), 64 of 2-bit codes (CrumbPart), 16 6-bit scales (one per 16 values) packed in 12 bytes,
// fp16 d. Block j's value i is d * (scale - 32) * (crumb + 4 * high - 4): unsigned codes
// crumb + 4 * high with offset 4, a scale per lane half (kLaneScales).
struct Q3KRows : GgmlRows<Q3KRows, GgmlBlock::Q3_K> {
  static constexpr int kOffset = 4;
  static constexpr bool kLaneScales = true;
  using GgmlRows::GgmlRows;
  V<DI8> Part(int64_t row, int64_t b, size_t /*part: one per block*/) const {
    const hn::Repartition<uint8_t, DI8> du8;
    const int64_t j = b % kBlocksPerSuper;
    const uint8_t* s = Super(row, b);
    const auto high = hn::And(hn::ShiftRightSame(hn::LoadU(du8, s), int(j)), hn::Set(du8, uint8_t(1)));
    return hn::Or(CrumbPart(s + 32 + 32 * (j / 4), j % 4), hn::BitCast(DI8(), hn::ShiftLeft<2>(high)));
  }
  float Scale(int64_t, int64_t) const { return 1; }  // GroupScales has them
  // Scale i of the 16 packed in 12 bytes: low nibble in byte i (i < 8) or high nibble of byte i - 8,
  // high pair in bits 2 * (i / 4) of byte 8 + i % 4, less 32; 8 at a time.
  void GroupScales(int64_t row, int64_t b, float* halves, float* /*mins: none*/) const {
    const DF8 df;
    const hn::Rebind<uint32_t, DF8> du32;
    const hn::Rebind<int32_t, DF8> di32;
    const uint8_t* packed = Super(row, b) + 96;
    const auto d = hn::Set(df, Half(Super(row, b) + 108));
    const auto bytes = hn::PromoteTo(du32, hn::LoadU(hn::Rebind<uint8_t, DF8>(), packed));
    uint32_t high_bytes;
    std::memcpy(&high_bytes, packed + 8, 4);
    alignas(32) static constexpr uint32_t kHighShifts[16] = {0, 8, 16, 24, 2, 10, 18, 26, 4, 12, 20, 28, 6, 14, 22, 30};
    for (size_t i = 0; i < 16; i += 8) {
      const auto low = i == 0 ? hn::And(bytes, hn::Set(du32, 15u)) : hn::ShiftRight<4>(bytes);
      const auto high = hn::And(hn::Shr(hn::Set(du32, high_bytes), hn::Load(du32, kHighShifts + i)), hn::Set(du32, 3u));
      const auto scale = hn::Sub(hn::BitCast(di32, hn::Or(low, hn::ShiftLeft<4>(high))), hn::Set(di32, 32));
      hn::StoreU(hn::Mul(hn::ConvertTo(df, scale), d), df, halves + i);
    }
  }
};

// llama.cpp's Q2_K: superblocks of 256 values, 16 bytes of (4-bit scale | 4-bit minimum << 4), one
// per 16 values, 64 bytes of 2-bit codes (CrumbPart), fp16 d and dmin. Block j's value i is
// d * scale * code - dmin * minimum: unsigned codes, a scale and a minimum per lane half
// (kLaneScales with kMins: Int8Tile sums each lane's activations for the minimums).
struct Q2KRows : GgmlRows<Q2KRows, GgmlBlock::Q2_K> {
  static constexpr int kOffset = 0;
  static constexpr bool kMins = true;
  static constexpr bool kLaneScales = true;
  using GgmlRows::GgmlRows;
  V<DI8> Part(int64_t row, int64_t b, size_t /*part: one per block*/) const {
    const int64_t j = b % kBlocksPerSuper;
    return CrumbPart(Super(row, b) + 16 + 32 * (j / 4), j % 4);
  }
  float Scale(int64_t, int64_t) const { return 1; }  // GroupScales has them
  void GroupScales(int64_t row, int64_t b, float* halves, float* mins) const {
    const DF8 df;
    const hn::Rebind<int32_t, DF8> d32;
    const uint8_t* s = Super(row, b);
    const auto d = hn::Set(df, Half(s + 80)), dmin = hn::Set(df, Half(s + 82));
    for (size_t i = 0; i < 16; i += 8) {
      const auto bytes = hn::PromoteTo(d32, hn::LoadU(hn::Rebind<uint8_t, DF8>(), s + i));
      hn::StoreU(hn::Mul(hn::ConvertTo(df, hn::And(bytes, hn::Set(d32, 15))), d), df, halves + i);
      hn::StoreU(hn::Mul(hn::ConvertTo(df, hn::ShiftRight<4>(bytes)), dmin), df, mins + i);
    }
  }
};
#endif

// ---------------------------------------------------------------------------------------------
// Tiles: sums[r * C + c] = row rows[r] . token c, for R rows x C tokens.
//
// StridedTiles: tile t of a matrix of n rows holds rows t, t + S, t + 2S, ... (S = ceil(n / R), the
// tile count), not R rows side by side. Each of the R row streams of a tile then goes on, tile after
// tile, through its own contiguous part of the matrix: R long sequential streams far apart, which the
// hardware prefetchers follow, as they do the roofline's read. R adjacent rows were R short streams
// (an expert's row is only 1-4 KB) restarted every tile, which every matrix-vector tile had to ask
// for ahead itself (software prefetch of the next tile's rows); with strided tiles those prefetches
// cost more than they bring, so there are none. Each lane's walk is turned by a few rows
// (LaneShift) so that the R streams do not all sit at one offset within a page. The results do not
// change: every row is summed alone, in the same order, whichever rows share its tile.
//
// Each sum has its own accumulators and the same order of operations for every R and C (the tails
// use explicit fma so that no instantiation contracts differently), which makes the results batch
// invariant.

// Where a tile's sums go: lane r of token t (counted from the tile's first token) to
// y[t * ld + cols[r]], for the lanes r < n that hold a real row (see TileRange).
struct TileOutput {
  float* y;
  int64_t ld;
  const int64_t* cols;
  int64_t n;
  void Store(int64_t t, size_t r, float sum) const { y[t * ld + cols[r]] = sum; }
};

template <size_t R, size_t C, class Rows>
HWY_INLINE void Int8Tile(float* sums, const Rows& w, const int64_t* rows, const int8_t* const* xq,
                         const float* const* xd, const int32_t* const* xs, int64_t blocks) {
  const DI8 d8;
  const DI32 d32;
  const DF8 df;
  V<DF8> acc[R][C];
  for (auto& row : acc)
    for (auto& a : row) a = hn::Zero(df);
  float mins[R][C] =
      {};  // kMins (a minimum per block): sum over blocks of Min x the block's activation scale x code sum
  // kMins and kLaneScales formats unpack a superblock's scales and minimums at its first block (per
  // block, or per half block).
  constexpr int64_t kGroup = Rows::kBlocksPerSuper, kPerBlock = Rows::kLaneScales ? 2 : 1;
  alignas(64) float group_scales[R][kGroup * kPerBlock], group_mins[R][kGroup * kPerBlock];
  for (int64_t b = 0; b < blocks; ++b) {
    if constexpr (Rows::kMins || Rows::kLaneScales)
      if (b % kGroup == 0)
        for (size_t r = 0; r < R; ++r) w.GroupScales(rows[r], b, group_scales[r], group_mins[r]);
    V<DI32> dot[R][C];
    for (size_t c = 0; c < C; ++c) {
      // Unsigned weights start each lane from -offset * (its 4 activations' sum), so that every lane
      // holds an exact partial dot product, no larger than the true one.
      auto start = hn::Zero(d32);
      if constexpr (Rows::kOffset != 0)
        for (size_t part = 0; part < kQuantBlock; part += hn::Lanes(d8))
          start = hn::Sub(start, DotUnsigned(hn::Zero(d32), hn::Set(d8, int8_t(Rows::kOffset)),
                                             hn::LoadU(d8, xq[c] + b * kQuantBlock + part)));
      for (size_t r = 0; r < R; ++r) dot[r][c] = start;
    }
    V<DF8> lane_sums[C];  // kLaneScales with kMins: each int32 lane's 4 activations summed
    if constexpr (Rows::kLaneScales && Rows::kMins)
      for (size_t c = 0; c < C; ++c)
        lane_sums[c] = hn::ConvertTo(
            df, DotUnsigned(hn::Zero(d32), hn::Set(d8, int8_t(1)), hn::LoadU(d8, xq[c] + b * kQuantBlock)));
    for (size_t part = 0; part < kQuantBlock; part += hn::Lanes(d8)) {
      V<DI8> wv[R];
      for (size_t r = 0; r < R; ++r) wv[r] = w.Part(rows[r], b, part);
      for (size_t c = 0; c < C; ++c) {
        const auto xv = hn::LoadU(d8, xq[c] + b * kQuantBlock + part);
        for (size_t r = 0; r < R; ++r) dot[r][c] = DotCodes<Rows>(dot[r][c], wv[r], xv);
      }
    }
    for (size_t r = 0; r < R; ++r) {
      if constexpr (Rows::kLaneScales) {
        const V<DF8> lane_scales = HalfLanes(group_scales[r], b % kGroup);
        for (size_t c = 0; c < C; ++c)
          acc[r][c] = hn::MulAdd(hn::ConvertTo(df, dot[r][c]), hn::Mul(lane_scales, hn::Set(df, xd[c][b])), acc[r][c]);
        if constexpr (Rows::kMins) {
          const V<DF8> lane_mins = HalfLanes(group_mins[r], b % kGroup);
          for (size_t c = 0; c < C; ++c)
            acc[r][c] = hn::NegMulAdd(lane_sums[c], hn::Mul(lane_mins, hn::Set(df, xd[c][b])), acc[r][c]);
        }
        continue;
      }
      float dw;
      if constexpr (Rows::kMins) dw = group_scales[r][b % kGroup];
      else dw = w.Scale(rows[r], b);
      for (size_t c = 0; c < C; ++c)
        acc[r][c] = hn::MulAdd(hn::ConvertTo(df, dot[r][c]), hn::Set(df, dw * xd[c][b]), acc[r][c]);
      if constexpr (Rows::kMins) {
        const float m = group_mins[r][b % kGroup];
        for (size_t c = 0; c < C; ++c) mins[r][c] = std::fma(m, xd[c][b] * float(xs[c][b]), mins[r][c]);
      }
    }
  }
  for (size_t r = 0; r < R; ++r)
    for (size_t c = 0; c < C; ++c) sums[r * C + c] = hn::GetLane(hn::SumOfLanes(df, acc[r][c])) - mins[r][c];
}

#if HWY_TARGET == HWY_AVX3_DL
// Two blocks per 512-bit vector: lanes 0..7 hold block 2j's partial sums (4 products each, vpdpbusd),
// lanes 8..15 block 2j+1's, and each pair's scales come as one vector, so a block costs half the
// instructions of Int8Tile's one block per 256-bit vector (decode was compute bound there). Rows
// give PairCodes (blocks 2j and 2j+1, or only 2j for an odd last block, with activations 0 against
// the upper half) and PairScales; every C runs the same code, so the results stay batch invariant.
template <size_t R, size_t C, class Rows>
HWY_INLINE void Int8PairTile(float* sums, const Rows& w, const int64_t* rows, const int8_t* const* xq,
                             const float* const* xd, int64_t blocks) {
  const DF df;
  V<DF> acc[R][C];
  for (auto& row : acc)
    for (auto& a : row) a = hn::Zero(df);
  const auto pair = [&](int64_t j, bool half) HWY_ATTR {
    PairVec wv[R];
    V<DF> ws[R];
    for (size_t r = 0; r < R; ++r) {
      wv[r] = w.PairCodes(rows[r], j, half);
      ws[r] = half ? LowHalf(hn::Set(df, w.Scale(rows[r], 2 * j))) : w.PairScales(rows[r], j);
    }
    for (size_t c = 0; c < C; ++c) {
      const int8_t* q = xq[c] + j * 2 * kQuantBlock;
      const float* d = xd[c] + j * 2;
      const __m512i xv = half ? _mm512_zextsi256_si512(Load256(q)) : _mm512_loadu_si512(q);
      const V<DF> dx = half ? LowHalf(hn::Set(df, d[0])) : Join(d[0], d[1]);
      // As in Int8Tile: each lane starts from -offset * (its 4 activations' sum).
      const __m512i start =
          _mm512_sub_epi32(_mm512_setzero_si512(),
                           _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(int8_t(Rows::kOffset)), xv));
      for (size_t r = 0; r < R; ++r) {
        const V<DF> dot{_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, wv[r].raw, xv))};
        acc[r][c] = hn::MulAdd(dot, hn::Mul(ws[r], dx), acc[r][c]);
      }
    }
  };
  for (int64_t j = 0; j < blocks / 2; ++j) pair(j, false);
  if (blocks % 2) pair(blocks / 2, true);
  for (size_t r = 0; r < R; ++r)
    for (size_t c = 0; c < C; ++c) sums[r * C + c] = hn::GetLane(hn::SumOfLanes(df, acc[r][c]));
}
#endif

// Row-lane int8 tiles (AVX2, and AVX-512 without VNNI, whose int8 products are 256-bit too): each
// int32 lane of a vector is one of 8 output rows, so a block's scale is applied once per 8 rows and
// token rather than once per row and token, and sums need no reduction across lanes (Int8Tile spends
// 3 of its 7 instructions per block, row and token on the scale: cvt, scale product, fma). Every sum
// is the exact int32 dot
// product of a row's block with the token's (less offset times the block's activation sum for
// unsigned codes), then, block by block, acc = fma(float(dot), row scale * token scale, acc): the
// same operations whatever the tile, so results stay batch invariant.
//   - RowLaneMatvec (one token): the rows as stored, one block per 256-bit vector as in Int8Tile,
//     8 rows' dot vectors summed into one vector of 8 rows (SumEachOf8).
//   - RowLaneTile (C tokens): the tile's rows packed once per token block (PackRowLanes) as 8
//     vectors per block, vector k holding bytes 4k..4k+3 of each row's block, against the token's
//     4 bytes broadcast.
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3
constexpr int64_t kPackedBytes = kLaneRows * kQuantBlock + kLaneRows * 4;  // a block of 8 rows: codes, scales

// [a0 + a2, b0 + b2, a1 + a3, b1 + b3] in each 128-bit half: two vectors' 32-bit lanes interleaved and
// added, and the same for 64-bit lanes: the steps of a transpose that adds as it goes (unpacks, not
// vphaddd, which decodes into more micro-ops than it saves).
HWY_INLINE __m256i AddInterleaved32(__m256i a, __m256i b) {
  return _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
}
HWY_INLINE __m256i AddInterleaved64(__m256i a, __m256i b) {
  return _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
}

// [sum of dots[0]'s lanes, ..., sum of dots[7]'s lanes].
HWY_INLINE V<DI32> SumEachOf8(const V<DI32>* dots) {
  __m256i pairs[4], quads[2];
  for (int i = 0; i < 4; ++i) pairs[i] = AddInterleaved32(dots[2 * i].raw, dots[2 * i + 1].raw);
  for (int i = 0; i < 2; ++i) quads[i] = AddInterleaved64(pairs[2 * i], pairs[2 * i + 1]);
  return V<DI32>{_mm256_add_epi32(_mm256_permute2x128_si256(quads[0], quads[1], 0x20),
                                  _mm256_permute2x128_si256(quads[0], quads[1], 0x31))};
}

// The block-b scales of the 8 rows `rows` of w as one vector. fp16 scales go into one vector of 8
// words and convert with one vcvtph2ps: converted one at a time, they cost 4-5 instructions per row.
template <class Rows>
HWY_INLINE V<DF8> LaneScales(const Rows& w, const int64_t* rows, int64_t b) {
  if constexpr (Rows::kHalfScales) {
    __m128i bits = _mm_cvtsi32_si128(w.ScaleBits(rows[0], b));
    // clang-format 14 would break the call of this templated lambda away from its body.
    // clang-format off
    [&]<size_t... r>(std::index_sequence<r...>) {
      ((bits = _mm_insert_epi16(bits, w.ScaleBits(rows[r + 1], b), r + 1)), ...);
    }(std::make_index_sequence<kLaneRows - 1>());
    // clang-format on
    return V<DF8>{_mm256_cvtph_ps(bits)};
  } else {
    alignas(32) float scales[kLaneRows];
    for (size_t r = 0; r < kLaneRows; ++r) scales[r] = w.Scale(rows[r], b);
    return hn::Load(DF8(), scales);
  }
}

// Block b of 8 rows (q4_0 or FP4) . a block of activations x, less offset * sum(x): [row 0, ..., row 7].
// Two rows per vector, [row r's 16 bytes | row r + 4's], low and high nibbles apart, each against its
// half of x in both halves. The two pmaddubsw results add in int16 without overflow (unsigned codes
// <= 24 times |x| <= 127, four products per lane: at most 12192), so one pmaddwd serves both: 12
// multiplies per 8 rows where NibblePart and DotUnsigned took 16, and half the lanes to add up.
template <class Rows>
HWY_INLINE V<DI32> NibbleBlockDots(const Rows& w, const int64_t* rows, int64_t b, const int8_t* x) {
  const __m256i x_low = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
  const __m256i x_high = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + 16)));
  const __m256i mask = _mm256_set1_epi8(0x0f);
  __m256i dots[4];
  for (size_t r = 0; r < 4; ++r) {
    const __m256i both = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(w.Nibbles(rows[r + 4], b)),
                                             reinterpret_cast<const __m128i*>(w.Nibbles(rows[r], b)));
    __m256i low = _mm256_and_si256(both, mask), high = _mm256_and_si256(_mm256_srli_epi16(both, 4), mask);
    if constexpr (Rows::kLookup) {
      const __m256i table = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kFp4Unsigned)));
      low = _mm256_shuffle_epi8(table, low);
      high = _mm256_shuffle_epi8(table, high);
    }
    const __m256i products = _mm256_add_epi16(_mm256_maddubs_epi16(low, x_low), _mm256_maddubs_epi16(high, x_high));
    dots[r] = _mm256_madd_epi16(products, _mm256_set1_epi16(1));
  }
  // dots[r] = [row r's 4 partial sums | row r + 4's]
  return V<DI32>{AddInterleaved64(AddInterleaved32(dots[0], dots[1]), AddInterleaved32(dots[2], dots[3]))};
}

// sums [8] = the 8 rows `rows` of w . one token (xq, xd, xsum: its codes, scales and block sums).
template <class Rows>
HWY_INLINE void RowLaneMatvec(float* sums, const Rows& w, const int64_t* rows, const int8_t* xq, const float* xd,
                              const int32_t* xsum, int64_t blocks) {
  const DI8 d8;
  const DI32 d32;
  const DF8 df;
  auto acc = hn::Zero(df);
  for (int64_t b = 0; b < blocks; ++b) {
    V<DI32> dot;
    if constexpr (std::is_base_of_v<NibbleRows<Rows>, Rows>) {
      dot = NibbleBlockDots(w, rows, b, xq + b * kQuantBlock);
    } else {
      const auto xv = hn::LoadU(d8, xq + b * kQuantBlock);
      V<DI32> dots[kLaneRows];
      for (size_t r = 0; r < kLaneRows; ++r) dots[r] = DotCodes<Rows>(hn::Zero(d32), w.Part(rows[r], b, 0), xv);
      dot = SumEachOf8(dots);
    }
    dot = hn::Sub(dot, hn::Set(d32, Rows::kOffset * xsum[b]));
    acc = hn::MulAdd(hn::ConvertTo(df, dot), hn::Mul(LaneScales(w, rows, b), hn::Set(df, xd[b])), acc);
  }
  hn::StoreU(acc, df, sums);
}

// packed [blocks, kPackedBytes] = the 8 rows `rows` of w in row lanes: per block, vector k = bytes
// 4k..4k+3 of each row's codes (as Part gives them; an 8 x 8 transpose of 4-byte words), then the
// rows' scales.
template <class Rows>
void PackRowLanes(int8_t* packed, const Rows& w, const int64_t* rows, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b) {
    int8_t* out = packed + b * kPackedBytes;
    __m256i r[kLaneRows];
    for (size_t i = 0; i < kLaneRows; ++i) r[i] = w.Part(rows[i], b, 0).raw;
    __m256i pairs[kLaneRows], quads[kLaneRows];  // words k of rows (i, i+1), then of rows i..i+3
    for (size_t i = 0; i < kLaneRows; i += 2) {
      pairs[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);      // words 0, 1 | 4, 5
      pairs[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);  // words 2, 3 | 6, 7
    }
    for (size_t i = 0; i < kLaneRows; i += 4)
      for (size_t h = 0; h < 2; ++h) {
        quads[i + 2 * h] = _mm256_unpacklo_epi64(pairs[i + h], pairs[i + 2 + h]);      // word 2h | 2h + 4
        quads[i + 2 * h + 1] = _mm256_unpackhi_epi64(pairs[i + h], pairs[i + 2 + h]);  // word 2h + 1 | 2h + 5
      }
    __m256i* vectors = reinterpret_cast<__m256i*>(out);
    for (size_t k = 0; k < 4; ++k) {
      _mm256_storeu_si256(vectors + k, _mm256_permute2x128_si256(quads[k], quads[4 + k], 0x20));
      _mm256_storeu_si256(vectors + k + 4, _mm256_permute2x128_si256(quads[k], quads[4 + k], 0x31));
    }
    hn::StoreU(LaneScales(w, rows, b), DF8(), reinterpret_cast<float*>(out + kLaneRows * kQuantBlock));
  }
}

// sums [C, 8] = the packed rows . C tokens.
template <size_t C, class Rows>
HWY_INLINE void RowLaneTile(float* sums, const int8_t* packed, const int8_t* const* xq, const float* const* xd,
                            const int32_t* const* xsum, int64_t blocks) {
  const DI8 d8;
  const DI32 d32;
  const DF8 df;
  V<DF8> acc[C];
  for (auto& a : acc) a = hn::Zero(df);
  for (int64_t b = 0; b < blocks; ++b) {
    const int8_t* block = packed + b * kPackedBytes;
    V<DI32> dot[C];
    for (size_t c = 0; c < C; ++c) dot[c] = hn::Set(d32, -Rows::kOffset * xsum[c][b]);
    for (size_t k = 0; k < kQuantBlock / 4; ++k) {
      // Signed codes multiply as |w| times x with w's sign (DotSigned), |w| taken once for C tokens.
      const auto wv = hn::LoadU(d8, block + k * 32);
      const auto magnitude = Rows::kOffset ? wv : hn::Abs(wv);
      for (size_t c = 0; c < C; ++c) {
        int32_t four;
        std::memcpy(&four, xq[c] + b * kQuantBlock + 4 * k, 4);
        const auto xv = hn::BitCast(d8, hn::Set(d32, four));
        dot[c] = DotUnsigned(dot[c], magnitude, Rows::kOffset ? xv : V<DI8>{_mm256_sign_epi8(xv.raw, wv.raw)});
      }
    }
    const auto scales = hn::LoadU(df, reinterpret_cast<const float*>(block + kLaneRows * kQuantBlock));
    for (size_t c = 0; c < C; ++c)
      acc[c] = hn::MulAdd(hn::ConvertTo(df, dot[c]), hn::Mul(scales, hn::Set(df, xd[c][b])), acc[c]);
  }
  for (size_t c = 0; c < C; ++c) hn::StoreU(acc[c], df, sums + c * kLaneRows);
}
#endif

template <size_t R, size_t C, class Rows>
HWY_INLINE void FloatTile(float* sums, const Rows& w, const int64_t* rows, const float* const* x, int64_t K) {
  const DF df;
  const int64_t N = int64_t(hn::Lanes(df));
  V<DF> acc[R][C];
  float tail[R][C] = {};
  for (auto& row : acc)
    for (auto& a : row) a = hn::Zero(df);
  const int64_t chunk = Rows::kScaleCols ? Rows::kScaleCols : K;  // inputs sharing one scale
  for (int64_t k0 = 0; k0 < K; k0 += chunk) {
    const int64_t k1 = std::min(K, k0 + chunk);
    V<DF> part[R][C];
    for (auto& row : part)
      for (auto& a : row) a = hn::Zero(df);
    int64_t k = k0;
    for (; k + N <= k1; k += N) {
      V<DF> wv[R];
      for (size_t r = 0; r < R; ++r) wv[r] = w.Load(df, rows[r], k);
      for (size_t c = 0; c < C; ++c) {
        const auto xv = hn::LoadU(df, x[c] + k);
        for (size_t r = 0; r < R; ++r) part[r][c] = hn::MulAdd(wv[r], xv, part[r][c]);
      }
    }
    for (size_t r = 0; r < R; ++r) {
      const float scale = w.Scale(rows[r], k0);
      for (size_t c = 0; c < C; ++c) {
        float rest = 0;
        for (int64_t j = k; j < k1; ++j) rest = std::fma(w.Element(rows[r], j), x[c][j], rest);
        tail[r][c] = std::fma(rest, scale, tail[r][c]);
        acc[r][c] = Rows::kScaleCols ? hn::MulAdd(part[r][c], hn::Set(df, scale), acc[r][c]) : part[r][c];
      }
    }
  }
  for (size_t r = 0; r < R; ++r)
    for (size_t c = 0; c < C; ++c) sums[r * C + c] = hn::GetLane(hn::SumOfLanes(df, acc[r][c])) + tail[r][c];
}

// A tile's rows of a float format decoded once into an fp32 buffer, unscaled: Load and Element give
// bit for bit what the format's own give, so FloatTile sums exactly the same products either way.
template <class Rows>
struct DecodedRows {
  static constexpr bool kInt8 = false;
  static constexpr int64_t kScaleCols = Rows::kScaleCols;
  const float* data;  // [R, cols]
  int64_t cols;
  const Rows& w;
  const int64_t* rows;  // the buffer's rows in w
  V<DF> Load(DF df, int64_t r, int64_t k) const { return hn::LoadU(df, data + r * cols + k); }
  float Element(int64_t r, int64_t k) const { return data[r * cols + k]; }
  float Scale(int64_t r, int64_t k) const { return w.Scale(rows[r], k); }
};

// An int8 format read as a float one (--numerics exact, ops/numerics.h): rows dequantized block by
// block to fp32 (code x scale, exact in fp32) into the tile's buffer, which FloatTile multiplies by
// the fp32 activations. Tiles always take the buffered path (DecodedRows), for any number of tokens.
template <class Int8>
struct ExactRows {
  static constexpr bool kInt8 = false;
  static constexpr int64_t kScaleCols = 0;
  Int8 w;
  explicit ExactRows(const WeightView& W) : w(W) {}
  void Dequantize(float* out, int64_t row, int64_t k0, int64_t n, bool /*unscaled: no scale apart*/ = false) const {
    w.Dequantize(out, row, k0, n);
  }
  float Scale(int64_t, int64_t) const { return 1; }
};
// llama.cpp's block formats (ops/ggml_blocks.h) read as float ones (--numerics exact, and Q2_K, Q3_K
// and Q6_K on the SCALAR target): each tile's rows decoded to fp32 by the scalar reference into the
// tile's buffer, as ExactRows does.
struct GgmlBlockRows {
  static constexpr bool kInt8 = false;
  static constexpr int64_t kScaleCols = 0;
  GgmlBlock format;
  const std::byte* data;
  int64_t row_bytes, block_elements, block_bytes;
  explicit GgmlBlockRows(const WeightView& W)
      : format(*ggml_block_of(W.dtype)),
        data(static_cast<const std::byte*>(W.data)),
        row_bytes(W.row_bytes()),
        block_elements(dtype_block_size(W.dtype)),
        block_bytes(int64_t(dtype_size(W.dtype))) {}
  // k0 and n are whole blocks (every caller decodes whole rows).
  void Dequantize(float* out, int64_t row, int64_t k0, int64_t n, bool /*unscaled: no scale apart*/ = false) const {
    dequantize_ggml_blocks(format, data + row * row_bytes + k0 / block_elements * block_bytes, out, n);
  }
  float Scale(int64_t, int64_t) const { return 1; }
};

template <class Rows>
constexpr bool kExactRows = false;
template <class Int8>
constexpr bool kExactRows<ExactRows<Int8>> = true;
template <>
constexpr bool kExactRows<GgmlBlockRows> = true;

// One row tile's sums for tokens [t_begin, t_end) into `out`, C tokens at a time. Edge tiles repeat
// their last row or token (same work, no extra instantiations) and store only the real ones.
template <size_t R, size_t C, class Rows>
HWY_INLINE void TileTokens(const TileOutput& out, const float* x, const QuantizedActivations& xq, int64_t t_begin,
                           int64_t t_end, int64_t K, const Rows& w, const int64_t* rows) {
  for (int64_t t0 = t_begin; t0 < t_end; t0 += C) {
    float sums[R * C];
    if constexpr (Rows::kInt8) {
      const int8_t* q[C];
      const float* d[C];
      const int32_t* s[C];
      for (size_t c = 0; c < C; ++c) {
        const int64_t t = std::min<int64_t>(t0 + c, t_end - 1);
        q[c] = xq.q.data() + t * K;
        d[c] = xq.d.data() + t * (K / kQuantBlock);
        s[c] = xq.sums.data() + t * (K / kQuantBlock);
      }
#if HWY_TARGET == HWY_AVX3_DL
      if constexpr (Rows::kPairs) {
        Int8PairTile<R, C>(sums, w, rows, q, d, K / kQuantBlock);
      } else
#endif
        Int8Tile<R, C>(sums, w, rows, q, d, s, K / kQuantBlock);
    } else {
      const float* xs[C];
      for (size_t c = 0; c < C; ++c) xs[c] = x + std::min<int64_t>(t0 + c, t_end - 1) * K;
      FloatTile<R, C>(sums, w, rows, xs, K);
    }
    for (size_t c = 0; c < C && t0 + int64_t(c) < t_end; ++c)
      for (size_t r = 0; r < size_t(out.n); ++r) out.Store(t0 - t_begin + int64_t(c), r, sums[r * C + c]);
  }
}

#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3
// TileTokens in row lanes (R = 8): tokens one at a time from the rows as stored, or, given `packed`
// (from kDecodeMinTokens tokens on), C at a time from the tile's rows packed once.
template <size_t C, class Rows>
HWY_INLINE void RowLaneTokens(const TileOutput& out, const QuantizedActivations& xq, int64_t t_begin, int64_t t_end,
                              int64_t K, const Rows& w, const int64_t* rows, std::vector<int8_t>* packed) {
  const int64_t blocks = K / kQuantBlock;
  const auto store = [&](const float* sums, int64_t t0, int64_t n_tokens) {
    for (int64_t c = 0; c < n_tokens; ++c)
      for (size_t r = 0; r < size_t(out.n); ++r) out.Store(t0 - t_begin + c, r, sums[c * int64_t(kLaneRows) + r]);
  };
  if (!packed) {
    for (int64_t t = t_begin; t < t_end; ++t) {
      float sums[kLaneRows];
      RowLaneMatvec(sums, w, rows, xq.q.data() + t * K, xq.d.data() + t * blocks, xq.sums.data() + t * blocks, blocks);
      store(sums, t, 1);
    }
    return;
  }
  packed->resize(std::max(packed->size(), size_t(blocks * kPackedBytes)));
  PackRowLanes(packed->data(), w, rows, blocks);
  for (int64_t t0 = t_begin; t0 < t_end; t0 += C) {
    const int8_t* q[C];
    const float* d[C];
    const int32_t* block_sums[C];
    for (size_t c = 0; c < C; ++c) {
      const int64_t t = std::min<int64_t>(t0 + int64_t(c), t_end - 1);
      q[c] = xq.q.data() + t * K;
      d[c] = xq.d.data() + t * blocks;
      block_sums[c] = xq.sums.data() + t * blocks;
    }
    float sums[C * kLaneRows];
    RowLaneTile<C, Rows>(sums, packed->data(), q, d, block_sums, blocks);
    store(sums, t0, std::min<int64_t>(int64_t(C), t_end - t0));
  }
}
#endif

// Each thread's working memory, grown as needed and kept from call to call.
struct TileBuffers {
  std::vector<float> decoded;  // [R, K]: a tile's rows of a float format, decoded once
  std::vector<float> up_sums;  // [token block, R]: the up projection's tile before SwiGLU
  std::vector<int8_t> packed;  // [blocks, kPackedBytes]: a tile's int8 rows in row lanes
};

// How far each lane's walk through its part of the matrix is turned (StridedTiles): lane r of tile t
// holds row r * S + (t + r * shift) % S. Parts S rows apart start at the same offset within a 4 KB
// page whenever S times the row's bytes is a multiple of 4 KB (most of a model's shapes), so all R
// streams fall on the same L1 and L2 sets. The shift (the smallest such, below 64) that puts the
// lanes' offsets within a page, r * step, furthest apart. Rows longer than a page keep their places:
// no shift helped them (docs/performance.md lists this as open).
HWY_INLINE int64_t LaneShift(int64_t tiles, int64_t row_bytes, size_t lanes) {
  constexpr int64_t kPage = 4096;
  if (row_bytes > kPage) return 0;
  int64_t best_shift = 0, best_gap = -1;
  for (int64_t shift = 0; shift < std::min<int64_t>(tiles, 64); ++shift) {
    const int64_t step = (tiles + shift) * row_bytes % kPage;  // lane r + 1's offset less lane r's
    int64_t gap = kPage;  // the closest two lanes: lanes k apart are k * step apart, around the page
    for (int64_t k = 1; k < int64_t(lanes); ++k) {
      const int64_t offset = k * step % kPage;
      gap = std::min(gap, std::min(offset, kPage - offset));
    }
    if (gap > best_gap) best_gap = gap, best_shift = shift;
    if (best_gap >= kPage / int64_t(lanes)) break;  // evenly spread: no shift does better
  }
  return best_shift;
}

// Row tiles [tile_begin, tile_end) of one task (StridedTiles), all its tokens, on the calling thread;
// with `up`, y = swiglu(x @ w^T, x @ up^T) in the same pass (the expert's first two matrices, no
// [T, n_rows] intermediate): each tile's two products combined as soon as both are done, or for one
// token the range's, through a buffer of the range's rows. Tokens go in blocks whose activations stay
// in L2 while the range's rows, also in L2, pass over them.
template <size_t R, size_t C, class Rows>
void TileRange(const MatmulTask& task, const QuantizedActivations& xq, const Rows& w, const Rows* up,
               float swiglu_limit, int64_t tile_begin, int64_t tile_end, TileBuffers& buffers) {
  const int64_t T = task.T, n_rows = task.weight->rows, K = task.weight->cols;
  const int64_t tiles = (n_rows + int64_t(R) - 1) / int64_t(R);
  const int64_t token_bytes = Rows::kInt8 ? K + K / kQuantBlock * 4 : K * 4;
  const int64_t block = std::max<int64_t>(C, kTokenBlockBytes / token_bytes / C * C);
  const bool decode = kExactRows<Rows> || (!Rows::kInt8 && !std::is_same_v<Rows, F32Rows> && T >= kDecodeMinTokens);
  if (decode) buffers.decoded.resize(std::max(buffers.decoded.size(), size_t(R * K)));
  int64_t lanes[R];  // the up projection's sums go to lane r of a buffer
  for (size_t r = 0; r < R; ++r) lanes[r] = int64_t(r);
  // One tile of `weight`'s rows for tokens [t_begin, t_end) into out.
  auto tile_products = [&](const TileOutput& out, const Rows& weight, const int64_t* rows, int64_t t_begin,
                           int64_t t_end) {
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3
    if constexpr (RowLanes<Rows>())
      return RowLaneTokens<C>(out, xq, t_begin, t_end, K, weight, rows,
                              T >= kDecodeMinTokens ? &buffers.packed : nullptr);
#endif
    if constexpr (!Rows::kInt8) {
      if (decode) {
        for (size_t r = 0; r < R; ++r)
          weight.Dequantize(buffers.decoded.data() + r * K, rows[r], 0, K, /*unscaled=*/true);
        const DecodedRows<Rows> buffered{buffers.decoded.data(), K, weight, rows};
        return TileTokens<R, C>(out, task.x, xq, t_begin, t_end, K, buffered, lanes);
      }
    }
    if constexpr (!kExactRows<Rows>) TileTokens<R, C>(out, task.x, xq, t_begin, t_end, K, weight, rows);
  };
  // Turned lanes only where tiles stream the weights once per token (memory bound); the packed and
  // decoded tiles of more tokens read their rows from cache and only lose locality to the turn.
  const int64_t shift = T < kDecodeMinTokens ? LaneShift(tiles, task.weight->row_bytes(), R) : 0;
  int64_t turn[R];  // (r * shift) % tiles, so that no tile divides (an integer division is slow)
  for (size_t r = 0; r < R; ++r) turn[r] = int64_t(r) * shift % tiles;
  // The rows of `tile` (StridedTiles); lanes past the last row repeat it. Returns how many lanes hold
  // a row of their own (the first ones: only one lane's part of the matrix can end past the last row).
  auto tile_rows = [&](int64_t tile, int64_t* rows) {
    int64_t real = 0;
    for (size_t r = 0; r < R; ++r) {
      const int64_t turned = tile + turn[r];
      const int64_t row = int64_t(r) * tiles + (turned >= tiles ? turned - tiles : turned);
      rows[r] = std::min(row, n_rows - 1);
      real += row < n_rows;
    }
    return real;
  };
  // With `up`, one token (decode) takes all the range's tiles of `weight`, then all of `up`: R streams
  // at a time, where alternating tile by tile kept 2R streams and read memory slower. More tokens
  // alternate tile by tile, so that both products of a tile are still in cache.
  const int64_t chunk = T == 1 ? tile_end - tile_begin : 1;
  if (up) buffers.up_sums.resize(std::max(buffers.up_sums.size(), size_t(chunk * std::min(T, block) * R)));
  for (int64_t t_begin = 0; t_begin < T; t_begin += block) {
    const int64_t t_end = std::min(T, t_begin + block), n_tokens = t_end - t_begin;
    for (int64_t chunk_begin = tile_begin; chunk_begin < tile_end; chunk_begin += chunk) {
      const int64_t chunk_end = std::min(tile_end, chunk_begin + chunk);
      int64_t rows[R];
      for (int64_t tile = chunk_begin; tile < chunk_end; ++tile) {
        const int64_t real = tile_rows(tile, rows);
        tile_products(TileOutput{task.y + t_begin * n_rows, n_rows, rows, real}, w, rows, t_begin, t_end);
      }
      if (!up) continue;
      // up_sums [chunk tiles, tokens, R]
      for (int64_t tile = chunk_begin; tile < chunk_end; ++tile) {
        const int64_t real = tile_rows(tile, rows);
        float* up_sums = buffers.up_sums.data() + (tile - chunk_begin) * n_tokens * int64_t(R);
        tile_products(TileOutput{up_sums, int64_t(R), lanes, real}, *up, rows, t_begin, t_end);
      }
      for (int64_t tile = chunk_begin; tile < chunk_end; ++tile) {
        const int64_t real = tile_rows(tile, rows);
        const float* up_sums = buffers.up_sums.data() + (tile - chunk_begin) * n_tokens * int64_t(R);
        for (int64_t t = 0; t < n_tokens; ++t)
          for (int64_t r = 0; r < real; ++r) {
            float& y = task.y[(t_begin + t) * n_rows + rows[r]];
            y = swiglu_value(y, up_sums[t * int64_t(R) + r], swiglu_limit);
          }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Activations to q8_0 blocks, bit for bit quantize_row_q8_0 (same division, reciprocal and product;
// rounding half away from zero done exactly), vectorized because decode runs it for every matmul.

void QuantizeActivations(QuantizedActivations* out, const float* x, int64_t T, int64_t K, bool even_odd) {
  const int64_t blocks = K / kQuantBlock;
  out->q.resize(size_t(T * K));
  out->d.resize(size_t(T * blocks));
  out->sums.resize(size_t(T * blocks));
  parallel_for(T, T * K >= kParallelGrain, [&](int64_t t) HWY_ATTR {
    for (int64_t b = 0; b < blocks; ++b) {
      const DF df;
      const hn::RebindToSigned<DF> di;
      const float* v = x + t * K + b * kQuantBlock;
      int8_t* q = out->q.data() + t * K + b * kQuantBlock;
      auto amax = hn::Zero(df);
      for (size_t j = 0; j < kQuantBlock; j += hn::Lanes(df)) amax = hn::Max(amax, hn::Abs(hn::LoadU(df, v + j)));
      const float d = hn::GetLane(hn::MaxOfLanes(df, amax)) / 127;
      const auto inverse = hn::Set(df, d != 0 ? 1 / d : 0);
      for (size_t j = 0; j < kQuantBlock; j += hn::Lanes(df)) {
        const auto scaled = hn::Mul(hn::LoadU(df, v + j), inverse);
        const auto whole = hn::Trunc(scaled);
        const auto away = hn::Add(whole, hn::CopySign(hn::Set(df, 1.f), scaled));
        const auto rounded =
            hn::ConvertTo(di, hn::IfThenElse(hn::Abs(hn::Sub(scaled, whole)) >= hn::Set(df, 0.5f), away, whole));
        hn::StoreU(hn::DemoteTo(hn::Rebind<int8_t, DF>(), rounded), hn::Rebind<int8_t, DF>(), q + j);
      }
      if (even_odd) {  // FP4 weights: even elements first, matching the low nibbles
        int8_t natural[kQuantBlock];
        std::memcpy(natural, q, kQuantBlock);
        for (int j = 0; j < kQuantBlock / 2; ++j) {
          q[j] = natural[2 * j];
          q[j + kQuantBlock / 2] = natural[2 * j + 1];
        }
      }
      out->d[t * blocks + b] = f16_to_f32(f32_to_f16(d));
      int32_t sum = 0;
      for (int j = 0; j < kQuantBlock; ++j) sum += q[j];
      out->sums[t * blocks + b] = sum;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Entry points (one per target, picked by HWY_DYNAMIC_DISPATCH).

// `exact`: the int8 formats as float ones (ExactRows), against fp32 activations.
template <class Op>
void WithRows(const WeightView& W, bool exact, Op&& op) {
  switch (W.dtype) {
    case DType::F32:
      return op(F32Rows(W));
    case DType::F16:
      return op(HalfRows<hwy::float16_t>(W));
    case DType::BF16:
      return op(HalfRows<hwy::bfloat16_t>(W));
    case DType::F8_E4M3:
      return W.scale_block == kFp8SmallBlockSize ? op(Fp8Rows<kFp8SmallBlockSize>(W)) : op(Fp8Rows<kFp8BlockSize>(W));
    case DType::Q8_0:
      return exact ? op(ExactRows<Q8Rows>(W)) : op(Q8Rows(W));
    case DType::Q4_0:
      return exact ? op(ExactRows<Q4Rows>(W)) : op(Q4Rows(W));
    case DType::F4_E2M1:
      return exact ? op(ExactRows<Fp4Rows>(W)) : op(Fp4Rows(W));
    case DType::Q4_1:
      return exact ? op(GgmlBlockRows(W)) : op(LegacyRows<GgmlBlock::Q4_1>(W));
    case DType::Q5_0:
      return exact ? op(GgmlBlockRows(W)) : op(LegacyRows<GgmlBlock::Q5_0>(W));
    case DType::Q5_1:
      return exact ? op(GgmlBlockRows(W)) : op(LegacyRows<GgmlBlock::Q5_1>(W));
    case DType::IQ4_NL:
      return exact ? op(GgmlBlockRows(W)) : op(Iq4Rows<GgmlBlock::IQ4_NL>(W));
    case DType::IQ4_XS:
      return exact ? op(GgmlBlockRows(W)) : op(Iq4Rows<GgmlBlock::IQ4_XS>(W));
    case DType::MXFP4:
      return exact ? op(GgmlBlockRows(W)) : op(Mxfp4Rows(W));
    case DType::Q4_K:
      return exact ? op(GgmlBlockRows(W)) : op(Q4KRows(W));
    case DType::Q5_K:
      return exact ? op(GgmlBlockRows(W)) : op(Q5KRows(W));
#if HWY_TARGET != HWY_SCALAR
    case DType::Q6_K:
      return exact ? op(GgmlBlockRows(W)) : op(Q6KRows(W));
    case DType::Q3_K:
      return exact ? op(GgmlBlockRows(W)) : op(Q3KRows(W));
    case DType::Q2_K:
      return exact ? op(GgmlBlockRows(W)) : op(Q2KRows(W));
#endif
    default:
      if (ggml_block_of(W.dtype)) return op(GgmlBlockRows(W));
      fail("weight format {} is not supported by the matrix kernels", dtype_name(W.dtype));
  }
}

// Every task's row tiles in one parallel pass: the tiles are cut into ranges that threads take as they
// finish, so a few small experts keep every core busy without starting a team of threads per matrix.
// xq [n]: each task's activations rounded to q8_0 where its format multiplies in int8 (not `exact`).
void MatmulTasks(const MatmulTask* tasks, size_t n, const QuantizedActivations* xq, float swiglu_limit, bool exact) {
  struct Range {
    size_t task;
    int64_t tile_begin, tile_end;
  };
  // A task's tile count depends on its format and T (TileRows).
  auto tile_count = [&](const MatmulTask& task) {
    int64_t R = 0;
    WithRows(*task.weight, exact,
             [&](const auto& w) { R = int64_t(TileRows<std::decay_t<decltype(w)>>(task.T == 1)); });
    return (task.weight->rows + R - 1) / R;
  };
  int64_t total_tiles = 0;
  for (size_t i = 0; i < n; ++i) total_tiles += tile_count(tasks[i]);
  // About 8 ranges per thread in all, each at least one tile and within one task.
  const int64_t per_range = std::max<int64_t>(1, total_tiles / (8 * int64_t(omp_get_max_threads())));
  std::vector<Range> ranges;
  for (size_t i = 0; i < n; ++i) {
    const int64_t tiles = tile_count(tasks[i]);
    for (int64_t begin = 0; begin < tiles; begin += per_range)
      ranges.push_back({i, begin, std::min(tiles, begin + per_range)});
  }
  parallel_for<Schedule::Dynamic>(int64_t(ranges.size()), ranges.size() > 1, [&](int64_t r) HWY_ATTR {
    thread_local TileBuffers buffers;
    const Range& range = ranges[r];
    const MatmulTask& task = tasks[range.task];
    WithRows(*task.weight, exact, [&](const auto& w) {
      using Rows = std::decay_t<decltype(w)>;
      const std::optional<Rows> up = task.up ? std::optional<Rows>(*task.up) : std::nullopt;
      const Rows* up_rows = up ? &*up : nullptr;
      if (task.T == 1)
        return TileRange<TileRows<Rows>(true), 1>(task, xq[range.task], w, up_rows, swiglu_limit, range.tile_begin,
                                                  range.tile_end, buffers);
      TileRange<TileRows<Rows>(false), TokensPerTile<Rows>()>(task, xq[range.task], w, up_rows, swiglu_limit,
                                                              range.tile_begin, range.tile_end, buffers);
    });
  });
}

// out [width] = sum over s of weights[s] * rows[s * stride + j], s in order, each output its own
// lane: the attention's weighted sum of cached values, vectorized along the outputs.
void WeightedRowSum(float* out, const float* weights, const float* rows, int64_t n, int64_t width, int64_t stride) {
  const DF df;
  const int64_t N = int64_t(hn::Lanes(df));
  constexpr int64_t kVectors = 4;  // outputs held in registers while the rows stream past
  int64_t j0 = 0;
  for (; j0 + kVectors * N <= width; j0 += kVectors * N) {
    V<DF> sums[kVectors];
    for (auto& v : sums) v = hn::Zero(df);
    for (int64_t s = 0; s < n; ++s) {
      const auto w = hn::Set(df, weights[s]);
      for (int64_t v = 0; v < kVectors; ++v)
        sums[v] = hn::MulAdd(w, hn::LoadU(df, rows + s * stride + j0 + v * N), sums[v]);
    }
    for (int64_t v = 0; v < kVectors; ++v) hn::StoreU(sums[v], df, out + j0 + v * N);
  }
  const hn::CappedTag<float, 1> d1;  // the rest one output at a time, with the same MulAdd
  for (int64_t j = j0; j < width; ++j) {
    auto sum = hn::Zero(d1);
    for (int64_t s = 0; s < n; ++s)
      sum = hn::MulAdd(hn::Set(d1, weights[s]), hn::LoadU(d1, rows + s * stride + j), sum);
    hn::StoreU(sum, d1, out + j);
  }
}

float Dot(const float* a, const float* b, int64_t n) {
  const DF df;
  const int64_t N = int64_t(hn::Lanes(df));
  auto even = hn::Zero(df), odd = hn::Zero(df);  // two chains, so consecutive FMAs need not wait
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    even = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), even);
    odd = hn::MulAdd(hn::LoadU(df, a + i + N), hn::LoadU(df, b + i + N), odd);
  }
  if (i + N <= n) {
    even = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), even);
    i += N;
  }
  float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(even, odd)));
  for (; i < n; ++i) sum = std::fma(a[i], b[i], sum);
  return sum;
}

// Whether this target multiplies `format` in int8 against activations rounded to q8_0 blocks (in
// fast numerics): the formats WithRows gives int8 rows for.
bool QuantizesActivations(DType format) {
  bool int8 = false;
  const WeightView probe{.dtype = format};
  WithRows(probe, /*exact=*/false, [&](const auto& w) { int8 = std::decay_t<decltype(w)>::kInt8; });
  return int8;
}

void DequantizeRow(float* out, const WeightView& W, int64_t row) {
  WithRows(W, /*exact=*/false, [&](const auto& w) { w.Dequantize(out, row, 0, W.cols); });
}

}  // namespace megamoe::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace megamoe {
HWY_EXPORT(MatmulTasks);
HWY_EXPORT(DequantizeRow);
HWY_EXPORT(WeightedRowSum);
HWY_EXPORT(Dot);
HWY_EXPORT(QuantizeActivations);
HWY_EXPORT(QuantizesActivations);

bool matmul_quantizes_activations(DType weight_format) {
  return numerics() == Numerics::Fast && HWY_DYNAMIC_DISPATCH(QuantizesActivations)(weight_format);
}

void matmul_tasks(std::span<const MatmulTask> tasks, float swiglu_limit) {
  thread_local std::vector<MatmulTask> runnable;
  thread_local std::vector<QuantizedActivations> xq;  // reused: decode runs this thousands of times a second
  runnable.clear();
  for (const MatmulTask& task : tasks) {
    const WeightView& W = *task.weight;
    W.check();
    if (task.up) {
      task.up->check();
      if (task.up->rows != W.rows || task.up->cols != W.cols || task.up->dtype != W.dtype)
        fail("gate {} [{}, {}] and up {} [{}, {}] projections differ", dtype_name(W.dtype), W.rows, W.cols,
             dtype_name(task.up->dtype), task.up->rows, task.up->cols);
    }
    if (task.T <= 0 || W.rows <= 0) continue;
    if (W.cols == 0) std::fill_n(task.y, task.T * W.rows, task.up ? swiglu_value(0, 0, swiglu_limit) : 0.f);
    else runnable.push_back(task);
  }
  if (xq.size() < runnable.size()) xq.resize(runnable.size());
  // Many tasks (experts) are rounded in one parallel loop over them; one large task in parallel
  // inside QuantizeActivations instead.
  int64_t rounded = 0;
  for (const MatmulTask& task : runnable)
    if (matmul_quantizes_activations(task.weight->dtype)) rounded += task.T * task.weight->cols;
  // Plain pointers: inside the parallel loop a thread_local name would be each thread's own.
  const MatmulTask* tasks_to_round = runnable.data();
  QuantizedActivations* rounded_xq = xq.data();
  const int64_t n_tasks = int64_t(runnable.size());
  parallel_for<Schedule::Dynamic>(n_tasks, n_tasks > 1 && rounded >= kParallelGrain, [&](int64_t i) {
    const MatmulTask& task = tasks_to_round[i];
    const auto quantize = HWY_DYNAMIC_DISPATCH(QuantizeActivations);
    if (matmul_quantizes_activations(task.weight->dtype))
      quantize(&rounded_xq[i], task.x, task.T, task.weight->cols, task.weight->dtype == DType::F4_E2M1);
  });
  const auto run = HWY_DYNAMIC_DISPATCH(MatmulTasks);
  if (!runnable.empty()) run(runnable.data(), runnable.size(), xq.data(), swiglu_limit, numerics() == Numerics::Exact);
}

void matmul(float* y, const float* x, int64_t T, const WeightView& W) {
  const MatmulTask task{y, x, T, &W};
  matmul_tasks({&task, 1});
}

void matmul_swiglu(float* h, const float* x, int64_t T, const WeightView& gate, const WeightView& up,
                   float swiglu_limit) {
  if (gate.dtype == up.dtype) {
    const MatmulTask task{h, x, T, &gate, &up};
    return matmul_tasks({&task, 1}, swiglu_limit);
  }
  if (gate.rows != up.rows || gate.cols != up.cols)
    fail("gate [{}, {}] and up [{}, {}] projections differ in shape", gate.rows, gate.cols, up.rows, up.cols);
  std::vector<float> up_products(size_t(T * up.rows));  // [T, I]: formats differ, so two passes
  matmul(h, x, T, gate);
  matmul(up_products.data(), x, T, up);
  swiglu(h, up_products.data(), T * gate.rows, swiglu_limit);
}

void weighted_row_sum(float* out, const float* weights, const float* rows, int64_t n, int64_t width, int64_t stride) {
  HWY_DYNAMIC_DISPATCH(WeightedRowSum)(out, weights, rows, n, width, stride);
}

float dot(const float* a, const float* b, int64_t n) { return HWY_DYNAMIC_DISPATCH(Dot)(a, b, n); }

void dequantize_row(float* out, const WeightView& W, int64_t row) {
  W.check();
  if (row < 0 || row >= W.rows) fail("row {} is outside a {} weight of {} rows", row, dtype_name(W.dtype), W.rows);
  HWY_DYNAMIC_DISPATCH(DequantizeRow)(out, W, row);
}

std::vector<std::string> matmul_targets() {
  std::vector<std::string> names;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) names.emplace_back(hwy::TargetName(target));
  return names;
}

void matmul_use_target(const std::string& name) {
  hwy::SetSupportedTargetsForTest(0);
  if (name.empty()) return;
  for (int64_t target : hwy::SupportedAndGeneratedTargets())
    if (name == hwy::TargetName(target)) return hwy::SetSupportedTargetsForTest(target);
  fail("SIMD target {} is not one of this build's and CPU's ({})", name, fmt::join(matmul_targets(), ", "));
}

}  // namespace megamoe
#endif  // HWY_ONCE
