// DeepSeek-V4.1's activation round trips on hand-made values (docs/deepseek-v41.md#v41-round-trips): the
// scales, the e2m1 ties to the even code, saturation and clipping, and the floors of all-zero blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "moe/moe.h"
#include "ops/quant.h"
#include "ops/round_trip.h"
#include "test_support.h"

namespace megamoe {
namespace {
using testing::random_floats;

TEST(RoundTripTest, Q8ScalesEachBlockOf32ByAPowerOfTwo) {
  std::vector<float> x(64, 0.f);
  x[0] = 448;      // amax 448: scale 1, exact
  x[1] = 1.0625f;  // between e4m3 1 and 1.125: a tie, to the even mantissa (1)
  x[2] = 0.3f;
  x[32] = 1.5f;  // second block: amax 1.5 -> scale 2^-8 (1.5/448 in (2^-9, 2^-8])
  x[33] = -0.001f;
  q8_round_trip(x.data(), 64);
  EXPECT_EQ(x[0], 448.f);
  EXPECT_EQ(x[1], 1.f);
  EXPECT_EQ(x[2], fp8_e4m3_to_f32(f32_to_fp8_e4m3(0.3f)));
  EXPECT_EQ(x[32], 1.5f);
  EXPECT_EQ(x[33], fp8_e4m3_to_f32(f32_to_fp8_e4m3(-0.001f * 256)) / 256);
  std::vector<float> zeros(32, 0.f);
  q8_round_trip(zeros.data(), 32);  // the 1e-4 floor keeps the scale finite
  for (float v : zeros) EXPECT_EQ(v, 0.f);
}

TEST(RoundTripTest, Q4e8TiesGoToTheEvenCode) {
  // amax 6 -> scale 1: the values are their own e2m1 inputs.
  std::vector<float> x = {6, 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5, -0.75f, 0.26f, 5.01f, -6};
  x.resize(32, 0.f);
  q4_round_trip_e8(x.data(), 32);
  const std::vector<float> expected = {6, 0, 1, 1, 2, 2, 4, 4, -1, 0.5f, 6, -6};
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(x[i], expected[i]) << i;
  std::vector<float> small(32, 0.f);
  small[0] = 3.f;   // amax 3 -> scale 2^ceil(log2(0.5)) = 0.5: 3 -> 6 x 0.5
  small[1] = 1.2f;  // 1.2 / 0.5 = 2.4 -> 2 -> 1
  q4_round_trip_e8(small.data(), 32);
  EXPECT_EQ(small[0], 3.f);
  EXPECT_EQ(small[1], 1.f);
}

TEST(RoundTripTest, Q4e4ScalesEachBlockOf16ByAnE4m3Value) {
  std::vector<float> x(32, 0.f);
  x[0] = 7.f;   // scale e4m3(7/6 = 1.1667) = 1.125; 7 / 1.125 = 6.22 clipped to 6 -> 6.75
  x[1] = 1.f;   // 1 / 1.125 = 0.889 -> 1 -> 1.125
  x[16] = 0.f;  // an all-zero block stays zero
  q4_round_trip_e4(x.data(), 32);
  EXPECT_EQ(x[0], 6.75f);
  EXPECT_EQ(x[1], 1.125f);
  for (int i = 16; i < 32; ++i) EXPECT_EQ(x[i], 0.f);
}

TEST(MlpOptionsTest, WeightBeforeDownScalesTheHiddenThenRoundsIt) {
  const int64_t D = 32, I = 64, T = 3;
  const std::vector<float> gate = random_floats(I * D, 1, 0.3f), up = random_floats(I * D, 2, 0.3f),
                           down = random_floats(D * I, 3, 0.3f), x = random_floats(T * D, 4);
  const MlpWeights w{{.dtype = DType::F32, .rows = I, .cols = D, .data = gate.data()},
                     {.dtype = DType::F32, .rows = I, .cols = D, .data = up.data()},
                     {.dtype = DType::F32, .rows = D, .cols = I, .data = down.data()}};
  const std::vector<float> scale = {0.5f, 1.7f, -0.3f};
  std::vector<float> plain(T * D), scaled(T * D), rounded(T * D);
  mlp_forward(plain.data(), x.data(), T, w);
  const MlpJob job{scaled.data(), x.data(), T, &w, scale.data()};
  mlp_forward({&job, 1});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d)
      EXPECT_NEAR(scaled[t * D + d], scale[t] * plain[t * D + d], 1e-5f * (1 + std::fabs(plain[t * D + d])));
  // With the round trip, the down product sees Q8 values: recompute it from the rounded hidden.
  const MlpJob rounded_job{rounded.data(), x.data(), T, &w, scale.data()};
  mlp_forward({&rounded_job, 1}, {.weight_before_down = true, .round_hidden = true});
  float largest_change = 0;
  for (int64_t i = 0; i < T * D; ++i) largest_change = std::max(largest_change, std::fabs(rounded[i] - scaled[i]));
  EXPECT_GT(largest_change, 0.f);
  EXPECT_LT(largest_change, 0.1f);
}

}  // namespace
}  // namespace megamoe
