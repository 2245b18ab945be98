// Row-wise operations on fp32 activations.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace megamoe {

// Loops with less work than this (multiply-adds or element updates) run on one thread: starting
// and joining a team of threads costs microseconds, and far more on a loaded machine.
inline constexpr int64_t kParallelGrain = 1 << 16;

// out [T, D] = x / sqrt(mean(x^2) + eps) * weight; out may alias x. x rows have stride `x_stride`.
void rms_norm(float* out, const float* x, const float* weight, int64_t T, int64_t D, float eps, int64_t x_stride = -1);
// In place over one row of n values.
void softmax(float* x, int64_t n);
// gate [n] <- silu(gate) * up; with limit > 0 (DeepSeek-V4's clamped SwiGLU)
// silu(min(gate, limit)) * clamp(up, -limit, limit).
void swiglu(float* gate, const float* up, int64_t n, float limit = 0);
// One element of swiglu (matmul_swiglu applies it in its tiles).
inline float swiglu_value(float gate, float up, float limit) {
  if (limit > 0) {
    gate = std::min(gate, limit);
    up = std::clamp(up, -limit, limit);
  }
  return gate / (1.f + std::exp(-gate)) * up;
}
float sigmoid(float x);
float softplus(float x);  // ln(1 + e^x)

}  // namespace megamoe
