// How the matrix products treat activations (docs/quantization.md#numerics): `fast` rounds them to
// q8_0 blocks against int8-multiplied weights (Q8_0, Q4_0, FP4), as llama.cpp does; `exact` keeps
// every activation in fp32 against weights dequantized block by block, so results equal the
// dequantized-weight float math up to fp32 summation order, the mode in which megamoe is compared
// with references. The round trips that are part of a model's definition (V4's FP8 keys, FP4
// indexer) are the same in both modes.
#pragma once
#include <string>
#include <string_view>

namespace megamoe {

enum class Numerics { Fast, Exact };

// One mode per process, set by the frontends before any product runs (every rank of an mpirun the
// same, since they parse the same command line).
void set_numerics(Numerics numerics);
Numerics numerics();

// "fast" or "exact"; anything else fails with a message naming the value and the choices.
Numerics parse_numerics(std::string_view name);
std::string numerics_name(Numerics numerics);

}  // namespace megamoe
