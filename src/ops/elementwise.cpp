#include "ops/elementwise.h"

#include <algorithm>
#include <cmath>

#include "util/parallel.h"

namespace megamoe {

void rms_norm(float* out, const float* x, const float* weight, int64_t T, int64_t D, float eps, int64_t x_stride) {
  if (x_stride < 0) x_stride = D;
  parallel_for(T, T * D >= kParallelGrain, [&](int64_t t) {
    const float* xt = x + t * x_stride;
    double sum_squares = 0;
    for (int64_t i = 0; i < D; ++i) sum_squares += double(xt[i]) * xt[i];
    const float inv = float(1.0 / std::sqrt(sum_squares / double(D) + eps));
    float* ot = out + t * D;
    for (int64_t i = 0; i < D; ++i) ot[i] = xt[i] * inv * weight[i];
  });
}

void softmax(float* x, int64_t n) {
  const float max = *std::max_element(x, x + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i] = std::exp(x[i] - max);
  const float inv = float(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

float softplus(float x) { return x > 20 ? x : std::log1p(std::exp(x)); }

void swiglu(float* gate, const float* up, int64_t n, float limit) {
  parallel_for(n, n >= kParallelGrain, [&](int64_t i) { gate[i] = swiglu_value(gate[i], up[i], limit); });
}

}  // namespace megamoe
