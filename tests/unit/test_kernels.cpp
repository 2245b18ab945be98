// The matrix kernels (ops/matmul_kernels.cpp) against their slow references, for every weight format,
// on every SIMD target this CPU runs (the scalar fallback included), on random data with odd sizes;
// and the q8_0 / q4_0 / FP4 formats against llama.cpp's and DeepSeek's rules.
#include <gtest/gtest.h>

#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/numerics.h"
#include "ops/quant.h"
#include "test_support.h"

namespace megamoe {

// Test names and failure messages show the parameters by name.
void PrintTo(DType format, std::ostream* out) { *out << dtype_name(format); }
void PrintTo(Numerics mode, std::ostream* out) { *out << numerics_name(mode); }

namespace {

using testing::random_floats;

bool is_block_format(DType format) {
  return format == DType::Q8_0 || format == DType::Q4_0 || format == DType::F4_E2M1;
}

// Restores the best SIMD target when a test ends, whatever it forced.
struct TargetGuard {
  ~TargetGuard() { matmul_use_target(""); }
};

// y = x @ W^T in double and sum |x_j * W_ij| (the scale of the rounding error) per output.
struct Reference {
  std::vector<double> y, magnitude;  // [T, rows]
};
Reference reference(const float* x, int64_t T, const WeightView& W) {
  Reference ref{std::vector<double>(size_t(T * W.rows)), std::vector<double>(size_t(T * W.rows))};
  std::vector<float> row(size_t(W.cols));
  for (int64_t i = 0; i < W.rows; ++i) {
    for (int64_t j = 0; j < W.cols; ++j) row[j] = weight_element(W, i, j);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < W.cols; ++j) {
        const double product = double(x[t * W.cols + j]) * row[j];
        ref.y[t * W.rows + i] += product;
        ref.magnitude[t * W.rows + i] += std::fabs(product);
      }
  }
  return ref;
}

// x rounded to q8_0 blocks and back, as matmul does before int8 products.
std::vector<float> round_activations(const std::vector<float>& x, int64_t cols) {
  std::vector<float> rounded(x.size());
  std::vector<BlockQ8_0> blocks(size_t(cols / kQuantBlock));
  for (size_t t = 0; t < x.size() / cols; ++t) {
    quantize_row_q8_0(blocks.data(), x.data() + t * cols, cols);
    dequantize_row_q8_0(rounded.data() + t * cols, blocks.data(), cols);
  }
  return rounded;
}

// Bound on |x @ W^T - xq @ W^T| per output: a q8_0 value is off by at most d/2 from rounding plus
// 127 d 2^-11 from storing d in fp16, so 0.6 d with d = amax / 127 of its block.
std::vector<double> activation_rounding_bound(const std::vector<float>& x, int64_t T, const WeightView& W) {
  std::vector<double> bound(size_t(T * W.rows));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < W.cols / kQuantBlock; ++b) {
      double amax = 0;
      for (int64_t j = b * kQuantBlock; j < (b + 1) * kQuantBlock; ++j)
        amax = std::max(amax, double(std::fabs(x[t * W.cols + j])));
      for (int64_t i = 0; i < W.rows; ++i) {
        double weights = 0;
        for (int64_t j = b * kQuantBlock; j < (b + 1) * kQuantBlock; ++j) weights += std::fabs(weight_element(W, i, j));
        bound[t * W.rows + i] += 0.6 * amax / 127 * weights;
      }
    }
  return bound;
}

// Each test runs in one numerics mode (ops/numerics.h): every format in `fast`, and the int8 formats
// once more in `exact`, where they multiply fp32 activations by the dequantized weights.
class KernelTest : public ::testing::TestWithParam<std::tuple<DType, Numerics>> {
 protected:
  void SetUp() override { set_numerics(std::get<1>(GetParam())); }
  void TearDown() override { set_numerics(Numerics::Fast); }
};

// Every format x T in {1, 3, 17, 64, 160} x odd row counts x cols, on every target:
// against the double reference within fp32 summation error (on the rounded activations where matmul
// rounds them, whose distance to the unrounded reference is bounded separately).
TEST_P(KernelTest, MatmulMatchesReferenceOnEveryTarget) {
  const DType format = std::get<0>(GetParam());
  const std::vector<int64_t> all_cols =
      is_block_format(format) ? std::vector<int64_t>{32, 96, 288, 4160} : std::vector<int64_t>{1, 33, 289, 4161};
  const std::vector<std::string> targets = matmul_targets();
  ASSERT_FALSE(targets.empty());
  TargetGuard guard;
  uint32_t seed = 100;
  for (int64_t cols : all_cols)
    for (int64_t rows : {1, 7, 33, 130})
      for (int64_t T : {1, 3, 17, 64, 160}) {
        if (T > 64 && cols > 1000) continue;  // the reference would take most of the test's time
        const bool blocks = matmul_quantizes_activations(format);
        const std::vector<float> w = random_floats(size_t(rows * cols), seed++, 0.5f);
        const OwnedWeight weight = quantize_weight(format, w.data(), rows, cols);
        const std::vector<float> x = random_floats(size_t(T * cols), seed++);
        const std::vector<float> x_used = blocks ? round_activations(x, cols) : x;
        const Reference ref = reference(x_used.data(), T, weight.view);
        std::vector<double> rounding_bound;
        Reference unrounded;
        if (blocks) {
          rounding_bound = activation_rounding_bound(x, T, weight.view);
          unrounded = reference(x.data(), T, weight.view);
        }
        for (const std::string& target : targets) {
          matmul_use_target(target);
          std::vector<float> y(size_t(T * rows), NAN);
          matmul(y.data(), x.data(), T, weight.view);
          for (size_t i = 0; i < y.size(); ++i) {
            const std::string where = fmt::format("{} target {} T={} rows={} cols={} output {}", dtype_name(format),
                                                  target, T, rows, cols, i);
            ASSERT_NEAR(y[i], ref.y[i], 1e-5 * ref.magnitude[i] + 1e-30) << where;
            if (blocks) {
              ASSERT_NEAR(y[i], unrounded.y[i], rounding_bound[i] + 1e-5 * unrounded.magnitude[i]) << where;
            }
          }
        }
      }
}

TEST_P(KernelTest, QuantizedReferenceRoundsActivations) {
  const DType format = std::get<0>(GetParam());
  const int64_t rows = 5, cols = 64, T = 2;
  EXPECT_EQ(matmul_quantizes_activations(format), is_block_format(format) && numerics() == Numerics::Fast);
  const std::vector<float> w = random_floats(rows * cols, 1, 0.5f), x = random_floats(T * cols, 2);
  const OwnedWeight weight = quantize_weight(format, w.data(), rows, cols);
  std::vector<float> quantized(T * rows), plain(T * rows);
  matmul_reference_quantized(quantized.data(), x.data(), T, weight.view);
  matmul_reference(plain.data(), round_activations(x, cols).data(), T, weight.view);
  EXPECT_EQ(quantized, plain);
}

// Batch invariance: on every target, each output row of a batch is bit for bit the output of its
// token alone, of any split of the batch, of the batch reversed and of one thread; with enough tokens
// and inputs for several token blocks and the buffered-rows path, and odd sizes everywhere.
TEST_P(KernelTest, EveryTokenGetsTheSameBitsWhateverTheBatch) {
  const DType format = std::get<0>(GetParam());
  const int64_t T = 45, rows = 37;
  TargetGuard guard;
  for (int64_t cols : is_block_format(format) ? std::vector<int64_t>{96, 4160} : std::vector<int64_t>{33, 4161}) {
    const std::vector<float> w = random_floats(size_t(rows * cols), 31, 0.5f), x = random_floats(size_t(T * cols), 32);
    const OwnedWeight weight = quantize_weight(format, w.data(), rows, cols);
    std::vector<float> reversed_x(x.size());
    for (int64_t t = 0; t < T; ++t) std::copy_n(x.data() + t * cols, cols, reversed_x.data() + (T - 1 - t) * cols);
    for (const std::string& target : matmul_targets()) {
      matmul_use_target(target);
      std::vector<float> whole(size_t(T * rows)), got(size_t(T * rows), NAN);
      matmul(whole.data(), x.data(), T, weight.view);
      auto expect_same = [&](const std::string& how) {
        for (int64_t i = 0; i < T * rows; ++i)
          ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(whole[i]))
              << dtype_name(format) << " target " << target << " cols " << cols << " " << how << ": token " << i / rows
              << " row " << i % rows;
      };
      for (int64_t t = 0; t < T; ++t) matmul(got.data() + t * rows, x.data() + t * cols, 1, weight.view);
      expect_same("one token at a time");
      const int64_t splits[] = {0, 2, 5, 13, 20, 21, 40, T};  // sizes 2, 3, 8, 7, 1, 19, 5
      for (size_t s = 0; s + 1 < std::size(splits); ++s)
        matmul(got.data() + splits[s] * rows, x.data() + splits[s] * cols, splits[s + 1] - splits[s], weight.view);
      expect_same("split");
      std::vector<float> reversed(size_t(T * rows));
      matmul(reversed.data(), reversed_x.data(), T, weight.view);
      for (int64_t t = 0; t < T; ++t) std::copy_n(reversed.data() + (T - 1 - t) * rows, rows, got.data() + t * rows);
      expect_same("reversed");
      const int threads = omp_get_max_threads();
      omp_set_num_threads(threads == 1 ? 2 : 1);
      matmul(got.data(), x.data(), T, weight.view);
      omp_set_num_threads(threads);
      expect_same("other thread count");
    }
  }
}

// The fused MLP entry is bit for bit matmul, matmul and swiglu, with and without V4's clamp, for
// T = 1 and a batch spanning several token blocks, on every target; mixed formats take two passes.
// One token on 301 rows with one thread or several gives threads ranges of many tiles, which decode
// takes as all of gate's tiles, then all of up's.
TEST_P(KernelTest, MatmulSwigluEqualsTwoProductsAndSwiglu) {
  const DType format = std::get<0>(GetParam());
  const int64_t all_rows = 301, cols = is_block_format(format) ? 4160 : 4161;
  const std::vector<float> g = random_floats(size_t(all_rows * cols), 41, 0.5f),
                           u = random_floats(size_t(all_rows * cols), 42, 0.5f);
  const OwnedWeight gate = quantize_weight(format, g.data(), all_rows, cols),
                    up = quantize_weight(format, u.data(), all_rows, cols);
  const OwnedWeight up_f32 = quantize_weight(DType::F32, u.data(), all_rows, cols);
  const int threads = omp_get_max_threads();
  TargetGuard guard;
  for (const std::string& target : matmul_targets()) {
    matmul_use_target(target);
    for (auto [T, rows, n_threads] : {std::tuple{1, 37, threads}, {45, 37, threads}, {1, 301, 1}, {1, 301, threads}})
      for (float limit : {0.f, 0.05f})
        for (const OwnedWeight* up_weight : {&up, &up_f32}) {
          omp_set_num_threads(n_threads);
          const WeightView gate_rows = gate.view.row_slice(0, rows), up_rows = up_weight->view.row_slice(0, rows);
          const std::vector<float> x = random_floats(size_t(T * cols), 43);
          std::vector<float> fused(size_t(T * rows), NAN), expected(size_t(T * rows)), up_products(size_t(T * rows));
          matmul_swiglu(fused.data(), x.data(), T, gate_rows, up_rows, limit);
          matmul(expected.data(), x.data(), T, gate_rows);
          matmul(up_products.data(), x.data(), T, up_rows);
          swiglu(expected.data(), up_products.data(), T * rows, limit);
          for (int64_t i = 0; i < T * rows; ++i)
            ASSERT_EQ(std::bit_cast<uint32_t>(fused[i]), std::bit_cast<uint32_t>(expected[i]))
                << dtype_name(format) << " target " << target << " T " << T << " rows " << rows << " threads "
                << n_threads << " limit " << limit << " up " << dtype_name(up_weight->view.dtype) << " output " << i;
        }
  }
  omp_set_num_threads(threads);
  std::vector<float> h(1);
  EXPECT_THROW(matmul_swiglu(h.data(), g.data(), 1, gate.view, up.view.row_slice(0, all_rows - 1)), std::exception);
}

// A batch of tasks (the experts of an MoE layer: different token counts, fused SwiGLU or not, an empty
// one) gives each task bit for bit what it gives alone, with one thread or several.
TEST_P(KernelTest, MatmulTasksEqualEachTaskAlone) {
  const DType format = std::get<0>(GetParam());
  const int64_t cols = is_block_format(format) ? 96 : 97;
  const std::vector<int64_t> rows = {37, 5, 64, 1}, tokens = {1, 9, 0, 30};
  std::vector<OwnedWeight> weights;
  std::vector<std::vector<float>> x, y, alone;
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::vector<float> w = random_floats(size_t(rows[i] * cols), 50 + uint32_t(i), 0.5f);
    weights.push_back(quantize_weight(format, w.data(), rows[i], cols));
    x.push_back(random_floats(size_t(tokens[i] * cols), 60 + uint32_t(i)));
    y.emplace_back(size_t(tokens[i] * rows[i]), NAN);
    alone.emplace_back(size_t(tokens[i] * rows[i]));
  }
  const float limit = 0.05f;
  // Task 1 is a fused gate/up pair with weights[1] as gate and up.
  matmul(alone[0].data(), x[0].data(), tokens[0], weights[0].view);
  matmul_swiglu(alone[1].data(), x[1].data(), tokens[1], weights[1].view, weights[1].view, limit);
  matmul(alone[3].data(), x[3].data(), tokens[3], weights[3].view);
  std::vector<MatmulTask> tasks;
  for (size_t i = 0; i < rows.size(); ++i)
    tasks.push_back({y[i].data(), x[i].data(), tokens[i], &weights[i].view, i == 1 ? &weights[1].view : nullptr});
  const int threads = omp_get_max_threads();
  for (int n : {1, 2, 3}) {
    omp_set_num_threads(n);
    matmul_tasks(tasks, limit);
    for (size_t i = 0; i < rows.size(); ++i)
      for (size_t j = 0; j < y[i].size(); ++j)
        ASSERT_EQ(std::bit_cast<uint32_t>(y[i][j]), std::bit_cast<uint32_t>(alone[i][j]))
            << dtype_name(format) << " threads " << n << " task " << i << " output " << j;
  }
  omp_set_num_threads(threads);
}

// A copy of n bytes that ends where an inaccessible page begins, as an mmapped weight may end at the
// end of its mapping: a kernel reading one byte past it faults.
class BeforeGuardPage {
 public:
  BeforeGuardPage(const void* bytes, size_t n) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE)), span = (n + page - 1) / page * page;
    size_ = span + page;
    base_ = static_cast<uint8_t*>(mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    EXPECT_NE(base_, MAP_FAILED);
    EXPECT_EQ(mprotect(base_ + span, page, PROT_NONE), 0);
    data_ = base_ + span - n;
    if (n) std::memcpy(data_, bytes, n);
  }
  ~BeforeGuardPage() { munmap(base_, size_); }
  template <class T>
  const T* data() const {
    return reinterpret_cast<const T*>(data_);
  }

 private:
  uint8_t* base_;
  uint8_t* data_;
  size_t size_;
};

TEST_P(KernelTest, ReadsNothingPastTheWeight) {
  const DType format = std::get<0>(GetParam());
  const int64_t rows = 9, T = 5;
  TargetGuard guard;
  for (int64_t cols : is_block_format(format) ? std::vector<int64_t>{96, 128} : std::vector<int64_t>{33, 64}) {
    const std::vector<float> w = random_floats(size_t(rows * cols), 41, 0.5f), x = random_floats(size_t(T * cols), 42);
    const OwnedWeight weight = quantize_weight(format, w.data(), rows, cols);
    const BeforeGuardPage data(weight.data.data(), weight.data.size());
    const BeforeGuardPage scale_inv(weight.scale_inv.data(), weight.scale_inv.size() * sizeof(float));
    const BeforeGuardPage scale_e8m0(weight.scale_e8m0.data(), weight.scale_e8m0.size());
    WeightView guarded = weight.view;
    guarded.data = data.data<uint8_t>();
    if (guarded.scale_inv) guarded.scale_inv = scale_inv.data<float>();
    if (guarded.scale_e8m0) guarded.scale_e8m0 = scale_e8m0.data<uint8_t>();
    for (const std::string& target : matmul_targets()) {
      matmul_use_target(target);
      for (int64_t tokens : {int64_t(1), T}) {
        std::vector<float> expected(size_t(tokens * rows)), got(size_t(tokens * rows));
        matmul(expected.data(), x.data(), tokens, weight.view);
        matmul(got.data(), x.data(), tokens, guarded);
        for (size_t i = 0; i < got.size(); ++i)
          ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(expected[i]))
              << dtype_name(format) << " target " << target << " cols " << cols << " T " << tokens;
      }
    }
  }
}

TEST_P(KernelTest, DequantizeRowIsExactOnEveryTarget) {
  const DType format = std::get<0>(GetParam());
  const int64_t rows = 131, cols = is_block_format(format) ? 288 : 259;
  const std::vector<float> w = random_floats(rows * cols, 7, 0.5f);
  const OwnedWeight weight = quantize_weight(format, w.data(), rows, cols);
  TargetGuard guard;
  std::vector<float> row(cols);
  for (const std::string& target : matmul_targets()) {
    matmul_use_target(target);
    for (int64_t r : {0, 127, 128, 130}) {
      dequantize_row(row.data(), weight.view, r);
      for (int64_t c = 0; c < cols; ++c)
        ASSERT_EQ(row[c], weight_element(weight.view, r, c)) << target << " row " << r << " col " << c;
    }
  }
}

// Every FP8 code, subnormals included, decodes to its value on every target: in a row (the
// vector path, then the scalar tail of a 259-column row) and as the product with a one-hot token.
// 0x7f and 0xff are NaN in e4m3fn, which the kernels do not special-case; they are skipped.
TEST(KernelTargetTest, EveryFp8CodeDecodesExactly) {
  const int64_t cols = 259;
  std::vector<uint8_t> codes(cols);
  for (int64_t c = 0; c < cols; ++c) codes[c] = uint8_t(c % 256);
  const std::vector<float> scale_inv(3, 1.f);  // one row block, ceil(259 / 128) column blocks
  WeightView W;
  W.dtype = DType::F8_E4M3;
  W.rows = 1;
  W.cols = cols;
  W.data = codes.data();
  W.scale_inv = scale_inv.data();
  TargetGuard guard;
  std::vector<float> row(cols), x(cols, 0.f);
  for (const std::string& target : matmul_targets()) {
    matmul_use_target(target);
    dequantize_row(row.data(), W, 0);
    for (int64_t c = 0; c < cols; ++c) {
      const float expected = fp8_e4m3_to_f32(codes[c]);
      if (std::isnan(expected)) continue;
      ASSERT_EQ(row[c], expected) << target << " code " << int(codes[c]);
      x[c] = 1.f;
      float y = NAN;
      matmul(&y, x.data(), 1, W);
      x[c] = 0.f;
      ASSERT_EQ(y, expected) << target << " code " << int(codes[c]);
    }
  }
}

// Slices on and inside FP8's 128-row scale blocks (V4's wo_a groups of 64 rows) and a slice of a slice:
// the same elements as those rows of the whole weight and, through the kernels, the same bits.
TEST_P(KernelTest, RowSliceReadsTheSameRows) {
  const DType format = std::get<0>(GetParam());
  const int64_t rows = 300, cols = 160, T = 3;
  const std::vector<float> w = random_floats(rows * cols, 8, 0.5f), x = random_floats(T * cols, 9);
  const OwnedWeight weight = quantize_weight(format, w.data(), rows, cols);
  std::vector<float> whole(T * rows);
  matmul(whole.data(), x.data(), T, weight.view);
  const WeightView nested = weight.view.row_slice(100, 150).row_slice(30, 60);
  for (auto [first, count, slice] : {std::tuple{256L, 44L, weight.view.row_slice(256, 44)},
                                     {64L, 64L, weight.view.row_slice(64, 64)},
                                     {200L, 90L, weight.view.row_slice(200, 90)},
                                     {130L, 60L, nested}}) {
    for (int64_t r = 0; r < count; r += 7)
      for (int64_t c = 0; c < cols; c += 5)
        ASSERT_EQ(weight_element(slice, r, c), weight_element(weight.view, first + r, c)) << first << " " << r;
    std::vector<float> y(T * count);
    matmul(y.data(), x.data(), T, slice);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < count; ++r)
        ASSERT_EQ(std::bit_cast<uint32_t>(y[t * count + r]), std::bit_cast<uint32_t>(whole[t * rows + first + r]))
            << dtype_name(format) << " slice from " << first << " token " << t << " row " << r;
  }
  EXPECT_EQ(weight.view.bytes(), int64_t(weight.data.size() + weight.scale_inv.size() * 4 + weight.scale_e8m0.size()));
}

// DeepSeek-V4.1's FP8 weights scale each 32x32 block: every target against the reference, whole
// and in row slices that start inside a block.
TEST(KernelTargetTest, Fp8WithSmallScaleBlocksMatchesTheReference) {
  TargetGuard guard;
  uint32_t seed = 500;
  for (int64_t cols : {32, 96, 1056})
    for (int64_t rows : {1, 33, 70})
      for (int64_t T : {1, 5, 40}) {
        const std::vector<float> w = random_floats(size_t(rows * cols), seed++, 0.5f);
        const int64_t B = kFp8SmallBlockSize;
        std::vector<uint8_t> codes(size_t(rows * cols));
        std::vector<float> scales(size_t((rows + B - 1) / B * ((cols + B - 1) / B)));
        quantize_fp8_blocks(codes.data(), scales.data(), w.data(), rows, cols, true, B);
        const WeightView view{.dtype = DType::F8_E4M3,
                              .rows = rows,
                              .cols = cols,
                              .data = codes.data(),
                              .scale_inv = scales.data(),
                              .scale_block = B};
        EXPECT_EQ(view.bytes(), int64_t(codes.size() + scales.size() * 4));
        const std::vector<float> x = random_floats(size_t(T * cols), seed++);
        for (const WeightView& W : {view, view.row_slice(rows / 2, rows - rows / 2)}) {
          const Reference ref = reference(x.data(), T, W);
          for (const std::string& target : matmul_targets()) {
            matmul_use_target(target);
            std::vector<float> y(size_t(T * W.rows), NAN);
            matmul(y.data(), x.data(), T, W);
            for (size_t i = 0; i < y.size(); ++i)
              ASSERT_NEAR(y[i], ref.y[i], 1e-5 * ref.magnitude[i] + 1e-30)
                  << "target " << target << " T=" << T << " rows=" << W.rows << " cols=" << cols << " output " << i;
          }
        }
      }
}

std::string kernel_test_name(const ::testing::TestParamInfo<std::tuple<DType, Numerics>>& info) {
  const auto [format, mode] = info.param;
  return std::string(dtype_name(format)) + (mode == Numerics::Exact ? "_exact" : "");
}
INSTANTIATE_TEST_SUITE_P(AllFormats, KernelTest,
                         ::testing::Combine(::testing::Values(DType::F32, DType::F16, DType::BF16, DType::F8_E4M3,
                                                              DType::Q8_0, DType::Q4_0, DType::F4_E2M1),
                                            ::testing::Values(Numerics::Fast)),
                         kernel_test_name);
INSTANTIATE_TEST_SUITE_P(ExactNumerics, KernelTest,
                         ::testing::Combine(::testing::Values(DType::Q8_0, DType::Q4_0, DType::F4_E2M1),
                                            ::testing::Values(Numerics::Exact)),
                         kernel_test_name);

// The SIMD activation rounding on halves and near-halves: each output of a one-hot weight is one
// rounded activation, so any code off by one shows.
TEST(KernelTargetTest, ActivationsRoundLikeQuantizeRowQ8_0OnEveryTarget) {
  const int64_t n = 64;
  std::vector<float> x = random_floats(n, 21, 2.f);
  x[0] = 127;  // d = 1 in block 0
  const float halves[] = {0.5f, -0.5f, 2.5f, -2.5f, 0.49999997f, -1.5000001f, 126.5f, -126.5f};
  for (int j = 0; j < 8; ++j) x[1 + j] = halves[j];
  std::vector<float> identity(n * n, 0.f);
  for (int64_t j = 0; j < n; ++j) identity[j * n + j] = 1;
  TargetGuard guard;
  for (DType format : {DType::Q8_0, DType::F4_E2M1}) {  // F4_E2M1 also permutes each block
    const OwnedWeight w = quantize_weight(format, identity.data(), n, n);
    std::vector<float> want(n), got(n);
    matmul_reference_quantized(want.data(), x.data(), 1, w.view);
    for (const std::string& target : matmul_targets()) {
      matmul_use_target(target);
      matmul(got.data(), x.data(), 1, w.view);
      for (int64_t j = 0; j < n; ++j) ASSERT_NEAR(got[j], want[j], 1e-6 * std::fabs(want[j])) << target << " " << j;
    }
  }
}

// Each output is the same whatever the width around it (vector blocks or the one-output rest, so
// prefill and decode agree), on every target; against a double sum for the size of the error.
TEST(KernelTargetTest, WeightedRowSumGivesEachOutputAloneItsBits) {
  TargetGuard guard;
  const int64_t n = 37, stride = 300;
  const std::vector<float> weights = random_floats(n, 71), rows = random_floats(size_t(n * stride), 72);
  for (const std::string& target : matmul_targets()) {
    matmul_use_target(target);
    for (int64_t width : {1, 15, 64, 65, 257, 300}) {
      std::vector<float> out(size_t(width), NAN);
      weighted_row_sum(out.data(), weights.data(), rows.data(), n, width, stride);
      for (int64_t j = 0; j < width; ++j) {
        float alone = NAN;
        weighted_row_sum(&alone, weights.data(), rows.data() + j, n, 1, stride);
        double exact = 0;
        for (int64_t s = 0; s < n; ++s) exact += double(weights[s]) * rows[s * stride + j];
        ASSERT_EQ(std::bit_cast<uint32_t>(out[j]), std::bit_cast<uint32_t>(alone))
            << target << " width " << width << " output " << j;
        ASSERT_NEAR(out[j], exact, 1e-5) << target << " width " << width << " output " << j;
      }
    }
  }
}

TEST(KernelTargetTest, DotMatchesTheExactSumForEverySize) {
  TargetGuard guard;
  const std::vector<float> a = random_floats(300, 73), b = random_floats(300, 74);
  for (const std::string& target : matmul_targets()) {
    matmul_use_target(target);
    for (int64_t n : {0, 1, 15, 16, 31, 32, 33, 64, 96, 128, 257, 300}) {
      double exact = 0, magnitude = 0;  // fp32 sums err in proportion to the terms' sizes
      for (int64_t i = 0; i < n; ++i) exact += double(a[i]) * b[i], magnitude += std::abs(double(a[i]) * b[i]);
      const float sum = dot(a.data(), b.data(), n);
      ASSERT_NEAR(sum, exact, 1e-6 * (1 + magnitude)) << target << " n " << n;
      ASSERT_EQ(std::bit_cast<uint32_t>(sum), std::bit_cast<uint32_t>(dot(a.data(), b.data(), n)))
          << target << " n " << n;
    }
  }
}

TEST(KernelTargetTest, EmptyInputsGiveZeros) {
  const WeightView empty{.dtype = DType::BF16, .rows = 3, .cols = 0, .data = nullptr};
  std::vector<float> y(9 * 3, NAN);
  matmul(y.data(), nullptr, 9, empty);  // the packed path
  for (float v : y) EXPECT_EQ(v, 0.f);
}

TEST(KernelTargetTest, ListsTheFallbackAndRejectsUnknownTargets) {
  const std::vector<std::string> targets = matmul_targets();
  EXPECT_EQ(targets.back(), "SCALAR");
  testing::expect_error([] { matmul_use_target("NEON"); }, {"NEON", "SCALAR"});
}

// ---------------------------------------------------------------------------------------------
// Formats: llama.cpp's rules, worked by hand.

TEST(QuantTest, Q8_0RoundsHalvesAwayFromZero) {
  std::vector<float> x(32, 0.f);
  x[0] = 127;    // amax: d = 1
  x[1] = 0.5f;   // -> 1
  x[2] = -2.5f;  // -> -3
  x[3] = 2.49f;  // -> 2
  x[31] = -63.5f;
  BlockQ8_0 block;
  quantize_row_q8_0(&block, x.data(), 32);
  EXPECT_EQ(block.d, 0x3c00);  // fp16 1.0
  EXPECT_EQ(block.qs[0], 127);
  EXPECT_EQ(block.qs[1], 1);
  EXPECT_EQ(block.qs[2], -3);
  EXPECT_EQ(block.qs[3], 2);
  EXPECT_EQ(block.qs[31], -64);
  std::vector<float> back(32);
  dequantize_row_q8_0(back.data(), &block, 32);
  EXPECT_EQ(back[2], -3.f);
}

TEST(QuantTest, Q4_0KeepsTheSignOfTheLargestValueAndSplitsNibbles) {
  std::vector<float> x(32, 0.f);
  x[0] = -16;  // largest magnitude, negative: d = -16 / -8 = 2
  x[1] = 14;   // 14/2 + 8.5 = 15.5 -> 15
  x[2] = 1;    // 9.0 -> 9
  x[3] = -1;   // 8.0 -> 8
  x[16] = 15;  // 16.0 -> clamped to 15
  x[17] = -3;  // 7.0 -> 7
  BlockQ4_0 block;
  quantize_row_q4_0(&block, x.data(), 32);
  EXPECT_EQ(block.d, 0x4000);           // fp16 2.0
  EXPECT_EQ(block.qs[0], 0 | 15 << 4);  // element 0 low nibble, element 16 high nibble
  EXPECT_EQ(block.qs[1], 15 | 7 << 4);
  EXPECT_EQ(block.qs[2], 9 | 8 << 4);
  EXPECT_EQ(block.qs[3], 8 | 8 << 4);
  std::vector<float> back(32);
  dequantize_row_q4_0(back.data(), &block, 32);
  EXPECT_EQ(back[0], -16.f);
  EXPECT_EQ(back[16], 14.f);
  EXPECT_EQ(back[17], -2.f);
}

TEST(QuantTest, Fp4UsesAPowerOfTwoScaleAndTiesToEven) {
  std::vector<float> x(32, 0.f);
  x[0] = 12;    // amax 12: scale 2^ceil(log2(2)) = 2, code 6 (magnitude 6)
  x[1] = -5;    // -2.5 -> tie between 2 and 3: even code 4 (2) -> -4
  x[2] = 1.5f;  // 0.75 -> tie between 0.5 (code 1) and 1 (code 2): 1 -> 2
  x[3] = 0.2f;  // 0.1 -> 0
  uint8_t packed[16], scale;
  quantize_row_fp4(packed, &scale, x.data(), 32);
  EXPECT_EQ(scale, 128);                   // 2^1
  EXPECT_EQ(packed[0], 7 | (8 | 4) << 4);  // element 0 low nibble, element 1 high nibble
  EXPECT_EQ(packed[1], 2 | 0 << 4);
  std::vector<float> back(32);
  dequantize_row_fp4(back.data(), packed, &scale, 32);
  EXPECT_EQ(back[0], 12.f);
  EXPECT_EQ(back[1], -4.f);
  EXPECT_EQ(back[2], 2.f);
}

TEST(QuantTest, RoundTripsStayWithinHalfAStep) {
  const int64_t n = 32 * 37;
  const std::vector<float> x = random_floats(n, 11, 3.f);
  std::vector<float> back(n);
  for (DType format : {DType::Q8_0, DType::Q4_0, DType::F4_E2M1}) {
    const OwnedWeight w = quantize_weight(format, x.data(), 1, n);
    dequantize_row(back.data(), w.view, 0);
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0;
      for (int64_t j = b * 32; j < (b + 1) * 32; ++j) amax = std::max(amax, std::fabs(x[j]));
      // q8_0: half a step plus the fp16 rounding of d; q4_0: a whole step d = amax / 8 where the
      // value opposite in sign to the largest is clamped at code 15; FP4: half the gap 4..6 at a
      // scale below amax / 3.
      const float bound = format == DType::Q8_0   ? 0.6f * amax / 127
                          : format == DType::Q4_0 ? 1.1f * amax / 8
                                                  : amax / 3;
      for (int64_t j = b * 32; j < (b + 1) * 32; ++j)
        ASSERT_LE(std::fabs(back[j] - x[j]), bound) << dtype_name(format) << " element " << j;
    }
  }
}

TEST(QuantTest, BlockFormatsNeedWholeBlocksAndScales) {
  const std::vector<float> w(33 * 2, 1.f);
  testing::expect_error([&] { quantize_weight(DType::Q8_0, w.data(), 2, 33); }, {"Q8_0", "33", "32"});
  WeightView fp4{.dtype = DType::F4_E2M1, .rows = 1, .cols = 32, .data = w.data()};
  std::vector<float> y(1);
  testing::expect_error([&] { matmul(y.data(), w.data(), 1, fp4); }, {"F4_E2M1", "scales"});
  WeightView q4{.dtype = DType::Q4_0, .rows = 1, .cols = 48, .data = w.data()};
  testing::expect_error([&] { matmul(y.data(), w.data(), 1, q4); }, {"Q4_0", "48"});
}

}  // namespace
}  // namespace megamoe
