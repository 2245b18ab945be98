// The interface every model family offers the runtime (generation, batching, serving): a forward
// pass over a batch of sequences, each extending its own cache. Families: deepseek_v3.{h,cpp}
// (V2/V3), deepseek_v4.{h,cpp}.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "moe/expert_parallel.h"
#include "moe/moe.h"

namespace megamoe {

class StreamingExpertStore;
class RowCache;

// One sequence's attention state (family-specific layout), with room for `capacity` tokens.
class SequenceCache {
 public:
  virtual ~SequenceCache() {
    if (on_destroy) on_destroy();
  }
  // Called as the cache goes away (the leader of an expert-parallel run tells the other ranks).
  std::function<void()> on_destroy;
  int64_t length() const { return length_; }  // tokens already processed
  int64_t capacity() const { return capacity_; }
  virtual int64_t bytes() const = 0;
  // Whether truncate(length) is possible: any length up to length() unless the family keeps only
  // a window of recent state (DeepSeek-V4).
  virtual bool can_truncate(int64_t length) const { return length >= 0 && length <= length_; }
  // Forgets everything from position `length` on (e.g. to re-run a prompt's last token).
  void truncate(int64_t length);
  // Called by the model once it has stored `n` more tokens.
  void advance(int64_t n) { length_ += n; }

 protected:
  explicit SequenceCache(int64_t capacity) : capacity_(capacity) {}

 private:
  int64_t length_ = 0;
  int64_t capacity_;
};

// One sequence's share of a forward batch: `tokens` continue what `cache` holds.
struct SequenceStep {
  SequenceCache* cache;
  std::span<const int32_t> tokens;
  bool all_logits = false;  // logits for every new token, or only the last
};

// Named intermediate activations, llama.cpp's cb(cur, "name", il): each family reports a few per
// layer (attn_out, ffn_out, ...; docs/architecture.md) so that a disagreement with a reference is
// located by layer and sublayer, not only in the logits.
class ActivationTaps {
 public:
  virtual ~ActivationTaps() = default;
  // rows [n, width], the batch's tokens in order; layer -1: after the layers (the logits' rows only).
  virtual void record(std::string_view name, int64_t layer, const float* rows, int64_t n, int64_t width) = 0;
};

// What the runtime needs to know of any family.
struct ModelInfo {
  std::string architecture;  // "DeepseekV3ForCausalLM", ...
  int64_t vocab_size = 0;
  int64_t max_context = 0;  // max_position_embeddings
  int64_t layers = 0;
  int64_t routed_experts = 0;
  std::optional<int32_t> bos_token_id, eos_token_id;
  int64_t weight_bytes = 0;                   // every weight the forward pass uses, as stored
  int64_t active_weight_bytes_per_token = 0;  // what decoding one token reads (expected share of experts)
  int64_t table_bytes = 0;                    // of weight_bytes: tables read a few rows per token (V4.1's Engram)
  int64_t table_bytes_per_token = 0;          // of active_weight_bytes_per_token: the rows of those tables
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelInfo& info() const = 0;
  int64_t vocab_size() const { return info().vocab_size; }
  int64_t max_context() const { return info().max_context; }

  virtual std::unique_ptr<SequenceCache> new_cache(int64_t capacity) const = 0;
  virtual int64_t cache_bytes_per_token() const = 0;  // growth per token (rounded up)
  // What new_cache(capacity) allocates, fixed parts included.
  virtual int64_t cache_bytes(int64_t capacity) const { return capacity * cache_bytes_per_token(); }

  // Runs every step's new tokens through the model in one batch (each expert's weights are read
  // once for the whole batch) and appends them to the caches.
  // logits [R, V]: the rows of each step in order, all its tokens or only its last.
  virtual void forward(float* logits, std::span<const SequenceStep> batch) const = 0;

  // Where forward() adds the tokens routed to each expert (null: not recorded). Its shape is
  // [num_hidden_layers, n_routed_experts]; dense layers stay zero.
  virtual void record_expert_load(ExpertLoad* load) { expert_load_ = load; }
  // Where the MoE layers send their routed experts (null: computed here; src/dist: over MPI ranks).
  void set_expert_parallel(const ExpertParallel* parallel) { expert_parallel_ = parallel; }
  // Where forward() reports its named intermediates (null: nowhere, the default).
  void set_activation_taps(ActivationTaps* taps) { taps_ = taps; }
  // Swaps the mapped routed experts for a store that reads them from disk into a cache
  // (moe/expert_cache.h; model/expert_streaming.h sizes it) and returns it with the experts one
  // token uses per layer; {nullptr, 0} where the family cannot.
  virtual std::pair<StreamingExpertStore*, int64_t> stream_experts() { return {nullptr, 0}; }
  // Reads the tables of info().table_bytes through a row cache of `bytes` (pread, io/row_cache.h)
  // instead of the mapping and returns it; null where the model has no such tables.
  virtual const RowCache* cache_table_rows(int64_t /*bytes*/) { return nullptr; }

 protected:
  void tap(std::string_view name, int64_t layer, const float* rows, int64_t n, int64_t width) const {
    if (taps_) taps_->record(name, layer, rows, n, width);
  }

  ExpertLoad* expert_load_ = nullptr;
  const ExpertParallel* expert_parallel_ = nullptr;
  ActivationTaps* taps_ = nullptr;
};

// A checkpoint directory, or a GGUF file (model/gguf_checkpoint.h) seen as one.
std::unique_ptr<Checkpoint> open_checkpoint(const std::filesystem::path& path, Residency residency = Residency::Mapped);
// The config of a checkpoint directory (its config.json), a GGUF file (its metadata) or a bare config.json.
ModelConfig read_model_config(const std::filesystem::path& path);

// Opens a checkpoint directory or GGUF file with the family its config names, its files held as
// `residency` says.
std::unique_ptr<Model> load_model(const std::filesystem::path& path, Residency residency = Residency::Mapped);

}  // namespace megamoe
