// The trainable parameters of a DeepSeek-V2/V3 model as one fp32 block, laid out in the order of
// the model's one tensor list (for_each_tensor in model/deepseek_v3.h), so every tensor keeps its
// checkpoint name. Gradients and the optimizer's moments use the same layout in blocks of their
// own: one offset finds a tensor in all of them (gemma.cpp's single visitor, llm.c's single block).
#pragma once
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/deepseek_v3.h"
#include "model/tensor_spec.h"

namespace megamoe::train {

// One tensor in the block: its offset and shape ([rows, cols]; vectors have cols == 1).
struct ParamTensor {
  int64_t offset = -1;
  int64_t rows = 0, cols = 0;
  bool present() const { return offset >= 0; }
  int64_t size() const { return rows * cols; }
};

// The handles of the model's weight structs (model/deepseek_v3.h) in training: every tensor's place.
struct ParamHandles {
  using Matrix = ParamTensor;
  using Vector = ParamTensor;
};
using MlpParams = Mlp<ParamTensor>;  // gate and up adjacent: [gate; up] is one [2I, D] matrix
using AttentionParams = V3AttentionTensors<ParamHandles>;
using MoeParams = V3MoeTensors<ParamHandles>;  // bias: selection only, not trained by gradient
using LayerParams = V3LayerTensors<ParamHandles>;

// The model's weight structs holding places, and the tensors in block order.
struct ParameterLayout : V3Tensors<ParamHandles> {
  std::vector<TensorSpec> tensors;  // checkpoint order
  std::vector<ParamTensor> places;  // [tensors]
  int64_t size = 0;                 // floats in the block

  static ParameterLayout make(const ModelConfig& c);  // check_trainable(c) first
};

// Throws Error naming the config key when the trainer cannot train `c` (V4, FP8).
void check_trainable(const ModelConfig& c);

// Training from scratch: norms 1, router biases 0, every other tensor normal(0, std) from a
// stream per tensor name (the same values whatever the order or the thread count).
void initialize_parameters(float* values, const ParameterLayout& layout, uint64_t seed, double std);

// Reads every tensor of `layout` from a model directory (any stored dtype, converted to fp32).
void load_parameters(float* values, const ParameterLayout& layout, const std::filesystem::path& model_dir);

enum class SavedDType { F32, BF16 };

// The block as safetensors tensors under their checkpoint names (router biases always F32, as in
// DeepSeek's checkpoints). `name_suffix` is appended to every name (optimizer moments);
// `values` must outlive the writing.
std::vector<TensorToWrite> parameter_tensors(const float* values, const ParameterLayout& layout, SavedDType dtype,
                                             const std::string& name_suffix = "");

// Reads tensors written by parameter_tensors (F32 or BF16) back into a block; Error naming the
// file and tensor when one is missing or has another shape.
void read_parameter_tensors(float* values, const ParameterLayout& layout, const SafetensorsFile& file,
                            const std::string& name_suffix = "");

}  // namespace megamoe::train
