// DeepSeek-V4 (docs/models.md#3-deepseek-v4): hyper-connection residual streams, one shared key/value head
// attending over a sliding window plus compressed entries (CSA: overlapping windows of 4 picked by
// the lightning indexer; HCA: longer windows, all seen), sqrt-softplus and hash routing, clamped
// SwiGLU experts (FP4 in the official layout). The weights, the one list of every tensor (load,
// synth, inspect use it), the cache and the forward pass. Shares the ops, the loader, the MoE
// dispatch and router, and the Model/SequenceCache interface with deepseek_v3.
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

// The weights of a V4 model as handles of kind H (WeightHandles when inferring, model/tensor_spec.h):
// one struct and one tensor list, shaped like V2/V3's (deepseek_v3.h).

// Mixing of the M residual streams around one sublayer (or before the head).
template <class H>
struct HyperConnectionTensors {
  typename H::Matrix fn;     // [(2+M)*M, M*D] F32 (head: [M, M*D])
  typename H::Vector base;   // [(2+M)*M] (head: [M])
  typename H::Vector scale;  // [3]: pre, post, comb (head: [1])
};

// Pools each window of `ratio` tokens into one entry of `width` values.
template <class H>
struct CompressorTensors {
  typename H::Matrix wkv;    // [c*width, D], c = 2 for overlapping windows (ratio 4), else 1
  typename H::Matrix wgate;  // [c*width, D]
  typename H::Vector ape;    // [ratio, c*width] gate bias by position in the window
  typename H::Vector norm;   // [width]
};

template <class H>
struct V4AttentionTensors {
  typename H::Vector sink;                // [H] attention sink logits
  typename H::Matrix wq_a;                // [q_lora_rank, D]
  typename H::Vector q_norm;              // [q_lora_rank]
  typename H::Matrix wq_b;                // [H*hd, q_lora_rank]
  typename H::Matrix wkv;                 // [hd, D]
  typename H::Vector kv_norm;             // [hd]
  typename H::Matrix wo_a;                // [G*R, H*hd/G]: group g maps its heads to R values
  typename H::Matrix wo_b;                // [D, G*R]
  CompressorTensors<H> compressor;        // compressed layers (width hd)
  typename H::Matrix index_wq_b;          // [index_n_heads * dI, q_lora_rank]  CSA layers
  typename H::Matrix index_weights_proj;  // [index_n_heads, D]
  CompressorTensors<H> index_compressor;  // width dI, ratio 4
};

template <class H>
struct V4MoeTensors {
  typename H::Matrix gate;                       // [E, D]
  typename H::Vector bias;                       // [E] selection bias (biased layers)
  typename H::Indices tid2eid;                   // [V, k] experts per token (hash layers)
  Mlp<typename H::Matrix> shared;                // [n_shared*I, D] ... (gate absent: none)
  std::vector<Mlp<typename H::Matrix>> experts;  // [E] routed
};

// A layer, or the block of an MTP module.
template <class H>
struct V4BlockTensors {
  typename H::Vector attn_norm;  // [D]
  typename H::Vector ffn_norm;   // [D]
  HyperConnectionTensors<H> hc_attn, hc_ffn;
  V4AttentionTensors<H> attn;
  V4MoeTensors<H> ffn;
};

// A multi-token-prediction module: loaded and checked, not used by the forward pass yet.
template <class H>
struct V4MtpTensors {
  V4BlockTensors<H> block;
  typename H::Matrix e_proj, h_proj;      // [D, D]
  typename H::Vector enorm, hnorm, norm;  // [D]
  HyperConnectionTensors<H> hc_head;
};

template <class H>
struct V4Tensors {
  typename H::Matrix embed;  // [V, D]
  std::vector<V4BlockTensors<H>> layers;
  std::vector<V4MtpTensors<H>> mtp;
  typename H::Vector norm;  // [D]
  HyperConnectionTensors<H> hc_head;
  typename H::Matrix head;  // [V, D]
};

using HyperConnection = HyperConnectionTensors<WeightHandles>;
using CompressorWeights = CompressorTensors<WeightHandles>;
using V4AttentionWeights = V4AttentionTensors<WeightHandles>;
using V4MoeWeights = V4MoeTensors<WeightHandles>;
using V4BlockWeights = V4BlockTensors<WeightHandles>;
using V4Weights = V4Tensors<WeightHandles>;

// Names the tensors of one part of a V4 model (the top level, a layer or an MTP module) to a
// visitor: visit(spec, slot), slot an H::Matrix*, H::Vector* or H::Indices*.
template <class H, class Visit>
class V4TensorLister {
 public:
  V4TensorLister(const ModelConfig& c, const Visit& visit, std::string prefix, int64_t layer = -1, bool mtp = false)
      : c_(c), visit_(visit), prefix_(std::move(prefix)), layer_(layer), mtp_(mtp) {}

  void matrix(const std::string& name, int64_t rows, int64_t cols, TensorRole role, typename H::Matrix* slot,
              int64_t expert = -1) const {
    visit_(TensorSpec{prefix_ + name, {rows, cols}, role, layer_, expert, mtp_}, slot);
  }
  void values(const std::string& name, std::vector<int64_t> shape, TensorRole role, typename H::Vector* slot) const {
    visit_(TensorSpec{prefix_ + name, std::move(shape), role, layer_, -1, mtp_}, slot);
  }
  void table(const std::string& name, std::vector<int64_t> shape, typename H::Indices* slot) const {
    visit_(TensorSpec{prefix_ + name, std::move(shape), TensorRole::HashTable, layer_, -1, mtp_}, slot);
  }

  // `rows` mixes of the M*D stream values: (2+M)*M around a sublayer, M before the head.
  void hyper_connection(const std::string& name, int64_t rows, int64_t scales, HyperConnectionTensors<H>* hc) const {
    matrix(name + "_fn", rows, c_.v4.hc_mult * c_.hidden_size, TensorRole::HyperMix, &hc->fn);
    values(name + "_base", {rows}, TensorRole::Parameter, &hc->base);
    values(name + "_scale", {scales}, TensorRole::Parameter, &hc->scale);
  }

  void compressor(const std::string& p, int64_t width, int64_t ratio, CompressorTensors<H>* w) const {
    const int64_t overlap = ratio == 4 ? 2 : 1;
    matrix(p + "wkv.weight", overlap * width, c_.hidden_size, TensorRole::UnquantizedLinear, &w->wkv);
    matrix(p + "wgate.weight", overlap * width, c_.hidden_size, TensorRole::UnquantizedLinear, &w->wgate);
    values(p + "ape", {ratio, overlap * width}, TensorRole::Parameter, &w->ape);
    values(p + "norm.weight", {width}, TensorRole::Norm, &w->norm);
  }

  void mlp(const std::string& p, int64_t width, Mlp<typename H::Matrix>* m, int64_t expert) const {
    const int64_t D = c_.hidden_size;
    matrix(p + "w1.weight", width, D, TensorRole::Linear, &m->gate, expert);
    matrix(p + "w2.weight", D, width, TensorRole::Linear, &m->down, expert);
    matrix(p + "w3.weight", width, D, TensorRole::Linear, &m->up, expert);
  }

  // What every block of the V4 family lists first (V4.1's too): its norms, hyper-connections and
  // the attention's own projections.
  template <class Block>
  void block_core(Block* b) const {
    const V4Config& v = c_.v4;
    const int64_t D = c_.hidden_size, heads = c_.num_attention_heads, hd = v.head_dim, M = v.hc_mult;
    const int64_t q_rank = *c_.q_lora_rank, G = v.o_groups, R = v.o_lora_rank;
    values("attn_norm.weight", {D}, TensorRole::Norm, &b->attn_norm);
    values("ffn_norm.weight", {D}, TensorRole::Norm, &b->ffn_norm);
    hyper_connection("hc_attn", (2 + M) * M, 3, &b->hc_attn);
    hyper_connection("hc_ffn", (2 + M) * M, 3, &b->hc_ffn);
    auto& a = b->attn;
    values("attn.attn_sink", {heads}, TensorRole::Parameter, &a.sink);
    matrix("attn.wq_a.weight", q_rank, D, TensorRole::Linear, &a.wq_a);
    values("attn.q_norm.weight", {q_rank}, TensorRole::Norm, &a.q_norm);
    matrix("attn.wq_b.weight", heads * hd, q_rank, TensorRole::Linear, &a.wq_b);
    matrix("attn.wkv.weight", hd, D, TensorRole::Linear, &a.wkv);
    values("attn.kv_norm.weight", {hd}, TensorRole::Norm, &a.kv_norm);
    matrix("attn.wo_a.weight", G * R, heads * hd / G, TensorRole::Linear, &a.wo_a);
    matrix("attn.wo_b.weight", D, G * R, TensorRole::Linear, &a.wo_b);
  }

  void block(int64_t ratio, bool hash, V4BlockTensors<H>* b) const {
    const V4Config& v = c_.v4;
    const int64_t D = c_.hidden_size, hd = v.head_dim, q_rank = *c_.q_lora_rank, E = c_.n_routed_experts;
    block_core(b);
    V4AttentionTensors<H>& a = b->attn;
    if (ratio) compressor("attn.compressor.", hd, ratio, &a.compressor);
    if (ratio == 4) {
      matrix("attn.indexer.wq_b.weight", v.index_n_heads * v.index_head_dim, q_rank, TensorRole::Linear, &a.index_wq_b);
      matrix("attn.indexer.weights_proj.weight", v.index_n_heads, D, TensorRole::UnquantizedLinear,
             &a.index_weights_proj);
      compressor("attn.indexer.compressor.", v.index_head_dim, 4, &a.index_compressor);
    }

    V4MoeTensors<H>& f = b->ffn;
    matrix("ffn.gate.weight", E, D, TensorRole::RouterGate, &f.gate);
    if (hash) table("ffn.gate.tid2eid", {c_.vocab_size, c_.num_experts_per_tok}, &f.tid2eid);
    else values("ffn.gate.bias", {E}, TensorRole::RouterBias, &f.bias);
    f.experts.resize(E);
    for (int64_t e = 0; e < E; ++e) mlp(fmt::format("ffn.experts.{}.", e), c_.moe_intermediate_size, &f.experts[e], e);
    if (c_.n_shared_experts > 0)
      mlp("ffn.shared_experts.", c_.n_shared_experts * c_.moe_intermediate_size, &f.shared, -1);
  }

 private:
  const ModelConfig& c_;
  const Visit& visit_;
  std::string prefix_;
  int64_t layer_;
  bool mtp_;
};

// Every tensor of a V4 checkpoint, MTP modules included, in checkpoint order: visit(spec, slot),
// slot an H::Matrix*, H::Vector* or H::Indices* in `w` (sized first).
template <class H, class Visit>
void for_each_tensor(const ModelConfig& c, V4Tensors<H>* w, const Visit& visit) {
  using Lister = V4TensorLister<H, Visit>;
  const V4Config& v = c.v4;
  const int64_t D = c.hidden_size, M = v.hc_mult, L = c.num_hidden_layers;
  const Lister top(c, visit, "");
  top.matrix("embed.weight", c.vocab_size, D, TensorRole::Embedding, &w->embed);
  w->layers.resize(L);
  for (int64_t layer = 0; layer < L; ++layer)
    Lister(c, visit, fmt::format("layers.{}.", layer), layer)
        .block(v.compress_ratio(layer), layer < v.num_hash_layers, &w->layers[layer]);
  w->mtp.resize(v.num_nextn_predict_layers);
  for (int64_t i = 0; i < v.num_nextn_predict_layers; ++i) {
    const Lister t(c, visit, fmt::format("mtp.{}.", i), L + i, true);
    V4MtpTensors<H>& m = w->mtp[i];
    t.block(v.compress_ratio(L + i), false, &m.block);
    t.matrix("e_proj.weight", D, D, TensorRole::Linear, &m.e_proj);
    t.matrix("h_proj.weight", D, D, TensorRole::Linear, &m.h_proj);
    t.values("enorm.weight", {D}, TensorRole::Norm, &m.enorm);
    t.values("hnorm.weight", {D}, TensorRole::Norm, &m.hnorm);
    t.values("norm.weight", {D}, TensorRole::Norm, &m.norm);
    t.hyper_connection("hc_head", M, 1, &m.hc_head);
  }
  top.values("norm.weight", {D}, TensorRole::Norm, &w->norm);
  top.hyper_connection("hc_head", M, 1, &w->hc_head);
  top.matrix("head.weight", c.vocab_size, D, TensorRole::Head, &w->head);
}

// One compressor's state in a sequence's cache: the per-token rows of the windows not yet
// complete (for ratio 4 also the previous window's), and every compressed entry so far.
struct CompressorCache {
  int64_t ratio = 0, width = 0, overlap = 1;  // r, d, c
  int64_t ring = 0;                           // rows kept: c*r + kRewindSlack, slot = position % ring
  std::vector<float> rows;                    // [ring, 2 * c*d]: kv | gate scores
  std::vector<float> entries;                 // [capacity / r, d]
};

// One layer's attention state.
struct V4LayerCache {
  int64_t window_ring = 0;     // raw keys kept: W + kRewindSlack, slot = position % window_ring
  std::vector<float> window;   // [window_ring, hd]
  CompressorCache compressor;  // compressed layers
  CompressorCache indexer;     // CSA layers: the indexer's keys
};

// The cache of docs/models.md#incremental-decode: per layer a ring of the latest raw keys, the compressed entries and
// each compressor's partial windows. Its size grows by hd/r (+ dI/4 for CSA) values per token and
// layer, plus a fixed ring; every value is stored by position, so it can forget back to any length
// up to kRewindSlack tokens ago (or everything).
class V4Cache final : public RingCache {
 public:
  V4Cache(const ModelConfig& c, int64_t capacity);
  int64_t bytes() const override;
  V4LayerCache& layer(int64_t L) { return layers_[L]; }

  // fp32 values a cache of `capacity` tokens holds (what bytes() will report / 4).
  static int64_t values(const ModelConfig& c, int64_t capacity);

 private:
  std::vector<V4LayerCache> layers_;
};

struct V4Activations;

class DeepseekV4Model final : public DeepseekModel {
 public:
  // Binds every tensor of the checkpoint (MTP modules included) to the weights; load_model
  // (model.h) opens the checkpoint and parses its config.
  DeepseekV4Model(std::unique_ptr<Checkpoint> checkpoint, ModelConfig config);
  ~DeepseekV4Model() override;

  std::unique_ptr<SequenceCache> new_cache(int64_t capacity) const override;
  int64_t cache_bytes_per_token() const override;
  int64_t cache_bytes(int64_t capacity) const override;
  void forward(float* logits, std::span<const SequenceStep> batch) const override;

 private:
  V4Weights weights_;
  V4Ropes ropes_;
  std::unique_ptr<V4Activations> activations_;  // the forward pass's working memory
};

}  // namespace megamoe
