// Elementwise kernels and RoPE against their definitions, on random data with odd sizes (the matrix
// kernels: test_kernels.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "ops/elementwise.h"
#include "ops/rope.h"
#include "test_support.h"

namespace megamoe {
namespace {

using testing::random_floats;

TEST(ElementwiseTest, RmsNormMatchesDefinition) {
  const int64_t T = 3, D = 37;
  const std::vector<float> x = random_floats(T * D, 3), g = random_floats(D, 4);
  std::vector<float> out(T * D);
  rms_norm(out.data(), x.data(), g.data(), T, D, 1e-6f);
  for (int64_t t = 0; t < T; ++t) {
    double ms = 0;
    for (int64_t i = 0; i < D; ++i) ms += double(x[t * D + i]) * x[t * D + i] / D;
    for (int64_t i = 0; i < D; ++i) EXPECT_NEAR(out[t * D + i], x[t * D + i] / std::sqrt(ms + 1e-6) * g[i], 1e-5);
  }
}

TEST(ElementwiseTest, SoftmaxIsStableAndNormalized) {
  std::vector<float> x{1000.f, 1001.f, 999.f};
  softmax(x.data(), 3);
  const double z = 1 + std::exp(1.0) + std::exp(-1.0);
  EXPECT_NEAR(x[0], 1 / z, 1e-6);
  EXPECT_NEAR(x[1], std::exp(1.0) / z, 1e-6);
  EXPECT_NEAR(x[2], std::exp(-1.0) / z, 1e-6);
}

// With and without DeepSeek-V4's clamp, and where e^-gate overflows (silu goes to -0, not NaN).
TEST(ElementwiseTest, SwigluMatchesDefinition) {
  std::vector<float> gate = random_floats(37, 5, 8.f), up = random_floats(37, 6, 2.f);
  const float extremes[] = {-200.f, -88.8f, -20.f, 0.f, 20.f, 200.f};
  std::copy(std::begin(extremes), std::end(extremes), gate.begin());
  for (float limit : {0.f, 1.5f}) {
    std::vector<float> out = gate;
    swiglu(out.data(), up.data(), int64_t(out.size()), limit);
    for (size_t i = 0; i < out.size(); ++i) {
      double g = gate[i], u = up[i];
      if (limit > 0) g = std::min(g, double(limit)), u = std::clamp(u, -double(limit), double(limit));
      const double expected = g / (1 + std::exp(-g)) * u;
      EXPECT_NEAR(out[i], expected, 1e-6 * std::abs(expected) + 1e-30) << "limit " << limit << " gate " << gate[i];
    }
  }
}

TEST(RopeTest, RotatesInterleavedPairs) {
  const Rope rope = Rope::make(8, 10000, std::nullopt);
  std::vector<float> x = random_floats(8, 5), y = x;
  rope.apply(y.data(), 3);
  for (int i = 0; i < 4; ++i) {
    const double angle = 3 * std::pow(10000.0, -2.0 * i / 8);
    EXPECT_NEAR(y[2 * i], x[2 * i] * std::cos(angle) - x[2 * i + 1] * std::sin(angle), 1e-6);
    EXPECT_NEAR(y[2 * i + 1], x[2 * i] * std::sin(angle) + x[2 * i + 1] * std::cos(angle), 1e-6);
  }
}

TEST(RopeTest, YarnKeepsHighFrequenciesAndScalesLowOnes) {
  const double theta = 10000, factor = 40;
  const Rope plain = Rope::make(64, theta, std::nullopt);
  const Rope yarn = Rope::make(64, theta, YarnScaling{factor, 4096, 32, 1});
  EXPECT_DOUBLE_EQ(yarn.frequencies.front(), plain.frequencies.front());           // fast dims extrapolate
  EXPECT_NEAR(yarn.frequencies.back(), plain.frequencies.back() / factor, 1e-15);  // slow dims interpolate
  const Rope unit = Rope::make(64, theta, YarnScaling{1, 4096, 32, 1});
  for (size_t i = 0; i < unit.frequencies.size(); ++i) EXPECT_DOUBLE_EQ(unit.frequencies[i], plain.frequencies[i]);
  EXPECT_DOUBLE_EQ(yarn_mscale(1, 1), 1);
  EXPECT_NEAR(yarn_mscale(40, 1), 0.1 * std::log(40.0) + 1, 1e-12);
}

}  // namespace
}  // namespace megamoe
