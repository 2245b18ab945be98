// Working memory that keeps its pages from one call to the next.
#pragma once
#include <algorithm>
#include <cstddef>
#include <memory>

namespace megamoe {

// An uninitialized buffer that only grows. The forward pass needs the same large activation buffers
// for every layer and every step; a fresh std::vector would zero them each time and, above glibc's
// mmap threshold, fault their pages in again (a serial tenth of a 512-token prefill with 2 threads).
template <class T>
class Scratch {
 public:
  T* get(size_t n) {
    if (n > capacity_) {
      // Buffers that grow a little at a time (attention's scores, one key more per decode step)
      // grow by half at least, so they are not reallocated, and their pages faulted in, every step.
      capacity_ = std::max(n, capacity_ + capacity_ / 2);
      data_.reset(new T[capacity_]);
    }
    return data_.get();
  }

 private:
  std::unique_ptr<T[]> data_;
  size_t capacity_ = 0;
};

}  // namespace megamoe
