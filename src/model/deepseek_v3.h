// DeepSeek-V2/V3: MLA attention and DeepSeekMoE (docs/models.md#2-deepseek-v2v3). The weights, the one list of
// every tensor (load, synth, inspect use it), and the forward pass.
#pragma once
#include <fmt/format.h>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/deepseek_model.h"
#include "model/model.h"
#include "model/tensor_spec.h"
#include "moe/moe.h"
#include "ops/rope.h"

namespace megamoe {

// The weights of a V2/V3 model as handles of kind H (WeightHandles when inferring; a parameter's
// place when training, train/parameters.h): one struct, one tensor list, for both (gemma.cpp's
// ForEachTensor over one weight struct).
template <class H>
struct V3AttentionTensors {
  typename H::Matrix q_proj;     // [H*(dn+dr), D]  without q LoRA
  typename H::Matrix q_a_proj;   // [q_lora_rank, D] with q LoRA
  typename H::Vector q_a_norm;   // [q_lora_rank]
  typename H::Matrix q_b_proj;   // [H*(dn+dr), q_lora_rank]
  typename H::Matrix kv_a_proj;  // [C+dr, D]
  typename H::Vector kv_a_norm;  // [C]
  typename H::Matrix kv_b_proj;  // [H*(dn+dv), C]
  typename H::Matrix o_proj;     // [D, H*dv]
};

template <class H>
struct V3MoeTensors {
  typename H::Matrix gate;                       // [E, D] router
  typename H::Vector bias;                       // [E] e_score_correction_bias (absent: none)
  Mlp<typename H::Matrix> shared;                // [n_shared*I_moe, D] ... (gate absent: none)
  std::vector<Mlp<typename H::Matrix>> experts;  // [E] routed (an expert pool's later layers: the first's)
};

template <class H>
struct V3LayerTensors {
  typename H::Vector attn_norm;  // [D] input_layernorm
  typename H::Vector ffn_norm;   // [D] post_attention_layernorm
  V3AttentionTensors<H> attn;
  Mlp<typename H::Matrix> dense;  // dense layers only
  V3MoeTensors<H> moe;            // MoE layers only
};

template <class H>
struct V3Tensors {
  typename H::Matrix embed;  // [V, D]
  std::vector<V3LayerTensors<H>> layers;
  typename H::Vector final_norm;  // [D]
  typename H::Matrix lm_head;     // [V, D]; tie_word_embeddings: not listed, the embedding's handle
};

using V3AttentionWeights = V3AttentionTensors<WeightHandles>;
using V3MoeWeights = V3MoeTensors<WeightHandles>;
using V3LayerWeights = V3LayerTensors<WeightHandles>;
using V3Weights = V3Tensors<WeightHandles>;

// Every tensor of the model in checkpoint order: visit(spec, slot), slot an H::Matrix* or an
// H::Vector* in `w` (sized first). Then the handles the list does not name are filled in: the
// head of tied embeddings, and an expert pool's later layers, which hold the handles of their
// pool's first layer (its routed experts, and its shared experts when shared).
template <class H, class Visit>
void for_each_tensor(const ModelConfig& c, V3Tensors<H>* w, const Visit& visit) {
  const int64_t D = c.hidden_size, H_ = c.num_attention_heads, C = c.kv_lora_rank;
  const int64_t dr = c.qk_rope_head_dim, dn = c.qk_nope_head_dim, dv = c.v_head_dim;
  auto matrix = [&](std::string name, int64_t rows, int64_t cols, TensorRole role, typename H::Matrix* slot,
                    int64_t layer = -1, int64_t expert = -1, int64_t uses = 1) {
    visit(TensorSpec{std::move(name), {rows, cols}, role, layer, expert, false, uses}, slot);
  };
  auto vector = [&](std::string name, int64_t n, TensorRole role, typename H::Vector* slot, int64_t layer) {
    visit(TensorSpec{std::move(name), {n}, role, layer, -1}, slot);
  };
  auto mlp = [&](const std::string& prefix, int64_t width, Mlp<typename H::Matrix>* m, int64_t layer, int64_t expert,
                 int64_t uses = 1) {
    matrix(prefix + ".gate_proj.weight", width, D, TensorRole::Linear, &m->gate, layer, expert, uses);
    matrix(prefix + ".up_proj.weight", width, D, TensorRole::Linear, &m->up, layer, expert, uses);
    matrix(prefix + ".down_proj.weight", D, width, TensorRole::Linear, &m->down, layer, expert, uses);
  };

  matrix("model.embed_tokens.weight", c.vocab_size, D, TensorRole::Embedding, &w->embed);
  w->layers.resize(c.num_hidden_layers);
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    V3LayerTensors<H>& lw = w->layers[L];
    V3AttentionTensors<H>& a = lw.attn;
    const std::string p = fmt::format("model.layers.{}", L);
    vector(p + ".input_layernorm.weight", D, TensorRole::Norm, &lw.attn_norm, L);
    if (c.q_lora_rank) {
      matrix(p + ".self_attn.q_a_proj.weight", *c.q_lora_rank, D, TensorRole::Linear, &a.q_a_proj, L);
      vector(p + ".self_attn.q_a_layernorm.weight", *c.q_lora_rank, TensorRole::Norm, &a.q_a_norm, L);
      matrix(p + ".self_attn.q_b_proj.weight", H_ * (dn + dr), *c.q_lora_rank, TensorRole::Linear, &a.q_b_proj, L);
    } else {
      matrix(p + ".self_attn.q_proj.weight", H_ * (dn + dr), D, TensorRole::Linear, &a.q_proj, L);
    }
    matrix(p + ".self_attn.kv_a_proj_with_mqa.weight", C + dr, D, TensorRole::Linear, &a.kv_a_proj, L);
    vector(p + ".self_attn.kv_a_layernorm.weight", C, TensorRole::Norm, &a.kv_a_norm, L);
    matrix(p + ".self_attn.kv_b_proj.weight", H_ * (dn + dv), C, TensorRole::Linear, &a.kv_b_proj, L);
    matrix(p + ".self_attn.o_proj.weight", D, H_ * dv, TensorRole::Linear, &a.o_proj, L);
    vector(p + ".post_attention_layernorm.weight", D, TensorRole::Norm, &lw.ffn_norm, L);
    if (!c.is_moe_layer(L)) {
      mlp(p + ".mlp", c.intermediate_size, &lw.dense, L, -1);
      continue;
    }
    V3MoeTensors<H>& m = lw.moe;
    matrix(p + ".mlp.gate.weight", c.n_routed_experts, D, TensorRole::RouterGate, &m.gate, L);
    if (c.has_bias())
      vector(p + ".mlp.gate.e_score_correction_bias", c.n_routed_experts, TensorRole::RouterBias, &m.bias, L);
    // An expert pool's experts (and shared experts when shared) are listed once, under the first
    // layer of its group, and count one use per layer of the group.
    const int64_t pool_layers = int64_t(c.expert_pool_layers(c.expert_pool_of_layer(L)).size());
    if (c.routed_experts_layer(L) == L) {
      m.experts.resize(c.n_routed_experts);
      for (int64_t e = 0; e < c.n_routed_experts; ++e)
        mlp(fmt::format("{}.mlp.experts.{}", p, e), c.moe_intermediate_size, &m.experts[e], L, e, pool_layers);
    } else {
      m.experts = w->layers[c.routed_experts_layer(L)].moe.experts;
    }
    if (c.n_shared_experts > 0 && c.shared_experts_layer(L) == L)
      mlp(p + ".mlp.shared_experts", c.n_shared_experts * c.moe_intermediate_size, &m.shared, L, -1,
          c.share_shared_experts ? pool_layers : 1);
    else if (c.n_shared_experts > 0) m.shared = w->layers[c.shared_experts_layer(L)].moe.shared;
  }
  vector("model.norm.weight", D, TensorRole::Norm, &w->final_norm, -1);
  if (c.tie_word_embeddings) w->lm_head = w->embed;
  else matrix("lm_head.weight", c.vocab_size, D, TensorRole::Head, &w->lm_head);
}

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

struct V3Activations;

class DeepseekV3Model final : public DeepseekModel {
 public:
  // Binds every tensor of the checkpoint (mapped, nothing copied but norms) to the weights;
  // load_model (model.h) opens the checkpoint and parses its config.
  DeepseekV3Model(std::unique_ptr<Checkpoint> checkpoint, ModelConfig config);
  ~DeepseekV3Model() override;

  std::unique_ptr<SequenceCache> new_cache(int64_t capacity) const override;
  int64_t cache_bytes_per_token() const override;
  void forward(float* logits, std::span<const SequenceStep> batch) const override;

 private:
  V3Weights weights_;
  Rope rope_;
  float softmax_scale_ = 1;
  std::unique_ptr<V3Activations> activations_;  // the forward pass's working memory
};

}  // namespace megamoe
