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
#include "model/tensor_spec.h"

namespace megamoe::train {

// One tensor in the block: its offset and shape ([rows, cols]; vectors have cols == 1).
struct ParamTensor {
  int64_t offset = -1;
  int64_t rows = 0, cols = 0;
  bool present() const { return offset >= 0; }
  int64_t size() const { return rows * cols; }
};

struct MlpParams {
  ParamTensor gate, up;  // [I, D] each, adjacent: [gate; up] is one [2I, D] matrix
  ParamTensor down;      // [D, I]
  int64_t width() const { return gate.rows; }
};

struct AttentionParams {
  ParamTensor q_proj;     // [H*(dn+dr), D]         without q LoRA
  ParamTensor q_a_proj;   // [R, D]                 with q LoRA
  ParamTensor q_a_norm;   // [R]
  ParamTensor q_b_proj;   // [H*(dn+dr), R]
  ParamTensor kv_a_proj;  // [C+dr, D]
  ParamTensor kv_a_norm;  // [C]
  ParamTensor kv_b_proj;  // [H*(dn+dv), C]
  ParamTensor o_proj;     // [D, H*dv]
};

struct MoeParams {
  ParamTensor gate;                // [E, D] router
  ParamTensor bias;                // [E] e_score_correction_bias (noaux_tc; selection only, not trained by gradient)
  std::vector<MlpParams> experts;  // [E] routed experts (an expert pool's layers: the first layer's tensors)
  MlpParams shared;                // shared experts (gate absent: none; share_shared_experts: the first layer's)
};

struct LayerParams {
  ParamTensor attn_norm, ffn_norm;  // [D]
  AttentionParams attn;
  bool moe = false;
  MlpParams dense;  // dense layers
  MoeParams ffn;    // MoE layers
};

struct ParameterLayout {
  std::vector<TensorSpec> tensors;  // checkpoint order
  std::vector<ParamTensor> places;  // [tensors]
  int64_t size = 0;                 // floats in the block
  ParamTensor embed;                // [V, D]
  std::vector<LayerParams> layers;
  ParamTensor final_norm;  // [D]
  ParamTensor lm_head;     // [V, D]; the embedding when tie_word_embeddings

  // Throws Error naming the config key when the trainer cannot train `c` (V4, FP8, MTP modules).
  static ParameterLayout make(const ModelConfig& c);
};

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
