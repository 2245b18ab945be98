// Training's elementary forward/backward pairs. Forward passes that inference already has
// (ops/elementwise.h: rms_norm, softmax, swiglu; ops/rope.h) are reused as they are; this file adds
// their backward passes and the fp32 linear layer through BLAS. Written by hand because no
// Debian-packaged library offers backward passes for C++ (libtorch is not in Debian).
//
// Conventions (llm.c's): output pointers first, then inputs, then sizes. Weight gradients are
// always added (+=) into their buffers, so shared weights and batches accumulate; input gradients
// are written (=) unless a function says it adds.
#pragma once
#include <cstdint>

#include "ops/elementwise.h"  // kParallelGrain

namespace megamoe::train {

// y [N, out] = x [N, in] @ w^T, w [out, in] (a linear layer without bias).
void linear_forward(float* y, const float* x, const float* w, int64_t N, int64_t out, int64_t in);

// dw [out, in] += dy^T @ x; dx [N, in] = dy @ w (+= when `add_dx`); dx may be null.
void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t N, int64_t out,
                     int64_t in, bool add_dx = false);

// Backward of rms_norm(y = x / sqrt(mean(x^2) + eps) * weight) over T rows of D values:
// dx = dy * weight * r - x * r^3 / D * sum(dy * weight * x), r = 1 / sqrt(mean(x^2) + eps);
// dweight [D] += sum over rows of dy * x * r. x and dx rows have strides x_stride and dx_stride
// (-1: D); dx may alias dy when both are contiguous. `add_dx` adds into dx instead.
void rms_norm_backward(float* dx, float* dweight, const float* dy, const float* x, const float* weight, int64_t T,
                       int64_t D, float eps, int64_t x_stride = -1, int64_t dx_stride = -1, bool add_dx = false);

// Backward of swiglu (act = silu(gate) * up) over n values: dgate = dact * up * silu'(gate),
// dup = dact * silu(gate). dgate may alias dact. One thread (callers split rows).
void swiglu_backward(float* dgate, float* dup, const float* dact, const float* gate, const float* up, int64_t n);

// Backward of softmax over one row of n values: dx = y * (dy - sum(dy * y)) in place of dy.
void softmax_backward(float* dy, const float* y, int64_t n);

// Sum over N rows of -log softmax(logits)[target]. With `dlogits` (may alias logits) also writes
// d(scale * sum)/dlogits = scale * (softmax(logits) - onehot(target)).
double cross_entropy(float* dlogits, const float* logits, const int32_t* targets, int64_t N, int64_t V, float scale);

}  // namespace megamoe::train
