#include "model/deepseek_model.h"

#include <algorithm>

#include "model/summary.h"
#include "moe/expert_cache.h"
#include "util/error.h"

namespace megamoe {

DeepseekModel::DeepseekModel(std::unique_ptr<Checkpoint> checkpoint, ModelConfig config)
    : config_(std::move(config)), info_(model_info(config_, *checkpoint)), checkpoint_(std::move(checkpoint)) {}

void DeepseekModel::serve_experts(std::vector<std::span<const MlpWeights>> experts) {
  expert_spans_ = experts;
  experts_ = std::make_unique<InMemoryExpertStore>(std::move(experts));
}

V4Ropes V4Ropes::make(const ModelConfig& c) {
  std::optional<YarnScaling> yarn;
  if (c.yarn)
    yarn = YarnScaling{c.yarn->factor, double(c.yarn->original_max_position_embeddings), c.yarn->beta_fast,
                       c.yarn->beta_slow};
  V4Ropes ropes{Rope::make(c.qk_rope_head_dim, c.rope_theta, std::nullopt), {}};
  if (c.v4.compress_rope_theta > 0) ropes.compressed = Rope::make(c.qk_rope_head_dim, c.v4.compress_rope_theta, yarn);
  return ropes;
}

std::pair<StreamingExpertStore*, int64_t> DeepseekModel::stream_experts() {
  auto store = std::make_unique<StreamingExpertStore>(*checkpoint_, expert_spans_);
  StreamingExpertStore* streaming = store.get();
  experts_ = std::move(store);
  return {streaming, config_.num_experts_per_tok};
}

DeepseekModel::ForwardPass::ForwardPass(const DeepseekModel& model) : running_(model.running_) {
  if (running_.exchange(true))
    fail("internal error: a forward pass started while another runs on the same model (one at a time)");
}

void DeepseekModel::flatten(std::span<const SequenceStep> steps, bool (*made_here)(const SequenceCache*)) const {
  TokenBatch& batch = batch_;
  batch.sequences.clear();
  batch.tokens.clear();
  batch.ids.clear();
  batch.logit_rows.clear();
  for (size_t b = 0; b < steps.size(); ++b) {
    const SequenceStep& step = steps[b];
    if (!made_here(step.cache)) fail("sequence {}: the cache was not made by this {} model", b, info_.architecture);
    for (size_t earlier = 0; earlier < b; ++earlier)
      if (steps[earlier].cache == step.cache) fail("sequences {} and {} extend the same cache", earlier, b);
    const int64_t start = step.cache->length(), T = int64_t(step.tokens.size());
    if (T == 0) fail("sequence {}: no tokens to run", b);
    if (start + T > step.cache->capacity())
      fail("sequence {}: {} tokens do not fit in a cache of {} with {} used", b, T, step.cache->capacity(), start);
    batch.sequences.push_back({step.cache, start, batch.size(), T, start, step.all_logits});
    for (int64_t t = 0; t < T; ++t) {
      const int32_t token = step.tokens[t];
      if (token < 0 || token >= config_.vocab_size)
        fail("token id {} at position {} is outside the vocabulary [0, {})", token, start + t, config_.vocab_size);
      if (step.all_logits || t == T - 1) batch.logit_rows.push_back(batch.size());
      batch.tokens.push_back({int64_t(b), start + t});
      batch.ids.push_back(token);
    }
  }
}

}  // namespace megamoe
