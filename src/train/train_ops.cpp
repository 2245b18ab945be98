#include "train/train_ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/gemm.h"
#include "util/parallel.h"

namespace megamoe::train {
namespace {

// Splits [0, n) into one contiguous block per OpenMP thread and calls body(first, count) for each
// non-empty block. Inside an enclosing parallel region (one expert per thread) it runs serially.
// `work` is the loop's total in multiply-adds (see kParallelGrain).
template <typename Body>
void for_each_thread_block(int64_t n, int64_t work, Body&& body) {
  if (!worth_a_team(work >= kParallelGrain)) {
    if (n > 0) body(0, n);
    return;
  }
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = n * t / threads, last = n * (t + 1) / threads;
    if (last > first) body(first, last - first);
  }
}

}  // namespace

void linear_forward(float* y, const float* x, const float* w, int64_t N, int64_t out, int64_t in) {
  for_each_thread_block(N, N * out * in, [&](int64_t first, int64_t rows) {
    gemm(y + first * out, out, {x + first * in, in}, {w, in, true}, rows, out, in);
  });
}

void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t N, int64_t out,
                     int64_t in, bool add_dx) {
  // Weight gradient: each thread owns a block of output rows, so no two threads add to one element.
  for_each_thread_block(out, N * out * in, [&](int64_t first, int64_t rows) {
    gemm(dw + first * in, in, {dy + first, out, true}, {x, in}, rows, in, N, 1, 1);
  });
  if (!dx) return;
  for_each_thread_block(N, N * out * in, [&](int64_t first, int64_t rows) {
    gemm(dx + first * in, in, {dy + first * out, out}, {w, in}, rows, in, out, 1, add_dx ? 1 : 0);
  });
}

void rms_norm_backward(float* dx, float* dweight, const float* dy, const float* x, const float* weight, int64_t T,
                       int64_t D, float eps, int64_t x_stride, int64_t dx_stride, bool add_dx) {
  if (x_stride < 0) x_stride = D;
  if (dx_stride < 0) dx_stride = D;
  std::vector<float> inv_rms(T);  // [T], computed as the forward pass does
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * x_stride;
    double sum_squares = 0;
    for (int64_t i = 0; i < D; ++i) sum_squares += double(xt[i]) * xt[i];
    inv_rms[t] = float(1.0 / std::sqrt(sum_squares / double(D) + eps));
  }
  // The weight gradient sums over rows: one thread, rows in order (deterministic).
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * x_stride;
    const float* dyt = dy + t * D;
    for (int64_t i = 0; i < D; ++i) dweight[i] += dyt[i] * xt[i] * inv_rms[t];
  }
  parallel_for(T, T * D >= kParallelGrain, [&](int64_t t) {
    const float* xt = x + t * x_stride;
    const float* dyt = dy + t * D;
    float* dxt = dx + t * dx_stride;
    double dot = 0;  // sum(dy * weight * x)
    for (int64_t i = 0; i < D; ++i) dot += double(dyt[i]) * weight[i] * xt[i];
    const float r = inv_rms[t];
    const float correction = float(dot / double(D)) * r * r * r;
    for (int64_t i = 0; i < D; ++i) {
      const float g = dyt[i] * weight[i] * r - xt[i] * correction;
      dxt[i] = add_dx ? dxt[i] + g : g;
    }
  });
}

void swiglu_backward(float* dgate, float* dup, const float* dact, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i], s = 1.f / (1.f + std::exp(-g));  // sigmoid(gate)
    const float silu = g * s, da = dact[i];
    dup[i] = da * silu;
    dgate[i] = da * up[i] * s * (1.f + g * (1.f - s));
  }
}

void softmax_backward(float* dy, const float* y, int64_t n) {
  double dot = 0;
  for (int64_t i = 0; i < n; ++i) dot += double(dy[i]) * y[i];
  const float d = float(dot);
  for (int64_t i = 0; i < n; ++i) dy[i] = y[i] * (dy[i] - d);
}

double cross_entropy(float* dlogits, const float* logits, const int32_t* targets, int64_t N, int64_t V, float scale) {
  std::vector<double> row_loss(N);  // [N]: summed in order below, so the total is deterministic
  parallel_for(N, N * V >= kParallelGrain, [&](int64_t n) {
    const float* row = logits + n * V;
    const float max = *std::max_element(row, row + V);
    const float target_logit = row[targets[n]];
    double sum = 0;
    if (dlogits) {  // keep exp(logit - max) for the gradient
      float* d = dlogits + n * V;
      for (int64_t v = 0; v < V; ++v) sum += d[v] = std::exp(row[v] - max);
      const float factor = float(scale / sum);
      for (int64_t v = 0; v < V; ++v) d[v] *= factor;
      d[targets[n]] -= scale;
    } else {
      for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - max);
    }
    row_loss[n] = std::log(sum) + max - target_logit;
  });
  double total = 0;
  for (double l : row_loss) total += l;
  return total;
}

}  // namespace megamoe::train
