// Gate variants on hand-checked cases.
#include <gtest/gtest.h>

#include <cmath>

#include "moe/router.h"

namespace megamoe {
namespace {

RouterSpec spec(int64_t E, int64_t k, ScoringFunc scoring, TopkMethod method, int64_t groups = 1,
                int64_t topk_group = 1, bool normalize = false, double scaling = 1) {
  return {E, k, scoring, method, groups, topk_group, normalize, scaling};
}

TEST(RouterTest, SoftmaxGreedyTakesLargestScores) {
  const float logits[] = {0.f, 2.f, 1.f, -1.f};
  Routing r;
  route(&r, logits, 1, nullptr, spec(4, 2, ScoringFunc::Softmax, TopkMethod::Greedy));
  EXPECT_EQ(r.experts[0], 1);
  EXPECT_EQ(r.experts[1], 2);
  const double z = 1 + std::exp(2.0) + std::exp(1.0) + std::exp(-1.0);
  EXPECT_NEAR(r.weights[0], std::exp(2.0) / z, 1e-6);  // not renormalized
  EXPECT_NEAR(r.weights[1], std::exp(1.0) / z, 1e-6);
}

TEST(RouterTest, BiasSelectsButDoesNotWeigh) {
  const float logits[] = {0.f, 1.f, 0.5f, -2.f};
  const float bias[] = {0.f, 0.f, 0.f, 5.f};  // pushes expert 3 into the top 2
  Routing r;
  route(&r, logits, 1, bias, spec(4, 2, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, 2, 2, true, 2.5));
  EXPECT_EQ(r.experts[0], 3);
  EXPECT_EQ(r.experts[1], 1);
  const double s3 = 1 / (1 + std::exp(2.0)), s1 = 1 / (1 + std::exp(-1.0));
  EXPECT_NEAR(r.weights[0], 2.5 * s3 / (s1 + s3), 1e-6);
  EXPECT_NEAR(r.weights[1], 2.5 * s1 / (s1 + s3), 1e-6);
}

TEST(RouterTest, NoauxTcKeepsGroupsByTopTwoSum) {
  // Groups {0,1}, {2,3}, {4,5}: top-2 sums favour group 1 (0.9 + 0.8) over group 0 (1.0 + -inf-ish).
  const float logits[] = {3.f, -6.f, 2.f, 1.8f, -1.f, -1.f};
  Routing r;
  route(&r, logits, 1, nullptr, spec(6, 2, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, 3, 1));
  EXPECT_EQ(r.experts[0], 2);
  EXPECT_EQ(r.experts[1], 3);
}

TEST(RouterTest, GroupLimitedGreedyKeepsGroupsByMax) {
  // Same logits, max per group: group 0 wins with 3.0.
  const float logits[] = {3.f, -6.f, 2.f, 1.8f, -1.f, -1.f};
  Routing r;
  route(&r, logits, 1, nullptr, spec(6, 2, ScoringFunc::Softmax, TopkMethod::GroupLimitedGreedy, 3, 1));
  EXPECT_EQ(r.experts[0], 0);
  EXPECT_EQ(r.experts[1], 1);
}

TEST(RouterTest, SqrtSoftplusBiasSelectsWeightsNormalized) {
  // DeepSeek-V4: s = sqrt(softplus(logit)); the bias picks, the unbiased scores weigh, sum 1 x scaling.
  const float logits[] = {1.f, -1.f, 0.5f, 2.f};
  const float bias[] = {0.f, 3.f, 0.f, 0.f};
  Routing r;
  route(&r, logits, 1, bias, spec(4, 2, ScoringFunc::SqrtSoftplus, TopkMethod::Greedy, 1, 1, true, 1.5));
  auto s = [](double x) { return std::sqrt(std::log1p(std::exp(x))); };
  EXPECT_EQ(r.experts[0], 1);
  EXPECT_EQ(r.experts[1], 3);
  EXPECT_NEAR(r.weights[0], 1.5 * s(-1) / (s(-1) + s(2)), 1e-6);
  EXPECT_NEAR(r.weights[1], 1.5 * s(2) / (s(-1) + s(2)), 1e-6);
}

TEST(RouterTest, HashRoutingTakesTheTablesExperts) {
  const float logits[] = {0.f, 1.f, 2.f, 3.f, /* token 2 */ 3.f, 2.f, 1.f, 0.f};
  const int32_t table_experts[] = {0, 2, 1, 3};  // [T=2, k=2], whatever the scores say
  Routing r;
  route_to(&r, logits, 2, table_experts, spec(4, 2, ScoringFunc::SqrtSoftplus, TopkMethod::Greedy, 1, 1, true));
  EXPECT_EQ(r.experts, std::vector<int32_t>({0, 2, 1, 3}));
  auto s = [](double x) { return std::sqrt(std::log1p(std::exp(x))); };
  EXPECT_NEAR(r.weights[0], s(0) / (s(0) + s(2)), 1e-6);
  EXPECT_NEAR(r.weights[3], s(0) / (s(2) + s(0)), 1e-6);
}

}  // namespace
}  // namespace megamoe
