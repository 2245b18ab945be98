#include "model/deepseek_v3.h"

#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "moe/router.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "util/arena.h"
#include "util/error.h"
#include "util/parallel.h"

namespace megamoe {

DeepseekV3Model::DeepseekV3Model(std::unique_ptr<Checkpoint> checkpoint, ModelConfig config)
    : DeepseekModel(std::move(checkpoint), std::move(config)), activations_(std::make_unique<V3Activations>()) {
  const Checkpoint& ckpt = *checkpoint_;
  const ModelConfig& c = config_;
  for_each_tensor(c, &weights_, [&]<class Slot>(const TensorSpec& spec, Slot* slot) {
    if constexpr (std::is_same_v<Slot, WeightView>)
      *slot = ckpt.weight(spec.name, spec.shape[0], spec.shape[1], ScaleLayout::ScaleInvF32,
                          block_format(spec, c.weight_format));
    else *slot = ckpt.vector_f32(spec.name, spec.shape[0]);
  });

  // The layers of an expert pool serve its first layer's experts: the same views, read once.
  std::vector<std::span<const MlpWeights>> experts;
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    if (c.is_moe_layer(L)) experts.emplace_back(weights_.layers[c.routed_experts_layer(L)].moe.experts);
    else experts.emplace_back();
  }
  serve_experts(std::move(experts));

  const MlaRope rope = mla_rope(c);
  rope_ = rope.rope;
  softmax_scale_ = rope.softmax_scale;
}

DeepseekV3Model::~DeepseekV3Model() = default;

std::unique_ptr<SequenceCache> DeepseekV3Model::new_cache(int64_t capacity) const {
  return std::make_unique<MlaCache>(config_.num_hidden_layers, capacity,
                                    config_.kv_lora_rank + config_.qk_rope_head_dim);
}

int64_t DeepseekV3Model::cache_bytes_per_token() const {
  return config_.num_hidden_layers * (config_.kv_lora_rank + config_.qk_rope_head_dim) * int64_t(sizeof(float));
}

MlaRope mla_rope(const ModelConfig& c) {
  std::optional<YarnScaling> yarn;
  double rope_magnitude = 1, attention_magnitude = 1;
  if (c.yarn) {
    const YarnConfig& y = *c.yarn;
    yarn = YarnScaling{y.factor, double(y.original_max_position_embeddings), y.beta_fast, y.beta_slow};
    rope_magnitude = yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim);
    attention_magnitude = yarn_mscale(y.factor, y.mscale_all_dim);  // 1 when mscale_all_dim is 0
  }
  return {Rope::make(c.qk_rope_head_dim, c.rope_theta, yarn, rope_magnitude),
          float(attention_magnitude * attention_magnitude / std::sqrt(double(c.qk_head_dim())))};
}

// The working memory of a forward pass (gemma.cpp's Activations), carved from one block the model
// keeps from call to call: a decode step runs every layer hundreds of times a second, and fresh
// buffers would cost page faults, zeroing and heap trimming each time.
struct V3Activations {
  // Runs of queries: consecutive tokens of one sequence (a prompt), at most kQueryBlock at a time,
  // so that absorbing W_UK, the scores against the cached keys and W_UV are matrix products over
  // the run. [first token, end), the same for every layer.
  static constexpr int64_t kQueryBlock = 64;
  std::vector<std::pair<int64_t, int64_t>> runs;
  int64_t longest_run = 0;  // B
  int64_t keys_seen = 0;    // most cached tokens any query sees

  float* hidden;     // [N, D] the residual stream
  float* normed;     // [N, D] a sublayer's normalized input
  float* branch;     // [N, D] a sublayer's output
  float* q;          // [N, H, dn+dr]
  float* q_latent;   // [N, q_lora_rank] (q LoRA)
  float* kv_a;       // [N, C+dr]: latent | rope key
  float* heads;      // [N, H, dv] attention output before o_proj
  float* head_work;  // [threads, head_work_size]: one head's W_UK, W_UV and one run's products
  int64_t head_work_size;
  float* router_logits;  // [N, E]
  float* next_normed;    // [N, D] the next layer's router input, for prefetching
  float* final_rows;     // [R, D]
  Routing routing;
  FloatArena arena;

  // Runs and arrays for `batch`.
  void place(const ModelConfig& c, const TokenBatch& batch) {
    const int64_t N = batch.size(), R = int64_t(batch.logit_rows.size());
    runs.clear();
    longest_run = keys_seen = 0;
    for (int64_t n = 0; n < N; ++n) {
      const bool extends =
          n > 0 && batch.tokens[n].sequence == batch.tokens[n - 1].sequence && n - runs.back().first < kQueryBlock;
      if (extends) runs.back().second = n + 1;
      else runs.push_back({n, n + 1});
      longest_run = std::max(longest_run, runs.back().second - runs.back().first);
      keys_seen = std::max(keys_seen, batch.tokens[n].position + 1);
    }
    const int64_t D = c.hidden_size, H = c.num_attention_heads, C = c.kv_lora_rank, E = c.n_routed_experts;
    const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
    head_work_size = dn * C + dv * C + longest_run * (C + dr + keys_seen + C + dv);
    arena.count();
    for (int pass = 0; pass < 2; ++pass) {
      hidden = arena.take(N * D);
      normed = arena.take(N * D);
      branch = arena.take(N * D);
      q = arena.take(N * H * (dn + dr));
      q_latent = arena.take(N * c.q_lora_rank.value_or(0));
      kv_a = arena.take(N * (C + dr));
      heads = arena.take(N * H * dv);
      head_work = arena.take_per_thread(head_work_size);
      router_logits = arena.take(N * E);
      next_normed = arena.take(N * D);
      final_rows = arena.take(R * D);
      if (pass == 0) arena.allocate();
    }
  }
};

namespace {

// Multi-head latent attention in the absorbed form (docs/models.md#absorbed-mla-cache): each token's normalized
// latent and roped key go into its cache; W_UK (the k_nope rows of kv_b) is folded into the query
// and W_UV (the v rows) into the output, so attention runs on the cached latents directly.
// out [N, D] = attention(x [N, D]) for the N tokens of `batch`.
void mla_forward(float* out, const float* x, const TokenBatch& batch, int64_t layer, const ModelConfig& c,
                 const V3AttentionWeights& w, const Rope& rope, float softmax_scale, V3Activations& a) {
  const int64_t N = batch.size(), H = c.num_attention_heads, C = c.kv_lora_rank;
  const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim, dq = dn + dr;
  const int64_t entry = C + dr;  // cached values per token
  const float eps = float(c.rms_norm_eps);
  auto cache_of = [&](int64_t n) { return batch.cache<MlaCache>(batch.tokens[n].sequence).layer(layer); };

  float* q = a.q;  // [N, H, dn+dr]
  if (c.q_lora_rank) {
    const int64_t R = *c.q_lora_rank;
    matmul(a.q_latent, x, N, w.q_a_proj);
    rms_norm(a.q_latent, a.q_latent, w.q_a_norm.data(), N, R, eps);
    matmul(q, a.q_latent, N, w.q_b_proj);
  } else {
    matmul(q, x, N, w.q_proj);
  }
  float* kv_a = a.kv_a;  // [N, C + dr]: latent | rope key
  matmul(kv_a, x, N, w.kv_a_proj);
  parallel_for(N, N > 1, [&](int64_t n) {
    const int64_t pos = batch.tokens[n].position;
    float* cached = cache_of(n) + pos * entry;  // [C + dr]
    rms_norm(cached, kv_a + n * entry, w.kv_a_norm.data(), 1, C, eps);
    std::copy_n(kv_a + n * entry + C, dr, cached + C);
    rope.apply(cached + C, pos);
    for (int64_t h = 0; h < H; ++h) rope.apply(q + (n * H + h) * dq + dn, pos);
  });

  // Each run's queries are scored against every key up to the run's last position, each query
  // keeping its own. Every product goes through matmul, whose rows do not depend on the batch, and
  // each query's softmax and weighted sum run over its own keys alone: prefill and decode give the
  // same bits.
  const int64_t B = a.longest_run, longest = a.keys_seen;
  parallel_for<Schedule::Dynamic>(H, true, [&](int64_t h) {
    float* next = FloatArena::mine(a.head_work, a.head_work_size);
    const auto take = [&](int64_t n) { return std::exchange(next, next + n); };
    float* w_uk = take(dn * C);         // [dn, C]: this head's rows of kv_b for W_UK
    float* w_uv = take(dv * C);         // [dv, C]
    float* q_full = take(B * entry);    // [B, C + dr]: absorbed query | rope query
    float* scores = take(B * longest);  // [B, keys seen]
    float* o_latent = take(B * C);      // [B, C]
    float* o_head = take(B * dv);       // [B, dv]
    const WeightView w_uv_view{.dtype = DType::F32, .rows = dv, .cols = C, .data = w_uv};
    for (int64_t i = 0; i < dn; ++i) dequantize_row(w_uk + i * C, w.kv_b_proj, h * (dn + dv) + i);
    for (int64_t i = 0; i < dv; ++i) dequantize_row(w_uv + i * C, w.kv_b_proj, h * (dn + dv) + dn + i);
    for (const auto& [first, end] : a.runs) {
      const int64_t R = end - first;
      for (int64_t r = 0; r < R; ++r) {
        // q_nope · W_UK as a sum of W_UK's rows, so kv_b's rows need no transposing per step.
        const float* q_head = q + ((first + r) * H + h) * dq;  // [dn + dr]: nope | rope
        weighted_row_sum(q_full + r * entry, q_head, w_uk, dn, C, C);
        std::copy_n(q_head + dn, dr, q_full + r * entry + C);
      }
      const float* cache = cache_of(first);  // [length, C + dr]
      const int64_t keys_seen = batch.tokens[end - 1].position + 1;
      const WeightView keys{.dtype = DType::F32, .rows = keys_seen, .cols = entry, .data = cache};  // latent | rope key
      matmul(scores, q_full, R, keys);                                                              // [R, keys_seen]
      for (int64_t r = 0; r < R; ++r) {
        float* p = scores + r * keys_seen;
        const int64_t seen = batch.tokens[first + r].position + 1;
        for (int64_t s = 0; s < seen; ++s) p[s] *= softmax_scale;
        softmax(p, seen);
        weighted_row_sum(o_latent + r * C, p, cache, seen, C, entry);  // the latents, by p
      }
      matmul(o_head, o_latent, R, w_uv_view);  // [R, dv]
      for (int64_t r = 0; r < R; ++r) std::copy_n(o_head + r * dv, dv, a.heads + ((first + r) * H + h) * dv);
    }
  });
  matmul(out, a.heads, N, w.o_proj);
}

// out [N, D] = routed experts + shared experts of x [N, D].
void moe_forward(float* out, const float* x, int64_t N, const ModelConfig& c, const V3MoeWeights& w,
                 const ExpertStore& experts, int64_t layer, ExpertLoad* load, const ExpertParallel* parallel,
                 V3Activations& a) {
  const int64_t D = c.hidden_size, E = c.n_routed_experts;
  matmul(a.router_logits, x, N, w.gate);
  route(&a.routing, a.router_logits, N, w.bias.empty() ? nullptr : w.bias.data(), router_spec(c));
  if (w.shared.gate.data) mlp_forward(out, x, N, w.shared);
  else std::fill_n(out, N * D, 0.f);
  dispatch_routed_experts(parallel, out, x, D, a.routing, E, experts, layer, load);
}

// The experts MoE layer `next` will probably want: its router applied to the current hidden state
// [N, D] (the residual stream changes little from one layer to the next).
std::span<const int32_t> predict_experts(const float* hidden, int64_t N, const ModelConfig& c,
                                         const V3LayerWeights& next, V3Activations& a) {
  rms_norm(a.next_normed, hidden, next.ffn_norm.data(), N, c.hidden_size, float(c.rms_norm_eps));
  matmul(a.router_logits, a.next_normed, N, next.moe.gate);
  route(&a.routing, a.router_logits, N, next.moe.bias.empty() ? nullptr : next.moe.bias.data(), router_spec(c));
  return a.routing.experts;
}

}  // namespace

void DeepseekV3Model::forward(float* logits, std::span<const SequenceStep> steps) const {
  const ForwardPass pass(*this);
  const TokenBatch& batch = flatten<MlaCache>(steps);
  const ModelConfig& c = config_;
  const int64_t N = batch.size(), D = c.hidden_size;
  const float eps = float(c.rms_norm_eps);
  V3Activations& a = *activations_;
  a.place(c, batch);  // every element is written before it is read

  float *hidden = a.hidden, *normed = a.normed, *branch = a.branch;  // [N, D] each
  const auto add_branch = [&] {
    parallel_for(N, N * D >= kParallelGrain, [&](int64_t n) {
      for (int64_t i = n * D; i < (n + 1) * D; ++i) hidden[i] += branch[i];
    });
  };
  for (int64_t n = 0; n < N; ++n) dequantize_row(hidden + n * D, weights_.embed, batch.ids[n]);
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    const V3LayerWeights& lw = weights_.layers[L];
    rms_norm(normed, hidden, lw.attn_norm.data(), N, D, eps);
    tap("attn_norm", L, normed, N, D);
    mla_forward(branch, normed, batch, L, c, lw.attn, rope_, softmax_scale_, a);
    tap("attn_out", L, branch, N, D);
    add_branch();
    rms_norm(normed, hidden, lw.ffn_norm.data(), N, D, eps);
    tap("ffn_norm", L, normed, N, D);
    if (prefetching() && L + 1 < c.num_hidden_layers && c.is_moe_layer(L + 1))
      prefetch(L + 1, predict_experts(hidden, N, c, weights_.layers[L + 1], a));
    if (c.is_moe_layer(L)) moe_forward(branch, normed, N, c, lw.moe, experts(), L, expert_load_, expert_parallel_, a);
    else mlp_forward(branch, normed, N, lw.dense);
    tap("ffn_out", L, branch, N, D);
    add_branch();
    tap("layer_out", L, hidden, N, D);
  }
  for (const TokenBatch::Sequence& s : batch.sequences) s.cache->advance(s.count);

  const int64_t R = int64_t(batch.logit_rows.size());
  for (int64_t r = 0; r < R; ++r)
    rms_norm(a.final_rows + r * D, hidden + batch.logit_rows[r] * D, weights_.final_norm.data(), 1, D, eps);
  tap("final_norm", -1, a.final_rows, R, D);
  matmul(logits, a.final_rows, R, weights_.lm_head);
}

}  // namespace megamoe
