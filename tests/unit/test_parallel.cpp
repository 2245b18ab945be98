#include "util/parallel.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <vector>

namespace megamoe {
namespace {

// Sets the thread count for one test and puts it back.
class ThreadCount {
 public:
  explicit ThreadCount(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ThreadCount() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

// Calls parallel_for with the given schedule; records each index's visits and whether any ran in a team.
template <Schedule kSchedule>
void run(int64_t n, bool enough_work, std::vector<std::atomic<int>>* visits, std::atomic<bool>* in_team) {
  parallel_for<kSchedule>(n, enough_work, [&](int64_t i) {
    ++(*visits)[size_t(i)];
    if (omp_in_parallel()) *in_team = true;
  });
}

template <Schedule kSchedule>
void expect_each_index_once(int threads, bool enough_work, bool team_expected) {
  const ThreadCount count(threads);
  for (int64_t n : {0, 1, 7, 1000}) {
    std::vector<std::atomic<int>> visits(static_cast<size_t>(n));
    std::atomic<bool> in_team = false;
    run<kSchedule>(n, enough_work, &visits, &in_team);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(visits[size_t(i)], 1) << "index " << i << " of " << n;
    }
    if (n > 1) {
      EXPECT_EQ(in_team, team_expected) << n << " indices, " << threads << " threads";
    }
  }
}

TEST(ParallelFor, EveryIndexOnceWithATeamOnlyWhenItPays) {
  expect_each_index_once<Schedule::Static>(2, true, true);
  expect_each_index_once<Schedule::Dynamic>(2, true, true);
  expect_each_index_once<Schedule::Static>(2, false, false);  // too little work
  expect_each_index_once<Schedule::Dynamic>(2, false, false);
  expect_each_index_once<Schedule::Static>(1, true, false);  // one thread: no OpenMP at all
  expect_each_index_once<Schedule::Dynamic>(1, true, false);
}

TEST(ParallelFor, RunsInOrderOnTheCallingThreadWithoutATeam) {
  const ThreadCount count(1);
  std::vector<int64_t> order;
  parallel_for(5, true, [&](int64_t i) { order.push_back(i); });
  EXPECT_EQ(order, (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(ParallelFor, InsideATeamEachThreadRunsItsOwnLoopAlone) {
  const ThreadCount count(2);
  std::atomic<int> total = 0, nested_teams = 0;
#pragma omp parallel
  {
    const int outer = omp_get_thread_num();
    parallel_for(100, true, [&](int64_t) {
      ++total;
      if (omp_get_thread_num() != outer) ++nested_teams;  // a nested team would renumber its threads
    });
  }
  EXPECT_EQ(total, 100 * omp_get_max_threads());
  EXPECT_EQ(nested_teams, 0);
}

}  // namespace
}  // namespace megamoe
