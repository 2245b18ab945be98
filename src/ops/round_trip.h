// Quantize-dequantize round trips of activations: DeepSeek-V4 was trained with them in its
// forward pass (docs/models.md#quantization-aware-numerics), so they are part of the model, not an inference choice.
#pragma once
#include <cstdint>

namespace megamoe {

// x [n] in place, blocks of 64: scale 2^ceil(log2(max(amax, 1e-4) / 448)), round to the nearest
// e4m3 value, multiply back. n must be a multiple of 64.
void fp8_round_trip(float* x, int64_t n);

// x [n] in place, blocks of 32: scale 2^ceil(log2(amax / 6)), round to the nearest e2m1 value
// (ties to the even code), multiply back; an all-zero block stays zero. n a multiple of 32.
void fp4_round_trip(float* x, int64_t n);

// DeepSeek-V4.1's round trips (docs/deepseek-v41.md#v41-round-trips), each in place on x [n]:
// Q8: blocks of 32, scale 2^ceil(log2(fp32(max(amax, 1e-4) * fp32(1/448)))), nearest e4m3 (ties
// to even, saturating); n a multiple of 32.
void q8_round_trip(float* x, int64_t n);
// Q4e8: blocks of 32, scale 2^ceil(log2(fp32(max(amax, 6 * 2^-126) * fp32(1/6)))), nearest e2m1 of
// the value clipped to +-6 (ties to the even code); n a multiple of 32.
void q4_round_trip_e8(float* x, int64_t n);
// Q4e4: blocks of 16, scale e4m3(max(amax, 6 * 2^-9) / 6), nearest e2m1 of the clipped value; n a
// multiple of 16.
void q4_round_trip_e4(float* x, int64_t n);

// x [n] <- x @ H^T / sqrt(n), H the Sylvester Hadamard matrix; n a power of two.
void hadamard_rotate(float* x, int64_t n);

}  // namespace megamoe
