// The gather and combine of routed experts (moe/moe.h) that inference, training and expert
// parallelism share: each grouped row is its slot's token, and a token's sum is its slots' rows in
// slot order, bit for bit the same however the rows are stored, ordered or split into token ranges.
#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <numeric>
#include <random>
#include <vector>

#include "moe/moe.h"
#include "test_support.h"

namespace megamoe {
namespace {

using testing::random_floats;

Routing random_routing(int64_t T, int64_t k, int64_t E, uint32_t seed) {
  std::mt19937 rng(seed);
  Routing r{T, k, std::vector<int32_t>(size_t(T * k)), random_floats(size_t(T * k), seed + 1)};
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> experts(static_cast<size_t>(E));
    std::iota(experts.begin(), experts.end(), 0);
    std::shuffle(experts.begin(), experts.end(), rng);
    std::copy_n(experts.begin(), k, r.experts.begin() + t * k);
  }
  return r;
}

TEST(RoutedRows, GatherPutsEachSlotsTokenInGroupedOrder) {
  const int64_t T = 37, k = 3, E = 8, D = 5;
  const Routing routing = random_routing(T, k, E, 1);
  ExpertGroups groups;
  groups.build(routing, E);
  const std::vector<float> x = random_floats(size_t(T * D), 2);
  std::vector<float> rows(size_t(T * k * D), NAN);
  gather_routed_rows(rows.data(), x.data(), D, k, groups.slot_of_row);
  for (int64_t row = 0; row < T * k; ++row) {
    const int64_t token = groups.slot_of_row[row] / k;
    for (int64_t d = 0; d < D; ++d) ASSERT_EQ(rows[row * D + d], x[token * D + d]) << row;
    ASSERT_EQ(routing.experts[groups.slot_of_row[row]], [&] {  // rows lie within their expert's group
      int32_t e = 0;
      while (groups.start[e + 1] <= row) ++e;
      return e;
    }()) << row;
  }
}

TEST(RoutedRows, CombineSumsInSlotOrderWhateverTheStorage) {
  const int64_t T = 300, k = 4, E = 16, D = 33;
  const Routing routing = random_routing(T, k, E, 3);
  ExpertGroups groups;
  groups.build(routing, E);
  const std::vector<float> results = random_floats(size_t(T * k * D), 4);  // [slot, D]
  const std::vector<float> base = random_floats(size_t(T * D), 5);
  // The definition, in slot order.
  std::vector<float> expected = base, unweighted = base;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t d = 0; d < D; ++d) {
        expected[t * D + d] += routing.weights[t * k + j] * results[(t * k + j) * D + d];
        unweighted[t * D + d] += results[(t * k + j) * D + d];
      }
  // The results stored in grouped order (as dispatch_experts and training hold them).
  std::vector<float> grouped(results.size());
  for (int64_t row = 0; row < T * k; ++row)
    std::copy_n(results.data() + groups.slot_of_row[row] * D, D, grouped.data() + row * D);
  const auto by_group = [&](int64_t slot) { return grouped.data() + groups.row_of_slot[slot] * D; };
  const auto by_slot = [&](int64_t slot) { return results.data() + slot * D; };
  const int threads = omp_get_max_threads();
  for (int n : {1, 2}) {
    omp_set_num_threads(n);
    std::vector<float> got = base;
    combine_routed_rows(got.data(), routing.weights.data(), D, k, 0, T, by_group);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(expected[i])) << "threads " << n << " " << i;
    // Token ranges, as expert-parallel ranks combine their own tokens.
    got = base;
    for (int64_t t0 : {0L, 7L, 150L})
      combine_routed_rows(got.data() + t0 * D, routing.weights.data(), D, k, t0,
                          t0 == 0   ? 7
                          : t0 == 7 ? 150
                                    : T,
                          by_slot);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(expected[i])) << "ranges " << i;
    got = base;
    combine_routed_rows(got.data(), nullptr, D, k, 0, T, by_group);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(unweighted[i])) << "unweighted " << i;
  }
  omp_set_num_threads(threads);
}

}  // namespace
}  // namespace megamoe
