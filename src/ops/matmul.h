// Matrix products against stored weights: y = x @ W^T with W in any WeightView format, dequantized
// block by block inside SIMD kernels chosen at run time (the weight is never expanded in memory).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ops/weight.h"

namespace megamoe {

// y [T, W.rows] = x [T, W.cols] @ W^T, parallel over output rows. For Q8_0, Q4_0 and F4_E2M1 weights
// the activations are first rounded to q8_0 blocks per token, as llama.cpp does, and multiplied in
// int8, unless numerics() is Exact (ops/numerics.h): then they stay fp32 against the dequantized
// weights, as for every other format. Batch invariant: y[t, r] is bit for bit the same whatever T, the other tokens and the thread
// count (on one SIMD target), so prefill, step-by-step decode and any batching agree exactly.
void matmul(float* y, const float* x, int64_t T, const WeightView& W);

// One product of a batch run together: y [T, weight.rows] = x [T, weight.cols] @ weight^T, or with
// `up` (same format and shape) swiglu(x @ weight^T, x @ up^T) as matmul_swiglu.
struct MatmulTask {
  float* y;
  const float* x;
  int64_t T;
  const WeightView* weight;
  const WeightView* up = nullptr;
};
// Every task, each bit for bit as matmul / matmul_swiglu alone would give, in one parallel pass
// whose threads share out the row tiles of all tasks: an MoE layer's experts as one step.
void matmul_tasks(std::span<const MatmulTask> tasks, float swiglu_limit = 0);

// h [T, I] = swiglu(x @ gate^T, x @ up^T) (elementwise.h) for gate and up [I, K]: an MLP's first two
// products and SwiGLU fused, each tile combined while it is in cache. Bit for bit what matmul, matmul
// and swiglu give, batch invariant like matmul.
void matmul_swiglu(float* h, const float* x, int64_t T, const WeightView& gate, const WeightView& up,
                   float swiglu_limit = 0);

// Whether matmul rounds the activations to q8_0 blocks against weights in this format (in the
// current numerics mode).
bool matmul_quantizes_activations(DType weight_format);

// Slow scalar reference for tests: element by element, double accumulation.
void matmul_reference(float* y, const float* x, int64_t T, const WeightView& W);

// matmul_reference on activations rounded to q8_0 blocks first, as matmul does for the formats of
// matmul_quantizes_activations; the int8 kernels must match it up to float summation order.
void matmul_reference_quantized(float* y, const float* x, int64_t T, const WeightView& W);

// out [width] = sum_s weights[s] * rows[s * stride : s * stride + width] for s = 0..n-1 (attention's
// weighted sum of cached values), SIMD along the outputs; each output adds its terms in order s.
void weighted_row_sum(float* out, const float* weights, const float* rows, int64_t n, int64_t width, int64_t stride);

// a [n] · b [n] (attention scores against keys that are not one matrix), SIMD, the sums in a fixed
// order for each n: the same bits for the same inputs on one target.
float dot(const float* a, const float* b, int64_t n);

// out [W.cols] = row `row` of W as fp32 (embedding lookups, tests).
void dequantize_row(float* out, const WeightView& W, int64_t row);

// One weight element as fp32 (slow; references and tests only).
float weight_element(const WeightView& W, int64_t row, int64_t col);

// The SIMD instruction sets the kernels were compiled for that this CPU runs, best first, by
// Highway's names ("AVX3_DL", "AVX3", "AVX2", "SCALAR": the portable fallback).
std::vector<std::string> matmul_targets();
// Makes the kernels use one of matmul_targets() (tests, benchmarks); "" goes back to the best.
void matmul_use_target(const std::string& name);

}  // namespace megamoe
