// DeepSeek-V4.1 (docs/deepseek-v41.md): V4's hyper-connection blocks, shared-KV attention and
// sqrt-softplus MoE, with compressed attention shared across layers (Full layers compress and index,
// Reindex layers index the published keys, Reuse layers attend the published entries), Engram
// n-gram memory tables added to the residual streams, and the DSpark drafter's stages (loaded,
// not run). The weights and the one list of every tensor (load, synth, inspect use it).
#pragma once
#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/row_cache.h"
#include "model/config.h"
#include "model/deepseek_model.h"
#include "model/deepseek_v4.h"
#include "model/engram.h"
#include "model/tensor_spec.h"
#include "moe/moe.h"
#include "ops/rope.h"

namespace megamoe {

template <class H>
struct V41AttentionTensors {
  typename H::Vector sink;     // [H] attention sink logits
  typename H::Matrix wq_a;     // [q_lora_rank, D]
  typename H::Vector q_norm;   // [q_lora_rank]
  typename H::Matrix wq_b;     // [H*hd, q_lora_rank]
  typename H::Matrix wkv;      // [hd, D]
  typename H::Vector kv_norm;  // [hd]
  typename H::Matrix wo_a;     // [G*R, H*hd/G]
  typename H::Matrix wo_b;     // [D, G*R]
  // Full layers: the compressor (ratio r) and the index keys made from its entries.
  typename H::Matrix compressor_wkv;    // [hd, D]
  typename H::Matrix compressor_wgate;  // [hd, D], ratio > 1 only
  typename H::Vector compressor_norm;   // [hd]
  typename H::Matrix index_wk;          // [dI, hd]
  typename H::Vector index_k_norm;      // [dI]
  // Full and Reindex layers: the indexer's queries and head weights.
  typename H::Matrix index_wq_b;          // [index_n_heads*dI, q_lora_rank]
  typename H::Matrix index_weights_proj;  // [index_n_heads, D]
};

template <class H>
struct V41MoeTensors {
  typename H::Matrix gate;                       // [E, D]
  typename H::Vector bias;                       // [E] selection bias
  typename H::Vector bias_vl;                    // [E] the bias of image positions (text never uses it)
  Mlp<typename H::Matrix> shared;                // [n_shared*I, D] ... (gate absent: none)
  std::vector<Mlp<typename H::Matrix>> experts;  // [E] routed
};

// An Engram layer's memory: a table of n-gram embeddings read a few rows per token, and the
// projection and gates that add them to the streams.
template <class H>
struct EngramTensors {
  typename H::Matrix table;     // [engram_num_embeddings, engram_head_dim]: F8 rows, a ue8m0 scale per 32
  typename H::Matrix wkv;       // [(hc+1)*D, (N-1)*n_heads*engram_head_dim]: keys per stream | value
  typename H::Vector q_weight;  // [hc, D]
  typename H::Vector k_weight;  // [hc, D]
};

template <class H>
struct V41BlockTensors {
  typename H::Vector attn_norm;  // [D]
  typename H::Vector ffn_norm;   // [D]
  HyperConnectionTensors<H> hc_attn, hc_ffn;
  V41AttentionTensors<H> attn;
  V41MoeTensors<H> ffn;
  EngramTensors<H> engram;  // Engram layers only
};

// A DSpark drafter stage: a window-only block; the first projects the target layers' features, the
// last carries the Markov and confidence heads. Loaded and checked, not used by the forward pass.
template <class H>
struct DSparkStageTensors {
  V41BlockTensors<H> block;
  typename H::Matrix main_proj;        // [D, D * targets] first stage
  typename H::Vector main_norm;        // [D] first stage
  typename H::Vector norm;             // [D] last stage
  typename H::Matrix markov_embed;     // [V, markov_rank] last stage
  typename H::Matrix markov_head;      // [V, markov_rank] last stage
  typename H::Matrix confidence_proj;  // [1, D + markov_rank] last stage
};

template <class H>
struct V41Tensors {
  typename H::Matrix embed;  // [V, D]
  std::vector<V41BlockTensors<H>> layers;
  std::vector<DSparkStageTensors<H>> dspark;
  typename H::Vector norm;  // [D]
  typename H::Matrix head;  // [V, D]
};

using V41Weights = V41Tensors<WeightHandles>;

// Names the tensors of one part of a V4.1 model to a visitor, as V4TensorLister does for V4 (whose
// hyper-connection and MLP lists it reuses).
template <class H, class Visit>
class V41TensorLister : public V4TensorLister<H, Visit> {
 public:
  using Base = V4TensorLister<H, Visit>;
  using Base::Base;
  using Base::block_core;
  using Base::matrix;
  using Base::mlp;
  using Base::values;

  // A backbone layer (Engram included), or with `stage` >= 0 a DSpark stage's block.
  void block(const ModelConfig& c, int64_t layer, int64_t stage, V41BlockTensors<H>* b) const {
    const V4Config& v = c.v4;
    const int64_t D = c.hidden_size, hd = v.head_dim, q_rank = *c.q_lora_rank, dI = v.index_head_dim;
    const int64_t E = stage >= 0 ? c.v41.dspark_n_routed_experts : c.n_routed_experts;
    if (stage < 0 && c.v41.engram_index(layer) >= 0) engram(c, c.v41.engram_index(layer), &b->engram);
    block_core(b);
    V41AttentionTensors<H>& a = b->attn;
    if (stage < 0 && c.v41.is_kv_source(layer)) {
      matrix("attn.compressor.wkv.weight", hd, D, TensorRole::UnquantizedLinear, &a.compressor_wkv);
      if (v.compress_ratio(layer) > 1)
        matrix("attn.compressor.wgate.weight", hd, D, TensorRole::UnquantizedLinear, &a.compressor_wgate);
      values("attn.compressor.norm.weight", {hd}, TensorRole::Norm, &a.compressor_norm);
    }
    if (stage < 0 && c.v41.is_index_source(layer)) {
      matrix("attn.indexer.wq_b.weight", v.index_n_heads * dI, q_rank, TensorRole::Linear, &a.index_wq_b);
      matrix("attn.indexer.weights_proj.weight", v.index_n_heads, D, TensorRole::UnquantizedLinear,
             &a.index_weights_proj);
      if (c.v41.is_kv_source(layer)) {
        matrix("attn.indexer.wk.weight", dI, hd, TensorRole::UnquantizedLinear, &a.index_wk);
        values("attn.indexer.k_norm.weight", {dI}, TensorRole::Norm, &a.index_k_norm);
      }
    }

    V41MoeTensors<H>& f = b->ffn;
    matrix("ffn.gate.weight", E, D, TensorRole::RouterGate, &f.gate);
    values("ffn.gate.bias", {E}, TensorRole::RouterBias, &f.bias);
    values("ffn.gate.bias_vl", {E}, TensorRole::RouterBias, &f.bias_vl);
    f.experts.resize(E);
    for (int64_t e = 0; e < E; ++e) mlp(fmt::format("ffn.experts.{}.", e), c.moe_intermediate_size, &f.experts[e], e);
    if (c.n_shared_experts > 0) mlp("ffn.shared_experts.", c.n_shared_experts * c.moe_intermediate_size, &f.shared, -1);
  }

  void engram(const ModelConfig& c, int64_t index, EngramTensors<H>* e) const {
    const V41Config& w = c.v41;
    const int64_t D = c.hidden_size, M = c.v4.hc_mult;
    matrix("engram.embed.weight", w.engram_num_embeddings[index], w.engram_head_dim, TensorRole::EngramTable,
           &e->table);
    matrix("engram.wkv.weight", (M + 1) * D, w.engram_rows_per_token() * w.engram_head_dim, TensorRole::Linear,
           &e->wkv);
    values("engram.q_weight", {M, D}, TensorRole::Norm, &e->q_weight);
    values("engram.k_weight", {M, D}, TensorRole::Norm, &e->k_weight);
  }
};

// Every tensor of a V4.1 checkpoint's text model, DSpark stages included (vision tensors are not
// listed: text generation reads none), in checkpoint order: visit(spec, slot), slot an H::Matrix*
// or H::Vector* in `w` (sized first).
template <class H, class Visit>
void for_each_tensor(const ModelConfig& c, V41Tensors<H>* w, const Visit& visit) {
  using Lister = V41TensorLister<H, Visit>;
  const V41Config& v = c.v41;
  const int64_t D = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  const int64_t stages = c.v4.num_nextn_predict_layers;
  const Lister top(c, visit, "");
  top.matrix("embed.weight", V, D, TensorRole::Embedding, &w->embed);
  w->layers.resize(L);
  for (int64_t layer = 0; layer < L; ++layer)
    Lister(c, visit, fmt::format("layers.{}.", layer), layer).block(c, layer, -1, &w->layers[layer]);
  w->dspark.resize(stages);
  for (int64_t s = 0; s < stages; ++s) {
    const Lister t(c, visit, fmt::format("mtp.{}.", s), L + s, true);
    DSparkStageTensors<H>& stage = w->dspark[s];
    t.block(c, L + s, s, &stage.block);
    if (s == 0) {
      t.matrix("main_proj.weight", D, D * int64_t(v.dspark_target_layers.size()), TensorRole::Linear, &stage.main_proj);
      t.values("main_norm.weight", {D}, TensorRole::Norm, &stage.main_norm);
    }
    if (s == stages - 1) {
      t.values("norm.weight", {D}, TensorRole::Norm, &stage.norm);
      t.matrix("markov_head.embed.weight", V, v.dspark_markov_rank, TensorRole::Embedding, &stage.markov_embed);
      t.matrix("markov_head.head.weight", V, v.dspark_markov_rank, TensorRole::UnquantizedLinear, &stage.markov_head);
      t.matrix("confidence_head.proj.weight", 1, D + v.dspark_markov_rank, TensorRole::UnquantizedLinear,
               &stage.confidence_proj);
    }
  }
  top.values("norm.weight", {D}, TensorRole::Norm, &w->norm);
  top.matrix("head.weight", V, D, TensorRole::Head, &w->head);
}

// One sequence's state (docs/deepseek-v41.md#v41-incremental-decode): per layer a ring of the latest
// window keys; per Full layer the compressed entries, the index keys and the rows of the group not yet
// complete; the Engram classes of every position. Everything is kept by position, so it can forget
// back to any length up to kRewindSlack tokens ago (or everything).
class V41Cache final : public RingCache {
 public:
  struct Layer {
    int64_t window_ring = 0;        // window keys kept: W + kRewindSlack, slot = position % window_ring
    std::vector<float> window;      // [window_ring, hd]
    int64_t group_ring = 0;         // Full layers of ratio > 1: rows kept, slot = position % group_ring
    std::vector<float> group_rows;  // [group_ring, 2 * hd]: Wkv x | Wgate x
    std::vector<float> entries;     // Full layers: [capacity / r, hd]
    std::vector<float> index_keys;  // Full layers: [capacity / r, dI]
  };
  V41Cache(const ModelConfig& c, int64_t capacity);
  int64_t bytes() const override;
  Layer& layer(int64_t L) { return layers_[L]; }
  std::vector<int32_t>& classes() { return classes_; }  // [capacity] Engram class of each position

  static int64_t values(const ModelConfig& c, int64_t capacity);  // fp32 values of a cache of `capacity`

 private:
  std::vector<Layer> layers_;
  std::vector<int32_t> classes_;
};

struct V41Activations;

class DeepseekV41Model final : public DeepseekModel {
 public:
  // Binds every tensor (DSpark stages included, unused) and, for Engram, derives the token map from
  // the tokenizer.json beside the checkpoint.
  DeepseekV41Model(std::unique_ptr<Checkpoint> checkpoint, ModelConfig config);
  ~DeepseekV41Model() override;

  std::unique_ptr<SequenceCache> new_cache(int64_t capacity) const override;
  int64_t cache_bytes_per_token() const override;
  int64_t cache_bytes(int64_t capacity) const override;
  void forward(float* logits, std::span<const SequenceStep> batch) const override;
  const RowCache* cache_table_rows(int64_t bytes) override;

 private:
  void forward_batch(float* logits, std::span<const SequenceStep> batch) const;
  V41Weights weights_;
  V4Ropes ropes_;
  std::vector<int32_t> token_classes_;  // [vocab] Engram class of each token (Engram models)
  int32_t pad_class_ = 0;
  std::unique_ptr<EngramHashing> engram_;  // Engram models
  std::unique_ptr<RowCache> engram_rows_;  // the tables read through a cache (--memory-budget); null: mapped
  std::unique_ptr<V41Activations> activations_;
  mutable TokenBatch narrowed_;  // the running pass's rows for the layers after the last kv source
};

}  // namespace megamoe
