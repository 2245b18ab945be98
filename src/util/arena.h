// Many float arrays carved from one allocation (llm.c's one block per lifetime, gemma.cpp's
// Activations): a counting pass over the code that places the arrays sizes the block, then the
// same code hands out the pointers, so no size is written twice.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "util/error.h"

namespace megamoe {

class FloatArena {
 public:
  // Counting: nullptr, the size noted. Handing out: the next array (64-byte steps from the block's
  // start), its contents what the block last held there (zero when new).
  float* take(int64_t count) {
    float* p = counting_ ? nullptr : block_.data() + used_;
    used_ += (count + 15) / 16 * 16;
    if (!counting_ && used_ > int64_t(block_.size()))
      fail("internal error: arrays placed beyond what the counting pass sized ({} > {} floats)", used_, block_.size());
    return p;
  }
  // An array per thread of a parallel loop: [omp_get_max_threads(), count]; mine() finds a thread's.
  float* take_per_thread(int64_t count) { return take(int64_t(omp_get_max_threads()) * round(count)); }
  static float* mine(float* per_thread, int64_t count) { return per_thread + omp_get_thread_num() * round(count); }

  // Starts a counting pass (a new arena starts in one).
  void count() {
    counting_ = true;
    used_ = 0;
  }
  // Ends the counting pass and grows the block to what it counted: by half at least, so arrays that
  // grow a little each call (attention over one more key per decode step) seldom move; it never shrinks.
  void allocate() {
    if (used_ > int64_t(block_.size())) block_.resize(size_t(std::max(used_, int64_t(block_.size()) * 3 / 2)));
    counting_ = false;
    used_ = 0;
  }
  int64_t size() const { return int64_t(block_.size()); }

 private:
  static int64_t round(int64_t count) { return (count + 15) / 16 * 16; }
  std::vector<float> block_;
  int64_t used_ = 0;
  bool counting_ = true;
};

}  // namespace megamoe
