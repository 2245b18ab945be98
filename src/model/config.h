// Model configuration: the keys of a Hugging Face config.json that megamoe uses, parsed and checked
// once so the rest of the engine can trust them.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "moe/router.h"  // ScoringFunc, TopkMethod, RouterSpec
#include "ops/dtype.h"

namespace megamoe {

enum class ModelFamily { DeepseekV2, DeepseekV3, DeepseekV4, DeepseekV41 };

struct YarnConfig {
  double factor = 1;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32;
  double beta_slow = 1;
  double mscale = 1;
  double mscale_all_dim = 0;
};

// What DeepSeek-V4 adds (docs/models.md#3-deepseek-v4); the keys it shares with V2/V3 (hidden_size,
// num_attention_heads, q_lora_rank, qk_rope_head_dim, the MoE keys, rope) stay in ModelConfig.
// DeepSeek-V4.1 keeps these keys (no hash layers, ratios 1 and 2) and adds V41Config.
struct V4Config {
  int64_t head_dim = 0;                  // hd: the one shared key/value head
  int64_t o_groups = 1;                  // G: output projection groups
  int64_t o_lora_rank = 0;               // R: low rank of each group
  int64_t sliding_window = 0;            // W: raw keys a query sees
  std::vector<int64_t> compress_ratios;  // per layer, then per MTP module: 0 window only, 4 CSA, other HCA
  double compress_rope_theta = 0;        // rope base of compressed layers (with YaRN)
  int64_t index_n_heads = 0;             // lightning indexer (CSA layers)
  int64_t index_head_dim = 0;
  int64_t index_topk = 0;
  int64_t hc_mult = 1;  // M residual streams
  int64_t hc_sinkhorn_iters = 1;
  double hc_eps = 1e-6;
  int64_t num_hash_layers = 0;           // layers [0, n) route by the tid2eid table
  double swiglu_limit = 0;               // 0: no clamp
  int64_t num_nextn_predict_layers = 0;  // MTP modules
  bool fp4_experts = false;              // expert_dtype "fp4" (sizes a checkpoint-less inspect)

  int64_t compress_ratio(int64_t layer) const { return compress_ratios[layer]; }
};

// The attention role of a DeepSeek-V4.1 layer (docs/deepseek-v41.md), from its compress ratio
// and the source lists: the layers share the last compressed cache, index keys and selection published.
enum class V41Role {
  Window,   // ratio 0: the sliding window only
  Full,     // runs a compressor and an indexer: publishes entries, index keys and a selection
  Reindex,  // runs an indexer on the last published index keys: publishes a selection
  Reuse,    // attends the last published entries with the last published selection
};

// What DeepSeek-V4.1 adds to V4Config: cross-layer compressed attention, Engram n-gram memory and
// the DSpark drafter (loaded, not run).
struct V41Config {
  std::vector<int64_t> kv_source_layers;     // kv_source_layer_ids: layers that run a compressor
  std::vector<int64_t> index_source_layers;  // index_source_layer_ids: layers that run an indexer
  int64_t candidate_source_layer = -1;       // its indexer picks blocks later indexers score within
  int64_t candidate_topk_blocks = 0;
  int64_t candidate_block_size = 1;
  std::vector<int64_t> engram_layers;          // engram_layer_ids, in config order
  std::vector<int64_t> engram_num_embeddings;  // rows of each Engram layer's table
  int64_t engram_max_ngram_size = 0;           // N: n-grams of 2..N tokens
  int64_t engram_vocab_size = 0;               // the primes start above it
  int64_t engram_n_heads = 0;
  int64_t engram_head_dim = 0;  // values per table row
  int64_t engram_pad_token_id = 0;
  int64_t engram_compressed_vocab_size = 0;  // token classes (a checksum of the token map)
  // DSpark (num_nextn_predict_layers stages): loaded and checked, not run.
  int64_t dspark_block_size = 0, dspark_noise_token_id = 0, dspark_markov_rank = 0;
  int64_t dspark_n_routed_experts = 0, dspark_num_experts_per_tok = 0;
  std::vector<int64_t> dspark_target_layers;
  // megamoe's switch (text_config key megamoe_published_index_keys): index layers score the keys of
  // the last Full layer that emitted an entry, as DeepSeek's published decode does, instead of the
  // prefill's (docs/deepseek-v41.md#v41-incremental-decode).
  bool published_index_keys = false;

  bool is_kv_source(int64_t layer) const;
  bool is_index_source(int64_t layer) const;
  // Which of the Engram tables layer `layer` reads, -1 for none.
  int64_t engram_index(int64_t layer) const;
  // Rows an Engram layer reads per token: one per n-gram length and head.
  int64_t engram_rows_per_token() const { return (engram_max_ngram_size - 1) * engram_n_heads; }
};

// DeepSeek-V2/V3 (docs/models.md#2-deepseek-v2v3), with megamoe's Mega-MoE extensions (section 4), or V4.
struct ModelConfig {
  std::string architecture;  // "DeepseekV3ForCausalLM"
  ModelFamily family = ModelFamily::DeepseekV3;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;  // D
  int64_t num_hidden_layers = 0;
  int64_t first_k_dense_replace = 0;  // layers [0, k) use a dense MLP
  int64_t moe_layer_freq = 1;
  int64_t intermediate_size = 0;       // dense MLP width
  int64_t moe_intermediate_size = 0;   // routed expert width
  int64_t num_attention_heads = 0;     // H
  std::optional<int64_t> q_lora_rank;  // absent: q_proj instead of q_a/q_b
  int64_t kv_lora_rank = 0;            // C
  int64_t qk_nope_head_dim = 0;        // dn
  int64_t qk_rope_head_dim = 0;        // dr
  int64_t v_head_dim = 0;              // dv
  int64_t n_routed_experts = 0;        // E
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;  // k
  int64_t n_group = 1;
  int64_t topk_group = 1;
  TopkMethod topk_method = TopkMethod::Greedy;
  ScoringFunc scoring_func = ScoringFunc::Softmax;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000;
  std::optional<YarnConfig> yarn;
  int64_t max_position_embeddings = 4096;
  bool tie_word_embeddings = false;
  std::optional<int64_t> bos_token_id, eos_token_id;
  // FP8 checkpoints: quantization_config {quant_method: fp8, weight_block_size: [128, 128]}.
  bool fp8_weights = false;
  // megamoe's own checkpoints: quantization_config {quant_method: megamoe, weight_format: q8_0 | q4_0}
  // (docs/quantization.md); Q8_0 or Q4_0, absent otherwise.
  std::optional<DType> weight_format;
  // Cross-layer expert pools (docs/models.md#expert-pools, V2/V3 only): the MoE layers, counted in order
  // (dense layers and layers off moe_layer_freq are not counted), go in consecutive groups of
  // expert_sharing_group_size (the last group may be shorter); a group's layers route over one pool
  // of n_routed_experts experts, stored under the group's first layer. Gates and biases stay per layer.
  int64_t expert_sharing_group_size = 1;
  bool share_shared_experts = false;  // the group's layers also use the first layer's shared experts
  V4Config v4;                        // families DeepseekV4 and DeepseekV41
  V41Config v41;                      // family DeepseekV41 only

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  int64_t moe_layer_count() const {
    int64_t n = 0;
    for (int64_t layer = 0; layer < num_hidden_layers; ++layer) n += is_moe_layer(layer);
    return n;
  }
  bool has_bias() const { return topk_method == TopkMethod::NoauxTc; }
  bool is_v4_like() const { return family == ModelFamily::DeepseekV4 || family == ModelFamily::DeepseekV41; }
  V41Role v41_role(int64_t layer) const;

  // Expert pools: -1 for a dense layer, else the pool (0, 1, ...) whose routed experts the MoE
  // layer uses. With expert_sharing_group_size 1 every MoE layer is its own pool.
  int64_t expert_pool_of_layer(int64_t layer) const {
    if (!is_moe_layer(layer)) return -1;
    int64_t moe_before = 0;
    for (int64_t l = 0; l < layer; ++l) moe_before += is_moe_layer(l);
    return moe_before / expert_sharing_group_size;
  }
  int64_t expert_pool_count() const {
    return (moe_layer_count() + expert_sharing_group_size - 1) / expert_sharing_group_size;
  }
  // The MoE layers of `pool`, in order; the first one stores the pool's experts.
  std::vector<int64_t> expert_pool_layers(int64_t pool) const {
    std::vector<int64_t> layers;
    for (int64_t layer = 0; layer < num_hidden_layers; ++layer)
      if (expert_pool_of_layer(layer) == pool) layers.push_back(layer);
    return layers;
  }
  // The layer whose tensors hold MoE layer `layer`'s routed experts, and its shared experts.
  int64_t routed_experts_layer(int64_t layer) const { return expert_pool_layers(expert_pool_of_layer(layer))[0]; }
  int64_t shared_experts_layer(int64_t layer) const {
    return share_shared_experts ? routed_experts_layer(layer) : layer;
  }
};

// Parses and validates; errors name `source` (the config file) and the key at fault.
ModelConfig parse_model_config(const nlohmann::json& json, const std::string& source);

// The gate settings of a model's MoE layers.
RouterSpec router_spec(const ModelConfig& c);
ModelConfig load_model_config(const std::string& path);

std::string_view to_string(ScoringFunc f);
std::string_view to_string(TopkMethod m);

}  // namespace megamoe
