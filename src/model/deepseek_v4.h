// DeepSeek-V4 (docs/models.md#3-deepseek-v4): hyper-connection residual streams, one shared key/value head
// attending over a sliding window plus compressed entries (CSA: overlapping windows of 4 picked by
// the lightning indexer; HCA: longer windows, all seen), sqrt-softplus and hash routing, clamped
// SwiGLU experts (FP4 in the official layout). The weights, the one list of every tensor (load,
// synth, inspect use it), the cache and the forward pass. Shares the ops, the loader, the MoE
// dispatch and router, and the Model/SequenceCache interface with deepseek_v3.
#pragma once
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/model.h"
#include "model/tensor_spec.h"
#include "moe/moe.h"
#include "ops/rope.h"

namespace megamoe {

// Mixing of the M residual streams around one sublayer (or before the head).
struct HyperConnection {
  WeightView fn;             // [(2+M)*M, M*D] F32 (head: [M, M*D])
  std::vector<float> base;   // [(2+M)*M] (head: [M])
  std::vector<float> scale;  // [3]: pre, post, comb (head: [1])
};

// Pools each window of `ratio` tokens into one entry of `width` values.
struct CompressorWeights {
  WeightView wkv;           // [c*width, D], c = 2 for overlapping windows (ratio 4), else 1
  WeightView wgate;         // [c*width, D]
  std::vector<float> ape;   // [ratio, c*width] gate bias by position in the window
  std::vector<float> norm;  // [width]
};

struct V4AttentionWeights {
  std::vector<float> sink;             // [H] attention sink logits
  WeightView wq_a;                     // [q_lora_rank, D]
  std::vector<float> q_norm;           // [q_lora_rank]
  WeightView wq_b;                     // [H*hd, q_lora_rank]
  WeightView wkv;                      // [hd, D]
  std::vector<float> kv_norm;          // [hd]
  WeightView wo_a;                     // [G*R, H*hd/G]: group g maps its heads to R values
  WeightView wo_b;                     // [D, G*R]
  CompressorWeights compressor;        // compressed layers (width hd)
  WeightView index_wq_b;               // [index_n_heads * dI, q_lora_rank]  CSA layers
  WeightView index_weights_proj;       // [index_n_heads, D]
  CompressorWeights index_compressor;  // width dI, ratio 4
};

struct V4MoeWeights {
  WeightView gate;                  // [E, D]
  std::vector<float> bias;          // [E] selection bias (biased layers)
  std::vector<int32_t> tid2eid;     // [V, k] experts per token (hash layers)
  MlpWeights shared;                // [n_shared*I, D] ... (gate.data == nullptr: none)
  std::vector<MlpWeights> experts;  // [E] routed
};

// A layer, or the block of an MTP module.
struct V4BlockWeights {
  std::vector<float> attn_norm;  // [D]
  std::vector<float> ffn_norm;   // [D]
  HyperConnection hc_attn, hc_ffn;
  V4AttentionWeights attn;
  V4MoeWeights ffn;
};

// A multi-token-prediction module: loaded and checked, not used by the forward pass yet.
struct V4MtpWeights {
  V4BlockWeights block;
  WeightView e_proj, h_proj;              // [D, D]
  std::vector<float> enorm, hnorm, norm;  // [D]
  HyperConnection hc_head;
};

struct V4Weights {
  WeightView embed;  // [V, D]
  std::vector<V4BlockWeights> layers;
  std::vector<V4MtpWeights> mtp;
  std::vector<float> norm;  // [D]
  HyperConnection hc_head;
  WeightView head;  // [V, D]
};

// Every tensor of a V4 checkpoint, MTP modules included, in checkpoint order (sizes `weights` first).
void for_each_tensor(const ModelConfig& c, V4Weights* weights,
                     const std::function<void(const TensorSpec&, TensorSlot)>& visit);

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
class V4Cache final : public SequenceCache {
 public:
  static constexpr int64_t kRewindSlack = 16;
  V4Cache(const ModelConfig& c, int64_t capacity);
  int64_t bytes() const override;
  bool can_truncate(int64_t length) const override;
  V4LayerCache& layer(int64_t L) { return layers_[L]; }

  // fp32 values a cache of `capacity` tokens holds (what bytes() will report / 4).
  static int64_t values(const ModelConfig& c, int64_t capacity);

 private:
  std::vector<V4LayerCache> layers_;
};

class DeepseekV4Model final : public Model {
 public:
  // Opens the checkpoint, parses config.json, checks and maps every tensor (MTP modules included).
  static std::unique_ptr<DeepseekV4Model> load(const std::filesystem::path& dir,
                                               Residency residency = Residency::Mapped);

  const ModelInfo& info() const override { return info_; }
  const ModelConfig& config() const { return config_; }
  std::unique_ptr<SequenceCache> new_cache(int64_t capacity) const override;
  int64_t cache_bytes_per_token() const override;
  int64_t cache_bytes(int64_t capacity) const override;
  void forward(float* logits, std::span<const SequenceStep> batch) const override;
  std::pair<StreamingExpertStore*, int64_t> stream_experts() override;  // no prefetch yet

 private:
  DeepseekV4Model() = default;
  ModelConfig config_;
  ModelInfo info_;
  std::unique_ptr<Checkpoint> checkpoint_;
  V4Weights weights_;
  std::unique_ptr<ExpertStore> experts_;
  std::vector<std::span<const MlpWeights>> expert_spans_;  // [layers] what experts_ serves
  Rope window_rope_;                                       // window-only layers: rope_theta, no YaRN
  Rope compressed_rope_;                                   // compressed layers: compress_rope_theta with YaRN
};

}  // namespace megamoe
