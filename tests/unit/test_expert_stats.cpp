// Load-balance statistics (moe/expert_stats.h) on hand-made loads, and the shared counting sort.
#include <gtest/gtest.h>

#include <cmath>

#include "moe/expert_stats.h"
#include "moe/moe.h"

namespace megamoe {
namespace {

TEST(ExpertStatsTest, EvenLoadsAreBalanced) {
  const int64_t loads[] = {5, 5, 5, 5};
  const LoadStats s = load_stats(loads);
  EXPECT_DOUBLE_EQ(s.maxvio, 0);
  EXPECT_DOUBLE_EQ(s.cv, 0);
  EXPECT_DOUBLE_EQ(s.dead_share, 0);
  EXPECT_NEAR(s.entropy, 1, 1e-15);
}

TEST(ExpertStatsTest, UnevenLoads) {
  const int64_t loads[] = {6, 2, 0, 0};  // mean 2, deviations 4, 0, -2, -2
  const LoadStats s = load_stats(loads);
  EXPECT_DOUBLE_EQ(s.maxvio, 2);  // (6 - 2) / 2
  EXPECT_NEAR(s.cv, std::sqrt((16 + 0 + 4 + 4) / 4.0) / 2, 1e-15);
  EXPECT_DOUBLE_EQ(s.dead_share, 0.5);
  const double entropy = -(0.75 * std::log(0.75) + 0.25 * std::log(0.25)) / std::log(4.0);
  EXPECT_NEAR(s.entropy, entropy, 1e-15);
}

TEST(ExpertStatsTest, OneExpertTakesAll) {
  const int64_t loads[] = {0, 0, 12};
  const LoadStats s = load_stats(loads);
  EXPECT_DOUBLE_EQ(s.maxvio, 2);  // (12 - 4) / 4 = E - 1
  EXPECT_DOUBLE_EQ(s.dead_share, 2.0 / 3);
  EXPECT_DOUBLE_EQ(s.entropy, 0);
}

TEST(ExpertStatsTest, NoTokensAndOneExpert) {
  const int64_t none[] = {0, 0};
  const LoadStats empty = load_stats(none);
  EXPECT_EQ(empty.maxvio, 0);
  EXPECT_EQ(empty.cv, 0);
  EXPECT_EQ(empty.dead_share, 1);
  EXPECT_EQ(empty.entropy, 0);
  const int64_t one[] = {7};
  EXPECT_EQ(load_stats(one).entropy, 1);
  EXPECT_EQ(load_stats(one).maxvio, 0);
}

TEST(ExpertStatsTest, JsonMeansLayersAndPools) {
  const std::vector<std::vector<int64_t>> loads = {{4, 4}, {8, 0}, {0, 8}};
  const int64_t pool_of[] = {0, 1, 1};  // layers 1 and 2 share a pool: summed loads {8, 8}
  const nlohmann::json j = load_stats_json(loads, "maxvio_global", true, pool_of);
  EXPECT_DOUBLE_EQ(j["maxvio_global"].get<double>(), (0 + 1 + 1) / 3.0);
  EXPECT_EQ(j["maxvio_global_per_layer"], nlohmann::json({0.0, 1.0, 1.0}));
  EXPECT_EQ(j["dead_expert_share_per_layer"], nlohmann::json({0.0, 0.5, 0.5}));
  EXPECT_EQ(j["maxvio_global_per_pool"], nlohmann::json({0.0, 0.0}));
  EXPECT_EQ(j["routing_entropy_per_pool"], nlohmann::json({1.0, 1.0}));
  EXPECT_EQ(j["expert_loads"], nlohmann::json(loads));
  EXPECT_FALSE(load_stats_json(loads, "maxvio", false).contains("expert_loads"));
}

TEST(ExpertGroupsTest, SortsSlotsByExpertAndListsActiveOnes) {
  Routing r;
  r.tokens = 3;
  r.top_k = 2;
  r.experts = {5, 1, 1, 7, 5, 1};  // slots 0..5
  ExpertGroups g;
  g.build(r, 1024);
  EXPECT_EQ(g.active, (std::vector<int32_t>{1, 5, 7}));
  EXPECT_EQ(g.count(1), 3);
  EXPECT_EQ(g.count(5), 2);
  EXPECT_EQ(g.count(0), 0);
  EXPECT_EQ(g.slot_of_row, (std::vector<int64_t>{1, 2, 5, 0, 4, 3}));  // stable within an expert
  for (int64_t s = 0; s < 6; ++s) EXPECT_EQ(g.slot_of_row[g.row_of_slot[s]], s);
}

}  // namespace
}  // namespace megamoe
