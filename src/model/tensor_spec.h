// The tensor lists of the model families: each family names every tensor of a checkpoint once,
// with its shape and role, in one visitor (deepseek_v3.cpp, deepseek_v4.cpp) that loading binds
// to its weights, synth fills with random values and inspect counts.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "model/config.h"
#include "ops/weight.h"

namespace megamoe {

// What a tensor is, which decides its stored dtype and initial scale.
enum class TensorRole {
  Embedding,
  Linear,  // quantized in FP8 checkpoints (V4 routed experts: FP4)
  Norm,
  RouterGate,
  RouterBias,  // F32
  Head,
  UnquantizedLinear,  // V4 linear layers the official checkpoints keep in BF16 (compressors, weights_proj)
  HyperMix,           // V4 hyper-connection mixing matrices, F32
  Parameter,          // V4 F32 vectors and tables: hyper-connection bases and scales, ape, attention sinks
  HashTable,          // V4 tid2eid: integer expert ids per token
  EngramTable,        // V4.1 Engram memory: F8 rows with a ue8m0 scale per 32 columns, read a few rows per token
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role;
  int64_t layer = -1;   // -1: not in a layer
  int64_t expert = -1;  // routed expert index, -1 otherwise
  bool mtp = false;     // part of an MTP module (V4.1: a DSpark stage): loaded and checked, not run
  int64_t uses = 1;     // layers that use it: a pooled expert's (or shared expert's) group of MoE layers
};

// What inference holds of each tensor in a family's weight structs (the templates of deepseek_v3.h
// and deepseek_v4.h; training holds places in its parameter block instead, train/parameters.h):
// matrices as views of the checkpoint's bytes, vectors (norms, biases) copied to fp32.
struct WeightHandles {
  using Matrix = WeightView;
  using Vector = std::vector<float>;
  using Indices = std::vector<int32_t>;  // V4's hash routing tables
};

// Every tensor of the model `c` describes, whatever its family, in checkpoint order.
void for_each_tensor(const ModelConfig& c, const std::function<void(const TensorSpec&)>& visit);

// Where the family's checkpoints keep the scales of quantized weights.
ScaleLayout scale_layout(ModelFamily family);

// The block format (Q8_0 / Q4_0) a megamoe checkpoint of `weight_format` stores `spec` in, or nullopt
// where it keeps the tensor as it is (docs/quantization.md): the matrix products' weights (Linear
// layers and experts) take weight_format; the head takes Q8_0 even in Q4_0 checkpoints (its error goes
// straight into every logit, and it is read once per token next to all the layers' weights); the
// embedding (a row lookup), norms, router gates and biases (small, and they pick the experts) and V4's
// tensors the official checkpoints keep unquantized stay. A matrix whose columns are not a whole
// number of 32-blocks cannot be blocked: nullopt (quantize and synth store it in BF16).
std::optional<DType> block_format(const TensorSpec& spec, std::optional<DType> weight_format);

}  // namespace megamoe
