#include "ops/gemm.h"

#include <cblas.h>

#include <mutex>

namespace megamoe {

void gemm(float* c, int64_t ldc, GemmOperand a, GemmOperand b, int64_t M, int64_t N, int64_t K, float alpha,
          float beta) {
  static std::once_flag single_threaded;
  std::call_once(single_threaded, [] { openblas_set_num_threads(1); });
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, a.transposed ? CblasTrans : CblasNoTrans, b.transposed ? CblasTrans : CblasNoTrans, int(M),
              int(N), int(K), alpha, a.data, int(a.stride), b.data, int(b.stride), beta, c, int(ldc));
}

}  // namespace megamoe
