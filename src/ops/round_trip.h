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

// x [n] <- x @ H^T / sqrt(n), H the Sylvester Hadamard matrix; n a power of two.
void hadamard_rotate(float* x, int64_t n);

}  // namespace megamoe
