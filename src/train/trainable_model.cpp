#include "train/trainable_model.h"

#include <omp.h>

#include <algorithm>
#include <numeric>

#include "ops/elementwise.h"
#include "train/train_ops.h"
#include "util/error.h"

namespace megamoe::train {

TrainableModel::TrainableModel(const ModelConfig& config, int64_t max_sequences, int64_t seq_len)
    : config_(config),
      layout_(ParameterLayout::make(config)),
      attention_(AttentionSetup::make(config, seq_len)),
      router_(router_spec(config)),
      max_sequences_(max_sequences),
      seq_len_(seq_len),
      params_(size_t(layout_.size)),
      grads_(size_t(layout_.size)) {
  if (max_sequences < 1 || seq_len < 1) fail("a training batch needs at least one sequence of one token");
  layers_.resize(config.num_hidden_layers);
  place_activations(activation_block_);  // counting pass
  activation_block_.allocate();
  place_activations(activation_block_);
  place_scratch(scratch_block_);
  scratch_block_.allocate();
  place_scratch(scratch_block_);
  for (int64_t L = 0; L < config.num_hidden_layers; ++L)
    if (config.is_moe_layer(L)) moe_layers_.push_back(L);
  inputs_.resize(max_sequences * seq_len);
  targets_.resize(max_sequences * seq_len);
}

void TrainableModel::place_activations(FloatArena& arena) {
  const ModelConfig& c = config_;
  const BatchShape shape{max_sequences_, seq_len_};
  const int64_t N = shape.tokens(), D = c.hidden_size;
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    LayerActivations& a = layers_[L];
    a.input = arena.take(N * D);
    a.attn_in = arena.take(N * D);
    a.attn.place(arena, c, shape);
    a.middle = arena.take(N * D);
    a.ffn_in = arena.take(N * D);
    if (c.is_moe_layer(L)) a.moe.place(arena, c, shape);
    else a.dense.place(arena, N, c.intermediate_size);
  }
  output_ = arena.take(N * D);
  final_in_ = arena.take(N * D);
  logits_ = arena.take(N * c.vocab_size);
  branch_ = arena.take(N * D);
}

void TrainableModel::place_scratch(FloatArena& arena) {
  const ModelConfig& c = config_;
  const BatchShape shape{max_sequences_, seq_len_};
  const int64_t N = shape.tokens(), D = c.hidden_size;
  d_residual_ = arena.take(N * D);
  d_branch_ = arena.take(N * D);
  attention_scratch_.place(arena, c, shape, omp_get_max_threads());
  const bool any_dense = int64_t(moe_layers_.size()) < c.num_hidden_layers;
  dense_scratch_.place(arena, any_dense ? N : 0, c.intermediate_size);
  moe_scratch_.place(arena, c, c.moe_layer_count() > 0 ? shape : BatchShape{});
}

void TrainableModel::zero_gradients() { std::fill(grads_.begin(), grads_.end(), 0.f); }

double TrainableModel::forward(const int32_t* tokens, int64_t sequences, bool for_backward) {
  const ModelConfig& c = config_;
  if (sequences < 1 || sequences > max_sequences_)
    fail("a batch of {} sequences does not fit a model set up for 1 to {}", sequences, max_sequences_);
  const int64_t T = seq_len_, N = sequences * T, D = c.hidden_size, V = c.vocab_size;
  const BatchShape shape{sequences, T};
  const ParamBlocks params{params_.data(), grads_.data()};
  const float eps = float(c.rms_norm_eps);
  sequences_ = sequences;
  // Evaluation batches are each rank's own: their auxiliary loss sums nothing over the ranks.
  BalanceLoss local = balance_;
  local.sum_over_ranks = nullptr;
  for (int64_t b = 0; b < sequences; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int32_t input = tokens[b * (T + 1) + t], target = tokens[b * (T + 1) + t + 1];
      for (int32_t id : {input, target})
        if (id < 0 || id >= V) fail("token id {} is outside the vocabulary [0, {})", id, V);
      inputs_[b * T + t] = input;
      targets_[b * T + t] = target;
    }

  const float* embed = params.value(layout_.embed);
  for (int64_t n = 0; n < N; ++n) std::copy_n(embed + int64_t(inputs_[n]) * D, D, layers_[0].input + n * D);
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    LayerActivations& a = layers_[L];
    const LayerParams& p = layout_.layers[L];
    float* next = L + 1 < c.num_hidden_layers ? layers_[L + 1].input : output_;
    rms_norm(a.attn_in, a.input, params.value(p.attn_norm), N, D, eps);
    attention_forward(branch_, a.attn, a.attn_in, p.attn, params, c, attention_, shape);
    for (int64_t i = 0; i < N * D; ++i) a.middle[i] = a.input[i] + branch_[i];
    rms_norm(a.ffn_in, a.middle, params.value(p.ffn_norm), N, D, eps);
    if (c.is_moe_layer(L))
      moe_forward(branch_, a.moe, a.ffn_in, p.moe, params, c, router_, shape, for_backward ? balance_ : local);
    else mlp_forward(branch_, a.dense, a.ffn_in, N, p.dense, params, D);
    for (int64_t i = 0; i < N * D; ++i) next[i] = a.middle[i] + branch_[i];
  }
  rms_norm(final_in_, output_, params.value(layout_.final_norm), N, D, eps);
  linear_forward(logits_, final_in_, params.value(layout_.lm_head), N, V, D);
  const double total = cross_entropy(for_backward ? logits_ : nullptr, logits_, targets_.data(), N, V, 1.f / float(N));
  return total / double(N);
}

void TrainableModel::backward() {
  const ModelConfig& c = config_;
  const int64_t T = seq_len_, N = sequences_ * T, D = c.hidden_size, V = c.vocab_size;
  const BatchShape shape{sequences_, T};
  const ParamBlocks params{params_.data(), grads_.data()};
  const float eps = float(c.rms_norm_eps);

  // logits_ holds dloss/dlogits (forward with for_backward).
  linear_backward(d_branch_, params.grad(layout_.lm_head), logits_, final_in_, params.value(layout_.lm_head), N, V, D);
  rms_norm_backward(d_residual_, params.grad(layout_.final_norm), d_branch_, output_, params.value(layout_.final_norm),
                    N, D, eps);
  for (int64_t L = c.num_hidden_layers - 1; L >= 0; --L) {
    const LayerActivations& a = layers_[L];
    const LayerParams& p = layout_.layers[L];
    // h_out = middle + ffn(rms(middle)): the residual's gradient flows on and into the branch.
    if (c.is_moe_layer(L))
      moe_backward(d_branch_, moe_scratch_, d_residual_, a.moe, a.ffn_in, p.moe, params, c, router_, shape, balance_);
    else mlp_backward(d_branch_, dense_scratch_, d_residual_, a.dense, a.ffn_in, N, p.dense, params, D);
    rms_norm_backward(d_residual_, params.grad(p.ffn_norm), d_branch_, a.middle, params.value(p.ffn_norm), N, D, eps,
                      -1, -1, /*add_dx=*/true);
    attention_backward(d_branch_, attention_scratch_, d_residual_, a.attn, a.attn_in, p.attn, params, c, attention_,
                       shape);
    rms_norm_backward(d_residual_, params.grad(p.attn_norm), d_branch_, a.input, params.value(p.attn_norm), N, D, eps,
                      -1, -1, /*add_dx=*/true);
  }
  float* d_embed = params.grad(layout_.embed);
  for (int64_t n = 0; n < N; ++n) {  // in token order: deterministic
    float* row = d_embed + int64_t(inputs_[n]) * D;
    const float* g = d_residual_ + n * D;
    for (int64_t i = 0; i < D; ++i) row[i] += g[i];
  }
}

std::vector<int64_t> TrainableModel::expert_counts(int64_t layer) const {
  const ExpertGroups& groups = layers_[layer].moe.groups;
  std::vector<int64_t> counts(config_.n_routed_experts, 0);
  for (int32_t e : groups.active) counts[e] = groups.count(e);
  return counts;
}

double TrainableModel::aux_loss() const {
  double total = 0;
  for (int64_t L : moe_layers_) total += layers_[L].moe.aux_loss;
  return total;
}

void TrainableModel::update_router_biases(double rate, const std::vector<std::vector<int64_t>>& loads) {
  const int64_t E = config_.n_routed_experts;
  for (size_t i = 0; i < moe_layers_.size(); ++i) {
    const int64_t L = moe_layers_[i];
    const ParamTensor& bias = layout_.layers[L].moe.bias;
    if (!bias.present()) fail("layer {} has no router bias to update", L);
    const std::vector<int64_t>& counts = loads[i];
    const double mean = double(std::accumulate(counts.begin(), counts.end(), int64_t(0))) / double(E);
    float* b = params_.data() + bias.offset;
    for (int64_t e = 0; e < E; ++e) {
      const double load = double(counts[e]);
      b[e] += float(rate * ((mean > load) - (mean < load)));
    }
  }
}

}  // namespace megamoe::train
