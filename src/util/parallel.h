// OpenMP loops that start a team of threads only when it pays.
#pragma once
#include <omp.h>

#include <cstdint>

namespace megamoe {

// Whether a loop should start an OpenMP team: enough work, more than one thread, and not already
// inside a team. libgomp ends every parallel region with a futex wake-up system call, even for a team
// of one or under an `if` clause that is false (1.3-1.4 µs each in this VM, measured), and a decode
// step runs a few hundred small loops; those below the grain, or on one thread, skip OpenMP entirely.
inline bool worth_a_team(bool enough_work) { return enough_work && omp_get_max_threads() > 1 && !omp_in_parallel(); }

enum class Schedule { Static, Dynamic };

// body(i) for i in [0, n), over the threads when worth_a_team(enough_work), else in order here.
template <Schedule kSchedule = Schedule::Static, class Body>
void parallel_for(int64_t n, bool enough_work, const Body& body) {
  if (!worth_a_team(enough_work)) {
    for (int64_t i = 0; i < n; ++i) body(i);
  } else if constexpr (kSchedule == Schedule::Static) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

}  // namespace megamoe
