#include "model/deepseek_v3.h"

#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "model/summary.h"
#include "moe/expert_cache.h"
#include "moe/router.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "util/error.h"
#include "util/parallel.h"
#include "util/scratch.h"

namespace megamoe {

std::unique_ptr<DeepseekV3Model> DeepseekV3Model::load(const std::filesystem::path& dir, Residency residency) {
  std::unique_ptr<DeepseekV3Model> model(new DeepseekV3Model);
  model->checkpoint_ = Checkpoint::open(dir, residency);
  const Checkpoint& ckpt = *model->checkpoint_;
  const ModelConfig& c = model->config_ = parse_model_config(ckpt.config(), (dir / "config.json").string());
  for_each_tensor(c, &model->weights_, [&]<class Slot>(const TensorSpec& spec, Slot* slot) {
    if constexpr (std::is_same_v<Slot, WeightView>)
      *slot = ckpt.weight(spec.name, spec.shape[0], spec.shape[1], ScaleLayout::ScaleInvF32,
                          block_format(spec, c.weight_format));
    else *slot = ckpt.vector_f32(spec.name, spec.shape[0]);
  });
  model->info_ = model_info(c, ckpt);

  // The layers of an expert pool serve its first layer's experts: the same views, read once.
  std::vector<std::span<const MlpWeights>> experts;
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    if (c.is_moe_layer(L)) experts.emplace_back(model->weights_.layers[c.routed_experts_layer(L)].moe.experts);
    else experts.emplace_back();
  }
  model->expert_spans_ = experts;
  model->experts_ = std::make_unique<InMemoryExpertStore>(std::move(experts));

  const MlaRope rope = mla_rope(c);
  model->rope_ = rope.rope;
  model->softmax_scale_ = rope.softmax_scale;
  return model;
}

std::pair<StreamingExpertStore*, int64_t> DeepseekV3Model::stream_experts() {
  auto store = std::make_unique<StreamingExpertStore>(*checkpoint_, expert_spans_);
  StreamingExpertStore* streaming = store.get();
  experts_ = std::move(store);
  return {streaming, config_.num_experts_per_tok};
}

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

namespace {

// Where one new token of a batch goes: its sequence's cache and its position there.
struct TokenSlot {
  MlaCache* cache;
  int64_t position;
};

// Multi-head latent attention in the absorbed form (docs/models.md#absorbed-mla-cache): each token's normalized
// latent and roped key go into its cache; W_UK (the k_nope rows of kv_b) is folded into the query
// and W_UV (the v rows) into the output, so attention runs on the cached latents directly.
// out [N, D] = attention(x [N, D]) for the N tokens of `slots`.
void mla_forward(float* out, const float* x, std::span<const TokenSlot> slots, int64_t layer, const ModelConfig& c,
                 const V3AttentionWeights& w, const Rope& rope, float softmax_scale) {
  const int64_t N = int64_t(slots.size()), H = c.num_attention_heads, C = c.kv_lora_rank;
  const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim, dq = dn + dr;
  const int64_t entry = C + dr;  // cached values per token
  const float eps = float(c.rms_norm_eps);

  // Kept from call to call (a decode step calls this once per layer): fresh buffers cost page faults,
  // zeroing and heap trimming, a quarter of a decode step's time when measured.
  thread_local Scratch<float> q_buffer, q_latent_buffer, kv_a_buffer, heads_buffer;
  float* q = q_buffer.get(size_t(N * H * dq));  // [N, H, dn+dr]
  if (c.q_lora_rank) {
    const int64_t R = *c.q_lora_rank;
    float* q_latent = q_latent_buffer.get(size_t(N * R));  // [N, R]
    matmul(q_latent, x, N, w.q_a_proj);
    rms_norm(q_latent, q_latent, w.q_a_norm.data(), N, R, eps);
    matmul(q, q_latent, N, w.q_b_proj);
  } else {
    matmul(q, x, N, w.q_proj);
  }
  float* kv_a = kv_a_buffer.get(size_t(N * entry));  // [N, C + dr]: latent | rope key
  matmul(kv_a, x, N, w.kv_a_proj);
  int64_t longest = 0;  // most cached tokens any query sees
  for (const TokenSlot& slot : slots) longest = std::max(longest, slot.position + 1);
  parallel_for(N, N > 1, [&](int64_t n) {
    const int64_t pos = slots[n].position;
    float* cached = slots[n].cache->layer(layer) + pos * entry;  // [C + dr]
    rms_norm(cached, kv_a + n * entry, w.kv_a_norm.data(), 1, C, eps);
    std::copy_n(kv_a + n * entry + C, dr, cached + C);
    rope.apply(cached + C, pos);
    for (int64_t h = 0; h < H; ++h) rope.apply(q + (n * H + h) * dq + dn, pos);
  });

  // Queries go in runs: consecutive tokens of one sequence (a prompt), at most kQueryBlock at a time,
  // so that absorbing W_UK, the scores against the cached keys and W_UV are matrix products over
  // the run (scores against every key up to the run's last position; each query keeps its own).
  // Every product goes through matmul, whose rows do not depend on the batch, and each query's
  // softmax and weighted sum run over its own keys alone: prefill and decode give the same bits.
  constexpr int64_t kQueryBlock = 64;
  std::vector<std::pair<int64_t, int64_t>> runs;  // [first token, end)
  int64_t B = 0;                                  // the longest run
  for (int64_t n = 0; n < N; ++n) {
    const bool extends = n > 0 && slots[n].cache == slots[n - 1].cache &&
                         slots[n].position == slots[n - 1].position + 1 && n - runs.back().first < kQueryBlock;
    if (extends) runs.back().second = n + 1;
    else runs.push_back({n, n + 1});
    B = std::max(B, runs.back().second - runs.back().first);
  }
  float* heads = heads_buffer.get(size_t(N * H * dv));                           // [N, H, dv]
  const int64_t work_floats = dn * C + dv * C + B * (entry + longest + C + dv);  // per head, carved below
  parallel_for<Schedule::Dynamic>(H, true, [&](int64_t h) {
    thread_local Scratch<float> head_work;  // each thread's own, kept between calls
    float* next = head_work.get(size_t(work_floats));
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
    for (const auto& [first, end] : runs) {
      const int64_t R = end - first;
      for (int64_t r = 0; r < R; ++r) {
        // q_nope · W_UK as a sum of W_UK's rows, so kv_b's rows need no transposing per step.
        const float* q_head = q + ((first + r) * H + h) * dq;  // [dn + dr]: nope | rope
        weighted_row_sum(q_full + r * entry, q_head, w_uk, dn, C, C);
        std::copy_n(q_head + dn, dr, q_full + r * entry + C);
      }
      const float* cache = slots[first].cache->layer(layer);  // [length, C + dr]
      const int64_t keys_seen = slots[end - 1].position + 1;
      const WeightView keys{.dtype = DType::F32, .rows = keys_seen, .cols = entry, .data = cache};  // latent | rope key
      matmul(scores, q_full, R, keys);                                                              // [R, keys_seen]
      for (int64_t r = 0; r < R; ++r) {
        float* p = scores + r * keys_seen;
        const int64_t seen = slots[first + r].position + 1;
        for (int64_t s = 0; s < seen; ++s) p[s] *= softmax_scale;
        softmax(p, seen);
        weighted_row_sum(o_latent + r * C, p, cache, seen, C, entry);  // the latents, by p
      }
      matmul(o_head, o_latent, R, w_uv_view);  // [R, dv]
      for (int64_t r = 0; r < R; ++r) std::copy_n(o_head + r * dv, dv, heads + ((first + r) * H + h) * dv);
    }
  });
  matmul(out, heads, N, w.o_proj);
}

// out [N, D] = routed experts + shared experts of x [N, D].
void moe_forward(float* out, const float* x, int64_t N, const ModelConfig& c, const V3MoeWeights& w,
                 const ExpertStore& experts, int64_t layer, ExpertLoad* load, const ExpertParallel* parallel) {
  const int64_t D = c.hidden_size, E = c.n_routed_experts;
  std::vector<float> router_logits(N * E);  // [N, E]
  matmul(router_logits.data(), x, N, w.gate);
  Routing routing;
  route(&routing, router_logits.data(), N, w.bias.empty() ? nullptr : w.bias.data(), router_spec(c));
  if (w.shared.gate.data) mlp_forward(out, x, N, w.shared);
  else std::fill_n(out, N * D, 0.f);
  dispatch_routed_experts(parallel, out, x, D, routing, E, experts, layer, load);
}

// Tells a streaming store which experts MoE layer `next` will probably want: its router applied to
// the current hidden state [N, D] (the residual stream changes little from one layer to the next),
// so they are read while this layer computes.
void prefetch_layer(const float* hidden, int64_t N, const ModelConfig& c, const V3LayerWeights& next_weights,
                    int64_t next, const ExpertStore& experts) {
  const int64_t D = c.hidden_size, E = c.n_routed_experts;
  std::vector<float> normed(N * D), router_logits(N * E);  // [N, D], [N, E]
  rms_norm(normed.data(), hidden, next_weights.ffn_norm.data(), N, D, float(c.rms_norm_eps));
  matmul(router_logits.data(), normed.data(), N, next_weights.moe.gate);
  Routing routing;
  route(&routing, router_logits.data(), N, next_weights.moe.bias.empty() ? nullptr : next_weights.moe.bias.data(),
        router_spec(c));
  prefetch_experts(experts, next, routing.experts);
}

}  // namespace

void DeepseekV3Model::forward(float* logits, std::span<const SequenceStep> batch) const {
  const ModelConfig& c = config_;
  const int64_t D = c.hidden_size;
  const float eps = float(c.rms_norm_eps);

  // Flatten the batch: slots[n] places token n; logit_rows lists the tokens whose logits are wanted.
  std::vector<TokenSlot> slots;
  std::vector<int32_t> tokens;
  std::vector<int64_t> logit_rows;
  for (size_t b = 0; b < batch.size(); ++b) {
    const SequenceStep& step = batch[b];
    auto* cache = dynamic_cast<MlaCache*>(step.cache);
    if (!cache) fail("sequence {}: the cache was not made by this DeepSeek-V2/V3 model", b);
    const int64_t start = cache->length(), T = int64_t(step.tokens.size());
    if (T == 0) fail("sequence {}: no tokens to run", b);
    if (start + T > cache->capacity())
      fail("sequence {}: {} tokens do not fit in a cache of {} with {} used", b, T, cache->capacity(), start);
    for (int64_t t = 0; t < T; ++t) {
      const int32_t token = step.tokens[t];
      if (token < 0 || token >= c.vocab_size)
        fail("token id {} at position {} is outside the vocabulary [0, {})", token, start + t, c.vocab_size);
      if (step.all_logits || t == T - 1) logit_rows.push_back(int64_t(slots.size()));
      slots.push_back({cache, start + t});
      tokens.push_back(token);
    }
  }
  const int64_t N = int64_t(slots.size());

  // Kept between calls (see mla_forward); every element is written before it is read.
  thread_local Scratch<float> hidden_buffer, normed_buffer, branch_buffer;
  float* hidden = hidden_buffer.get(size_t(N * D));  // [N, D] each
  float* normed = normed_buffer.get(size_t(N * D));
  float* branch = branch_buffer.get(size_t(N * D));
  const auto add_branch = [&] {
    parallel_for(N, N * D >= kParallelGrain, [&](int64_t n) {
      for (int64_t i = n * D; i < (n + 1) * D; ++i) hidden[i] += branch[i];
    });
  };
  for (int64_t n = 0; n < N; ++n) dequantize_row(hidden + n * D, weights_.embed, tokens[n]);
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    const V3LayerWeights& lw = weights_.layers[L];
    rms_norm(normed, hidden, lw.attn_norm.data(), N, D, eps);
    tap("attn_norm", L, normed, N, D);
    mla_forward(branch, normed, slots, L, c, lw.attn, rope_, softmax_scale_);
    tap("attn_out", L, branch, N, D);
    add_branch();
    rms_norm(normed, hidden, lw.ffn_norm.data(), N, D, eps);
    tap("ffn_norm", L, normed, N, D);
    if (experts_->prefetching() && L + 1 < c.num_hidden_layers && c.is_moe_layer(L + 1))
      prefetch_layer(hidden, N, c, weights_.layers[L + 1], L + 1, *experts_);
    if (c.is_moe_layer(L)) moe_forward(branch, normed, N, c, lw.moe, *experts_, L, expert_load_, expert_parallel_);
    else mlp_forward(branch, normed, N, lw.dense);
    tap("ffn_out", L, branch, N, D);
    add_branch();
    tap("layer_out", L, hidden, N, D);
  }
  for (const SequenceStep& step : batch) step.cache->advance(int64_t(step.tokens.size()));

  const int64_t R = int64_t(logit_rows.size());
  std::vector<float> final_rows(R * D);  // [R, D]
  for (int64_t r = 0; r < R; ++r)
    rms_norm(final_rows.data() + r * D, hidden + logit_rows[r] * D, weights_.final_norm.data(), 1, D, eps);
  tap("final_norm", -1, final_rows.data(), R, D);
  matmul(logits, final_rows.data(), R, weights_.lm_head);
}

}  // namespace megamoe
