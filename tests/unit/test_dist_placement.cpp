// Expert placement over MPI ranks (dist/placement.h): contiguous blocks for any number of ranks,
// the load-aware (EPLB-like) placement against brute force on small cases, and placement files.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>

#include "dist/placement.h"
#include "util/error.h"

namespace megamoe::dist {
namespace {

// Every expert on at least one rank, no rank twice for one expert.
void expect_valid(const ExpertPlacement& p) {
  for (const auto& layer : p.hosts)
    for (const auto& h : layer) {
      ASSERT_FALSE(h.empty());
      EXPECT_TRUE(std::is_sorted(h.begin(), h.end()));
      EXPECT_EQ(std::adjacent_find(h.begin(), h.end()), h.end());
      for (int32_t r : h) EXPECT_TRUE(r >= 0 && r < p.ranks);
    }
}

TEST(DistPlacementTest, ContiguousCoversEveryExpertForAnyRankCount) {
  for (int64_t ranks : {1, 2, 3, 5, 16, 20}) {
    const ExpertPlacement p = contiguous_placement(2, 16, ranks);
    expect_valid(p);
    std::vector<int64_t> held(ranks, 0);
    for (const auto& h : p.hosts[1]) {
      ASSERT_EQ(h.size(), 1u);
      ++held[h[0]];
    }
    // 16 experts over N ranks: floor or ceil of 16/N each.
    for (int64_t n : held) EXPECT_TRUE(n == 16 / ranks || n == (16 + ranks - 1) / ranks) << ranks;
    for (size_t e = 1; e < p.hosts[1].size(); ++e) EXPECT_LE(p.hosts[1][e - 1][0], p.hosts[1][e][0]);
  }
}

TEST(DistPlacementTest, ReplicasSplitAnExpertsRowsExactly) {
  ExpertPlacement p = contiguous_placement(1, 2, 3);
  p.hosts[0] = {{0, 2}, {1}};  // expert 0 on ranks 0 and 2, expert 1 on rank 1
  const int64_t loads[] = {7, 4};
  const std::vector<double> rows = rank_loads(p, 0, loads);
  EXPECT_EQ(rows, (std::vector<double>{3, 4, 4}));  // 7 rows split 3 + 4
  EXPECT_DOUBLE_EQ(imbalance(rows), 4 / (11 / 3.0));
}

// The most loaded rank of the best assignment of single experts (no replicas), by brute force.
double best_max_load(std::span<const int64_t> loads, int64_t ranks, int64_t capacity) {
  const int64_t E = int64_t(loads.size());
  std::vector<int64_t> rank_of(E, 0);
  double best = 1e300;
  for (;;) {
    std::vector<double> sum(ranks, 0);
    std::vector<int64_t> count(ranks, 0);
    for (int64_t e = 0; e < E; ++e) sum[rank_of[e]] += double(loads[e]), ++count[rank_of[e]];
    if (*std::max_element(count.begin(), count.end()) <= capacity)
      best = std::min(best, *std::max_element(sum.begin(), sum.end()));
    int64_t e = 0;
    while (e < E && ++rank_of[e] == ranks) rank_of[e++] = 0;
    if (e == E) return best;
  }
}

TEST(DistPlacementTest, BalancedPlacementIsCloseToTheBestAndBeatsContiguous) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t ranks = 2 + trial % 3, E = 8;
    std::vector<int64_t> loads(E);
    for (int64_t& l : loads) l = int64_t(rng() % 100) * (rng() % 4 == 0 ? 10 : 1);  // a few hot experts
    const ExpertPlacement p = balanced_placement({loads}, ranks, 0);
    expect_valid(p);
    const std::vector<double> placed = rank_loads(p, 0, loads);
    const double placed_max = *std::max_element(placed.begin(), placed.end());
    const double best = best_max_load(loads, ranks, (E + ranks - 1) / ranks);
    // Greedy packing (largest first) stays within 4/3 of the optimum.
    EXPECT_LE(placed_max, best * 4 / 3 + 1e-9) << "trial " << trial;
    EXPECT_LE(imbalance(placed), imbalance(rank_loads(contiguous_placement(1, E, ranks), 0, loads)) + 1e-9);
  }
}

TEST(DistPlacementTest, RedundantExpertsReplicateTheHotOneAcrossRanks) {
  // One expert takes most tokens: alone it makes one rank carry 90 of 100 rows or more.
  const std::vector<int64_t> loads = {90, 3, 3, 4};
  const ExpertPlacement none = balanced_placement({loads}, 2, 0);
  const ExpertPlacement two = balanced_placement({loads}, 2, 2);
  expect_valid(two);
  // The hot expert gets a replica on the other rank; it can have no more on 2 ranks, so the second
  // extra replica goes to the next hottest.
  EXPECT_EQ(two.hosts[0][0], (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(two.hosts[0][3], (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(two.hosts[0][1].size() + two.hosts[0][2].size(), 2u);
  // Without replicas: 90 and 3 on one rank (2 experts per rank at most), 4 and 3 on the other.
  EXPECT_NEAR(imbalance(rank_loads(none, 0, loads)), 93 / 50.0, 1e-12);
  EXPECT_LT(imbalance(rank_loads(two, 0, loads)), 1.1);
}

TEST(DistPlacementTest, FilesRoundTripAndBadOnesNameTheFile) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "megamoe_test_dist_placement";
  std::filesystem::create_directories(dir);
  const ExpertPlacement p = balanced_placement({{5, 1, 1, 9}, {0, 0, 0, 0}}, 3, 1);
  { std::ofstream(dir / "p.json") << placement_json(p).dump(); }
  const ExpertPlacement back = read_placement(dir / "p.json", 2, 4, 3);
  EXPECT_EQ(back.hosts, p.hosts);
  EXPECT_THROW(read_placement(dir / "p.json", 2, 4, 2), Error);  // other rank count
  EXPECT_THROW(read_placement(dir / "p.json", 2, 5, 3), Error);  // other expert count
  std::ofstream(dir / "bad.json") << R"({"ranks": 2, "layers": [[[0], [2]]]})";
  try {
    read_placement(dir / "bad.json", 1, 2, 2);
    FAIL() << "a rank outside [0, 2) was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace megamoe::dist
