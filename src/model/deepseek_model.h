// What the DeepSeek families (deepseek_v3.h, deepseek_v4.h) share around their forward passes: the
// checkpoint and its config, the routed experts' store (mapped, or streamed from disk with
// prefetch), the flattening and checking of a batch, and one forward pass at a time, so that each
// model owns its working memory.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/model.h"
#include "moe/moe.h"
#include "ops/rope.h"

namespace megamoe {

// A forward batch flattened: the new tokens of every sequence in order, N in all.
struct TokenBatch {
  // One sequence's share: its new tokens are rows first..first+count-1, at positions start..start+count-1.
  // Positions before `cached` are in the cache from earlier passes; a family may drop a sequence's
  // first rows for its later layers (start > cached there: those positions are not computed).
  struct Sequence {
    SequenceCache* cache;
    int64_t start, first, count;
    int64_t cached;
    bool all_logits;  // every row's logits are wanted, not only the last
    int64_t end() const { return start + count; }
    int64_t row(int64_t position) const { return first + position - start; }  // start <= position < end()
  };
  struct Token {
    int64_t sequence;  // index into sequences
    int64_t position;
  };
  std::vector<Sequence> sequences;
  std::vector<Token> tokens;        // [N]
  std::vector<int32_t> ids;         // [N]
  std::vector<int64_t> logit_rows;  // the rows whose logits are wanted, in order
  int64_t size() const { return int64_t(tokens.size()); }
  template <class Cache>
  Cache& cache(int64_t sequence) const {
    return static_cast<Cache&>(*sequences[sequence].cache);
  }
};

// A cache that keeps recent state in rings by position (V4, V4.1): it can forget back to any length
// up to kRewindSlack tokens ago, or everything (positions before a ring's oldest are gone; nothing
// is needed to start again from 0).
class RingCache : public SequenceCache {
 public:
  static constexpr int64_t kRewindSlack = 16;
  bool can_truncate(int64_t length) const override {
    return length == 0 || (length > 0 && length <= this->length() && this->length() - length <= kRewindSlack);
  }

 protected:
  using SequenceCache::SequenceCache;
};

// The rotary embeddings of V4-family layers (docs/models.md#v4-rope): window-only layers rope_theta
// without YaRN, compressed layers compress_rope_theta with YaRN on the frequencies only.
struct V4Ropes {
  Rope window, compressed;
  static V4Ropes make(const ModelConfig& c);
  const Rope& of_layer(const ModelConfig& c, int64_t layer) const {
    return c.v4.compress_ratio(layer) ? compressed : window;
  }
};

class DeepseekModel : public Model {
 public:
  const ModelInfo& info() const override { return info_; }
  const ModelConfig& config() const { return config_; }
  std::pair<StreamingExpertStore*, int64_t> stream_experts() override;

 protected:
  DeepseekModel(std::unique_ptr<Checkpoint> checkpoint, ModelConfig config);

  // Serves the routed experts of each layer, `experts` [layers] (views into the family's weights;
  // an expert pool's layers share one span), from memory until stream_experts() swaps in a cache.
  void serve_experts(std::vector<std::span<const MlpWeights>> experts);
  const ExpertStore& experts() const { return *experts_; }

  // Whether the store reads experts ahead (streaming with prefetch), and the read-ahead of the
  // experts that MoE layer `layer` will probably want (any order, repeats allowed).
  bool prefetching() const { return experts_->prefetching(); }
  void prefetch(int64_t layer, std::span<const int32_t> wanted) const { prefetch_experts(*experts_, layer, wanted); }

  // Held for the length of a forward pass: fails if another pass is running on this model (the
  // working memory of a pass is the model's own, not each call's).
  class ForwardPass {
   public:
    explicit ForwardPass(const DeepseekModel& model);
    ForwardPass(const ForwardPass&) = delete;
    ForwardPass& operator=(const ForwardPass&) = delete;
    ~ForwardPass() { running_.store(false); }

   private:
    std::atomic<bool>& running_;
  };

  // Flattens `steps` into the model's batch, checking that every cache is a `Cache` (made by this
  // family), appears once and has room for its new tokens, and that every token is in the vocabulary.
  template <class Cache>
  const TokenBatch& flatten(std::span<const SequenceStep> steps) const {
    flatten(steps, [](const SequenceCache* cache) { return dynamic_cast<const Cache*>(cache) != nullptr; });
    return batch_;
  }

  ModelConfig config_;
  ModelInfo info_;
  std::unique_ptr<Checkpoint> checkpoint_;

 private:
  void flatten(std::span<const SequenceStep> steps, bool (*made_here)(const SequenceCache*)) const;

  std::unique_ptr<ExpertStore> experts_;
  std::vector<std::span<const MlpWeights>> expert_spans_;  // [layers] what experts_ serves
  mutable std::atomic<bool> running_{false};
  mutable TokenBatch batch_;  // the running pass's, its vectors kept between calls
};

}  // namespace megamoe
