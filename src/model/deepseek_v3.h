// DeepSeek-V2/V3: MLA attention and DeepSeekMoE (docs/models.md#2-deepseek-v2v3). The weights, the one list of
// every tensor (load, synth, inspect use it), and the forward pass.
#pragma once
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/model.h"
#include "model/tensor_spec.h"
#include "moe/moe.h"
#include "ops/rope.h"

namespace megamoe {

struct V3AttentionWeights {
  WeightView q_proj;             // [H*(dn+dr), D]  without q LoRA
  WeightView q_a_proj;           // [q_lora_rank, D] with q LoRA
  std::vector<float> q_a_norm;   // [q_lora_rank]
  WeightView q_b_proj;           // [H*(dn+dr), q_lora_rank]
  WeightView kv_a_proj;          // [C+dr, D]
  std::vector<float> kv_a_norm;  // [C]
  WeightView kv_b_proj;          // [H*(dn+dv), C]
  WeightView o_proj;             // [D, H*dv]
};

struct V3MoeWeights {
  WeightView gate;                  // [E, D] router
  std::vector<float> bias;          // [E] e_score_correction_bias (empty: none)
  MlpWeights shared;                // [n_shared*I_moe, D] ... (gate.data == nullptr: none)
  std::vector<MlpWeights> experts;  // [E] routed; empty in an expert pool's later layers (they use the first's)
};

struct V3LayerWeights {
  std::vector<float> attn_norm;  // [D] input_layernorm
  std::vector<float> ffn_norm;   // [D] post_attention_layernorm
  V3AttentionWeights attn;
  MlpWeights dense;  // dense layers only
  V3MoeWeights moe;  // MoE layers only
};

struct V3Weights {
  WeightView embed;  // [V, D]
  std::vector<V3LayerWeights> layers;
  std::vector<float> final_norm;  // [D]
  WeightView lm_head;             // [V, D]
};

// Every tensor of the model, in checkpoint order (sizes `weights` first).
void for_each_tensor(const ModelConfig& c, V3Weights* weights,
                     const std::function<void(const TensorSpec&, TensorSlot)>& visit);

// MLA's rotary embedding with YaRN when the config has rope_scaling (docs/models.md#rope-and-yarn), and the
// attention's softmax scale mscale(mscale_all_dim)^2 / sqrt(qk_head_dim). Inference and training share it.
struct MlaRope {
  Rope rope;
  float softmax_scale = 1;
};
MlaRope mla_rope(const ModelConfig& c);

// The absorbed MLA cache (docs/models.md#absorbed-mla-cache): per layer and token only the normalized latent
// (kv_lora_rank values) and the roped key (qk_rope_head_dim values).
class MlaCache final : public SequenceCache {
 public:
  MlaCache(int64_t layers, int64_t capacity, int64_t entry)
      : SequenceCache(capacity), entry_(entry), values_(size_t(layers * capacity * entry)) {}
  int64_t bytes() const override { return int64_t(values_.size() * sizeof(float)); }
  // [capacity, C + dr] of one layer: latent | rope key per token.
  float* layer(int64_t L) { return values_.data() + L * capacity() * entry_; }

 private:
  int64_t entry_;              // C + dr
  std::vector<float> values_;  // [layers, capacity, C + dr], one allocation
};

class DeepseekV3Model final : public Model {
 public:
  // Opens the checkpoint, parses config.json, checks and maps every tensor (nothing copied but norms).
  static std::unique_ptr<DeepseekV3Model> load(const std::filesystem::path& dir,
                                               Residency residency = Residency::Mapped);

  const ModelInfo& info() const override { return info_; }
  const ModelConfig& config() const { return config_; }
  const Checkpoint& checkpoint() const { return *checkpoint_; }
  std::unique_ptr<SequenceCache> new_cache(int64_t capacity) const override;
  int64_t cache_bytes_per_token() const override;
  void forward(float* logits, std::span<const SequenceStep> batch) const override;
  std::pair<StreamingExpertStore*, int64_t> stream_experts() override;

 private:
  DeepseekV3Model() = default;
  ModelConfig config_;
  ModelInfo info_;
  std::unique_ptr<Checkpoint> checkpoint_;
  V3Weights weights_;
  std::unique_ptr<ExpertStore> experts_;
  std::vector<std::span<const MlpWeights>> expert_spans_;  // [layers] what experts_ serves
  Rope rope_;
  float softmax_scale_ = 1;
};

}  // namespace megamoe
