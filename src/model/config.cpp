#include "model/config.h"

#include <fmt/ranges.h>
#include <algorithm>
#include <string_view>
#include <utility>

#include "model/engram.h"
#include "ops/weight.h"
#include "util/error.h"
#include "util/json_file.h"

namespace megamoe {
namespace {

using nlohmann::json;

// Typed access to config keys with errors that name the file and key.
class ConfigReader {
 public:
  ConfigReader(const json& j, const std::string& source) : j_(j), source_(source) {
    if (!j.is_object()) fail("{}: expected a JSON object", source);
  }
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  int64_t integer(const char* key) const {
    if (!has(key)) fail("{}: missing key '{}'", source_, key);
    return integer_value(key);
  }
  int64_t integer(const char* key, int64_t fallback) const { return has(key) ? integer_value(key) : fallback; }
  int64_t positive(const char* key) const {
    const int64_t v = integer(key);
    if (v <= 0) fail("{}: '{}' must be positive, got {}", source_, key, v);
    return v;
  }
  double number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_number()) fail("{}: '{}' must be a number, got {}", source_, key, j_[key].dump());
    return j_[key].get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) fail("{}: '{}' must be true or false, got {}", source_, key, j_[key].dump());
    return j_[key].get<bool>();
  }
  std::vector<int64_t> integers(const char* key) const {
    if (!has(key) || !j_[key].is_array()) fail("{}: missing key '{}' (a list of integers)", source_, key);
    std::vector<int64_t> values;
    for (const json& v : j_[key]) {
      if (!v.is_number_integer()) fail("{}: '{}' must hold integers, got {}", source_, key, v.dump());
      values.push_back(v.get<int64_t>());
    }
    return values;
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_string()) fail("{}: '{}' must be a string, got {}", source_, key, j_[key].dump());
    return j_[key].get<std::string>();
  }
  [[noreturn]] void invalid(const char* key, const std::string& why) const {
    fail("{}: invalid '{}': {}", source_, key, why);
  }

 private:
  int64_t integer_value(const char* key) const {
    const json& v = j_[key];
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && v.get<double>() == double(int64_t(v.get<double>()))) return int64_t(v.get<double>());
    fail("{}: '{}' must be an integer, got {}", source_, key, v.dump());
  }
  const json& j_;
  const std::string& source_;
};

// The one map from config.json's 'architectures' to the family that runs it.
constexpr std::pair<std::string_view, ModelFamily> kArchitectures[] = {
    {"DeepseekV2ForCausalLM", ModelFamily::DeepseekV2},
    {"DeepseekV3ForCausalLM", ModelFamily::DeepseekV3},
    {"DeepseekV4ForCausalLM", ModelFamily::DeepseekV4},
    {"DeepseekV41ForCausalLM", ModelFamily::DeepseekV41},
};

ModelFamily parse_architecture(const json& j, const std::string& source, std::string* name) {
  if (!j.contains("architectures") || !j["architectures"].is_array() || j["architectures"].empty() ||
      !j["architectures"][0].is_string())
    fail("{}: missing 'architectures' (e.g. [\"DeepseekV3ForCausalLM\"])", source);
  *name = j["architectures"][0].get<std::string>();
  std::vector<std::string_view> known;
  for (const auto& [architecture, family] : kArchitectures) {
    if (architecture == *name) return family;
    known.push_back(architecture);
  }
  fail("{}: unknown architecture '{}' (megamoe runs {})", source, *name, fmt::join(known, ", "));
}

std::optional<YarnConfig> parse_rope_scaling(const json& j, const std::string& source) {
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return std::nullopt;
  const std::string where = source + ": rope_scaling";
  ConfigReader r(j["rope_scaling"], where);
  const std::string type = r.string("type", r.string("rope_type", ""));
  if (type != "yarn") fail("{}: unsupported type '{}' (megamoe supports \"yarn\")", where, type);
  YarnConfig y;
  y.factor = r.number("factor", y.factor);
  y.original_max_position_embeddings =
      r.integer("original_max_position_embeddings", y.original_max_position_embeddings);
  y.beta_fast = r.number("beta_fast", y.beta_fast);
  y.beta_slow = r.number("beta_slow", y.beta_slow);
  y.mscale = r.number("mscale", y.mscale);
  y.mscale_all_dim = r.number("mscale_all_dim", y.mscale_all_dim);
  if (y.factor < 1) r.invalid("factor", "must be at least 1");
  if (y.original_max_position_embeddings <= 0) r.invalid("original_max_position_embeddings", "must be positive");
  return y;
}

// V2/V3 attention (MLA) and layer layout.
void parse_mla(const ConfigReader& r, ModelConfig& c) {
  c.intermediate_size = r.positive("intermediate_size");
  c.kv_lora_rank = r.positive("kv_lora_rank");
  c.qk_nope_head_dim = r.integer("qk_nope_head_dim");
  c.v_head_dim = r.positive("v_head_dim");
  if (r.has("q_lora_rank")) c.q_lora_rank = r.positive("q_lora_rank");
  c.first_k_dense_replace = r.integer("first_k_dense_replace", 0);
  c.moe_layer_freq = r.integer("moe_layer_freq", 1);
  if (c.qk_nope_head_dim < 0) r.invalid("qk_nope_head_dim", "must not be negative");
  if (c.first_k_dense_replace < 0) r.invalid("first_k_dense_replace", "must not be negative");
  if (c.moe_layer_freq <= 0) r.invalid("moe_layer_freq", "must be positive");
}

// V2/V3 MoE: every gate variant.
void parse_v3_moe(const ConfigReader& r, ModelConfig& c) {
  c.n_routed_experts = r.integer("n_routed_experts", 0);
  if (c.n_routed_experts < 0) r.invalid("n_routed_experts", "must not be negative");
  if (c.n_routed_experts == 0) return;
  c.moe_intermediate_size = r.positive("moe_intermediate_size");
  c.num_experts_per_tok = r.positive("num_experts_per_tok");
  c.n_shared_experts = r.integer("n_shared_experts", 0);
  c.n_group = r.integer("n_group", 1);
  c.topk_group = r.integer("topk_group", 1);
  c.norm_topk_prob = r.boolean("norm_topk_prob", false);
  c.routed_scaling_factor = r.number("routed_scaling_factor", 1.0);
  const std::string scoring = r.string("scoring_func", "softmax");
  if (scoring == "softmax") c.scoring_func = ScoringFunc::Softmax;
  else if (scoring == "sigmoid") c.scoring_func = ScoringFunc::Sigmoid;
  else r.invalid("scoring_func", fmt::format("'{}' (expected softmax or sigmoid)", scoring));
  const std::string method = r.string("topk_method", "greedy");
  if (method == "greedy") c.topk_method = TopkMethod::Greedy;
  else if (method == "group_limited_greedy") c.topk_method = TopkMethod::GroupLimitedGreedy;
  else if (method == "noaux_tc") c.topk_method = TopkMethod::NoauxTc;
  else r.invalid("topk_method", fmt::format("'{}' (expected greedy, group_limited_greedy or noaux_tc)", method));

  const int64_t E = c.n_routed_experts;
  if (c.num_experts_per_tok > E)
    r.invalid("num_experts_per_tok", fmt::format("{} is above n_routed_experts ({})", c.num_experts_per_tok, E));
  if (c.n_shared_experts < 0) r.invalid("n_shared_experts", "must not be negative");
  if (c.routed_scaling_factor <= 0) r.invalid("routed_scaling_factor", "must be positive");
  if (c.topk_method != TopkMethod::Greedy) {
    if (c.n_group <= 0 || E % c.n_group)
      r.invalid("n_group", fmt::format("{} does not divide n_routed_experts ({})", c.n_group, E));
    if (c.topk_group <= 0 || c.topk_group > c.n_group)
      r.invalid("topk_group", fmt::format("{} must be between 1 and n_group ({})", c.topk_group, c.n_group));
    if (c.num_experts_per_tok > c.topk_group * (E / c.n_group))
      r.invalid("num_experts_per_tok", fmt::format("{} is above the experts of topk_group groups ({})",
                                                   c.num_experts_per_tok, c.topk_group * (E / c.n_group)));
    if (c.topk_method == TopkMethod::NoauxTc && E / c.n_group < 2)
      r.invalid("n_group", "noaux_tc scores each group by its top 2 experts, so groups need 2 or more");
  }
}

// DeepSeek-V4 (docs/models.md#3-deepseek-v4): every layer is MoE; routing is sqrt-softplus with a bias or a
// hash table, never group-limited, and the weights are always normalized (whatever topk_method
// and norm_topk_prob say, as the spec prescribes).
void parse_v4_shared(const ConfigReader& r, ModelConfig& c);

void check_fp4_experts(const ConfigReader& r, const ModelConfig& c, const char* key) {
  if (c.v4.fp4_experts && (c.hidden_size % 32 || c.moe_intermediate_size % 32))
    r.invalid(key, fmt::format("FP4 experts need hidden_size ({}) and moe_intermediate_size ({}) to be multiples of 32",
                               c.hidden_size, c.moe_intermediate_size));
}

void parse_v4(const ConfigReader& r, ModelConfig& c) {
  parse_v4_shared(r, c);
  V4Config& v = c.v4;
  const int64_t hd = v.head_dim, dr = c.qk_rope_head_dim;
  if ((hd - dr) % 64)
    r.invalid("head_dim", fmt::format("{} must exceed qk_rope_head_dim ({}) by a multiple of 64 (the FP8 round trip "
                                      "works in blocks of 64)",
                                      hd, dr));
  v.num_hash_layers = r.integer("num_hash_layers", 0);
  if (v.num_hash_layers < 0 || v.num_hash_layers > c.num_hidden_layers)
    r.invalid("num_hash_layers",
              fmt::format("{} is outside [0, num_hidden_layers = {}]", v.num_hash_layers, c.num_hidden_layers));
  bool indexed = false;
  for (int64_t ratio : v.compress_ratios) indexed |= ratio == 4;
  if (indexed) {
    v.index_n_heads = r.positive("index_n_heads");
    v.index_head_dim = r.positive("index_head_dim");
    v.index_topk = r.positive("index_topk");
    const int64_t dI = v.index_head_dim;
    if ((dI & (dI - 1)) || dI % 32 || dI < dr)
      r.invalid("index_head_dim", fmt::format("{} must be a power of 2 (Hadamard rotation), a multiple of 32 (FP4 "
                                              "blocks) and at least qk_rope_head_dim ({})",
                                              dI, dr));
  }
  const std::string expert_dtype = r.string("expert_dtype", "");
  if (!expert_dtype.empty() && expert_dtype != "fp4" && expert_dtype != "fp8")
    r.invalid("expert_dtype", fmt::format("'{}' (expected fp4 or fp8)", expert_dtype));
  v.fp4_experts = expert_dtype == "fp4";
  check_fp4_experts(r, c, "expert_dtype");
}

// What V4 and V4.1 share: the attention's shapes, hyper-connections, the window and the MoE.
void parse_v4_shared(const ConfigReader& r, ModelConfig& c) {
  V4Config& v = c.v4;
  c.q_lora_rank = r.positive("q_lora_rank");
  v.head_dim = r.positive("head_dim");
  v.o_groups = r.positive("o_groups");
  v.o_lora_rank = r.positive("o_lora_rank");
  v.sliding_window = r.positive("sliding_window");
  v.hc_mult = r.positive("hc_mult");
  v.hc_sinkhorn_iters = r.integer("hc_sinkhorn_iters", 20);
  v.hc_eps = r.number("hc_eps", v.hc_eps);
  v.swiglu_limit = r.number("swiglu_limit", 0.0);
  v.num_nextn_predict_layers = r.integer("num_nextn_predict_layers", 0);
  v.compress_ratios = r.integers("compress_ratios");
  const int64_t H = c.num_attention_heads, hd = v.head_dim, dr = c.qk_rope_head_dim;
  if (hd <= dr) r.invalid("head_dim", fmt::format("{} must exceed qk_rope_head_dim ({})", hd, dr));
  if (H % v.o_groups) r.invalid("o_groups", fmt::format("{} does not divide num_attention_heads ({})", v.o_groups, H));
  if (v.hc_sinkhorn_iters < 1) r.invalid("hc_sinkhorn_iters", "must be at least 1");
  if (v.hc_eps < 0) r.invalid("hc_eps", "must not be negative");
  if (v.swiglu_limit < 0) r.invalid("swiglu_limit", "must not be negative (0: no clamp)");
  if (v.num_nextn_predict_layers < 0) r.invalid("num_nextn_predict_layers", "must not be negative");
  const int64_t blocks = c.num_hidden_layers + v.num_nextn_predict_layers;
  if (int64_t(v.compress_ratios.size()) < blocks)
    r.invalid("compress_ratios", fmt::format("{} values for {} layers and {} MTP modules", v.compress_ratios.size(),
                                             c.num_hidden_layers, v.num_nextn_predict_layers));
  v.compress_ratios.resize(blocks);  // published configs pad the list
  bool compressed = false;
  for (int64_t ratio : v.compress_ratios) {
    if (ratio < 0) r.invalid("compress_ratios", fmt::format("{} is negative", ratio));
    compressed |= ratio > 0;
  }
  if (compressed) {
    v.compress_rope_theta = r.number("compress_rope_theta", 0.0);
    if (v.compress_rope_theta <= 1) r.invalid("compress_rope_theta", "must be given and greater than 1");
  }

  c.n_routed_experts = r.positive("n_routed_experts");
  c.moe_intermediate_size = r.positive("moe_intermediate_size");
  c.num_experts_per_tok = r.positive("num_experts_per_tok");
  c.n_shared_experts = r.integer("n_shared_experts", 0);
  c.routed_scaling_factor = r.number("routed_scaling_factor", 1.0);
  c.norm_topk_prob = true;
  c.topk_method = TopkMethod::Greedy;
  const std::string scoring = r.string("scoring_func", "sqrtsoftplus");
  if (scoring != "sqrtsoftplus")
    r.invalid("scoring_func", fmt::format("'{}' (DeepSeek-V4 uses sqrtsoftplus)", scoring));
  c.scoring_func = ScoringFunc::SqrtSoftplus;
  if (c.num_experts_per_tok > c.n_routed_experts)
    r.invalid("num_experts_per_tok",
              fmt::format("{} is above n_routed_experts ({})", c.num_experts_per_tok, c.n_routed_experts));
  if (c.n_shared_experts < 0) r.invalid("n_shared_experts", "must not be negative");
  if (c.routed_scaling_factor <= 0) r.invalid("routed_scaling_factor", "must be positive");
}

// DeepSeek-V4.1 (docs/deepseek-v41.md): V4's keys (under text_config) without hash layers, plus
// the layer roles, Engram and DSpark. The roles must make sense in order: a layer that reuses or
// reindexes finds a publisher before it with its ratio.
void parse_v41(const ConfigReader& r, ModelConfig& c) {
  parse_v4_shared(r, c);
  V4Config& v = c.v4;
  V41Config& w = c.v41;
  const int64_t L = c.num_hidden_layers, dr = c.qk_rope_head_dim;
  // Every Q8-rounded activation is a whole number of blocks of 32.
  for (const auto& [key, value] :
       {std::pair{"head_dim", v.head_dim}, std::pair{"hidden_size", c.hidden_size},
        std::pair{"q_lora_rank", *c.q_lora_rank}, std::pair{"moe_intermediate_size", c.moe_intermediate_size}})
    if (value % 32) r.invalid(key, fmt::format("{} must be a multiple of 32 (the Q8 round trip's blocks)", value));
  if (v.o_groups * v.o_lora_rank % 32)
    r.invalid("o_lora_rank", fmt::format("o_groups x o_lora_rank ({}) must be a multiple of 32 (Q8 blocks)",
                                         v.o_groups * v.o_lora_rank));
  if (r.has("num_hash_layers") && r.integer("num_hash_layers") != 0)
    r.invalid("num_hash_layers", "DeepSeek-V4.1 has no hash-routed layers");
  const auto layer_list = [&](const char* key) {
    std::vector<int64_t> layers = r.integers(key);
    for (size_t i = 0; i < layers.size(); ++i) {
      if (layers[i] < 0 || layers[i] >= L)
        r.invalid(key, fmt::format("entry {} is outside the layers [0, {})", layers[i], L));
      if (i > 0 && layers[i] <= layers[i - 1]) r.invalid(key, "must be increasing");
    }
    return layers;
  };
  w.kv_source_layers = layer_list("kv_source_layer_ids");
  w.index_source_layers = layer_list("index_source_layer_ids");
  for (int64_t l : w.kv_source_layers)
    if (v.compress_ratio(l) == 0)
      r.invalid("kv_source_layer_ids",
                fmt::format("layer {} is not a compressed layer (compress_ratios[{}] is 0)", l, l));
  for (int64_t l : w.index_source_layers)
    if (v.compress_ratio(l) == 0)
      r.invalid("index_source_layer_ids",
                fmt::format("layer {} is not a compressed layer (compress_ratios[{}] is 0)", l, l));
  if (!w.index_source_layers.empty()) {
    v.index_n_heads = r.positive("index_n_heads");
    v.index_head_dim = r.positive("index_head_dim");
    v.index_topk = r.positive("index_topk");
    if (v.index_head_dim % 32 || v.index_head_dim < dr)
      r.invalid("index_head_dim", fmt::format("{} must be a multiple of 32 (FP4 blocks) and at least "
                                              "qk_rope_head_dim ({})",
                                              v.index_head_dim, dr));
  }
  int64_t published_ratio = 0;  // of the last kv source so far
  bool keys = false, selection = false;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t ratio = v.compress_ratio(l);
    if (ratio == 0) continue;
    if (w.is_kv_source(l)) {
      if (!w.is_index_source(l))
        r.invalid("kv_source_layer_ids", fmt::format("layer {} is not in index_source_layer_ids (a layer that "
                                                     "compresses also indexes its entries)",
                                                     l));
      published_ratio = ratio;
      keys = true;
    } else if (ratio != published_ratio) {
      r.invalid(
          "compress_ratios",
          published_ratio
              ? fmt::format("layer {} (ratio {}) reuses the entries of a layer of ratio {}", l, ratio, published_ratio)
              : fmt::format("layer {} is compressed but no kv_source_layer_ids entry comes before it", l));
    }
    if (w.is_index_source(l) && !keys)
      r.invalid("index_source_layer_ids", fmt::format("layer {} has no index keys: no kv source before it, or at it, "
                                                      "is also an index source",
                                                      l));
    selection |= w.is_index_source(l);
    if (!selection) r.invalid("index_source_layer_ids", fmt::format("compressed layer {} has no indexer before it", l));
  }
  w.published_index_keys = r.boolean("megamoe_published_index_keys", false);
  w.candidate_source_layer = r.integer("candidate_source_layer_id", -1);
  if (w.candidate_source_layer >= 0) {
    if (!w.is_index_source(w.candidate_source_layer))
      r.invalid("candidate_source_layer_id", fmt::format("layer {} is not an index source", w.candidate_source_layer));
    w.candidate_topk_blocks = r.positive("candidate_topk_blocks");
    w.candidate_block_size = r.positive("candidate_block_size");
  }

  w.engram_layers = r.has("engram_layer_ids") ? layer_list("engram_layer_ids") : std::vector<int64_t>{};
  if (!w.engram_layers.empty()) {
    w.engram_num_embeddings = r.integers("engram_num_embeddings");
    if (w.engram_num_embeddings.size() != w.engram_layers.size())
      r.invalid("engram_num_embeddings", fmt::format("{} values for {} engram_layer_ids",
                                                     w.engram_num_embeddings.size(), w.engram_layers.size()));
    w.engram_max_ngram_size = r.positive("engram_max_ngram_size");
    w.engram_vocab_size = r.positive("engram_vocab_size");
    w.engram_n_heads = r.positive("engram_n_heads");
    w.engram_head_dim = r.positive("engram_head_dim");
    w.engram_pad_token_id = r.integer("engram_pad_token_id");
    w.engram_compressed_vocab_size = r.integer("engram_compressed_vocab_size", 0);
    if (w.engram_max_ngram_size < 2) r.invalid("engram_max_ngram_size", "must be at least 2 (bigrams)");
    if (w.engram_head_dim % 32)
      r.invalid("engram_head_dim", fmt::format("{} must be a multiple of 32 (FP8 row blocks)", w.engram_head_dim));
    const std::vector<std::vector<int64_t>> primes = engram_primes(w);  // the tables' partition into n-grams
    for (size_t i = 0; i < primes.size(); ++i) {
      int64_t rows = 0;
      for (int64_t p : primes[i]) rows += p;
      if (rows != w.engram_num_embeddings[i])
        r.invalid(
            "engram_num_embeddings",
            fmt::format("layer {}'s table has {} rows, but its {} primes above engram_vocab_size {} sum to {}",
                        w.engram_layers[i], w.engram_num_embeddings[i], primes[i].size(), w.engram_vocab_size, rows));
    }
    if (w.engram_pad_token_id < 0 || w.engram_pad_token_id >= c.vocab_size)
      r.invalid("engram_pad_token_id",
                fmt::format("{} is outside the vocabulary [0, {})", w.engram_pad_token_id, c.vocab_size));
  }
  if (v.num_nextn_predict_layers > 0) {
    w.dspark_block_size = r.positive("dspark_block_size");
    w.dspark_noise_token_id = r.integer("dspark_noise_token_id");
    w.dspark_markov_rank = r.positive("dspark_markov_rank");
    w.dspark_n_routed_experts = r.positive("dspark_n_routed_experts");
    w.dspark_num_experts_per_tok = r.positive("dspark_num_experts_per_tok");
    w.dspark_target_layers = layer_list("dspark_target_layer_ids");
    if (w.dspark_target_layers.empty()) r.invalid("dspark_target_layer_ids", "must name at least one layer");
  }
}

// Cross-layer expert pools (docs/models.md#expert-pools), megamoe's extension of the V2/V3 family.
void parse_expert_pools(const ConfigReader& r, ModelConfig& c) {
  c.expert_sharing_group_size = r.integer("expert_sharing_group_size", 1);
  c.share_shared_experts = r.boolean("share_shared_experts", false);
  if (c.expert_sharing_group_size <= 0) r.invalid("expert_sharing_group_size", "must be positive (1: no pools)");
  if (c.is_v4_like() && (c.expert_sharing_group_size != 1 || c.share_shared_experts))
    r.invalid(c.expert_sharing_group_size != 1 ? "expert_sharing_group_size" : "share_shared_experts",
              "expert pools are megamoe's extension of DeepSeek-V2/V3; DeepSeek-V4 keeps its experts per layer");
}

}  // namespace

ModelConfig parse_model_config(const json& j, const std::string& source) {
  ConfigReader root(j, source);
  ModelConfig c;
  c.family = parse_architecture(j, source, &c.architecture);
  // DeepSeek-V4.1 keeps the language model's settings under text_config (beside vision_config).
  const bool v41 = c.family == ModelFamily::DeepseekV41;
  if (v41 && (!j.contains("text_config") || !j["text_config"].is_object()))
    fail("{}: missing 'text_config' (DeepseekV41ForCausalLM keeps the model's settings there)", source);
  const json& text = v41 ? j["text_config"] : j;
  const std::string text_source = v41 ? source + ": text_config" : source;
  ConfigReader r(text, text_source);
  c.vocab_size = r.positive("vocab_size");
  c.hidden_size = r.positive("hidden_size");
  c.num_hidden_layers = r.positive("num_hidden_layers");
  c.num_attention_heads = r.positive("num_attention_heads");
  c.qk_rope_head_dim = r.positive("qk_rope_head_dim");
  if (c.family == ModelFamily::DeepseekV4) parse_v4(r, c);
  else if (v41) parse_v41(r, c);
  else parse_mla(r, c);
  c.rms_norm_eps = r.number("rms_norm_eps", c.rms_norm_eps);
  c.rope_theta = r.number("rope_theta", c.rope_theta);
  c.yarn = parse_rope_scaling(text, text_source);
  c.max_position_embeddings = r.integer("max_position_embeddings", c.max_position_embeddings);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  for (const ConfigReader* reader : {&r, &root}) {  // V4.1 keeps the token ids at the root
    if (!c.bos_token_id && reader->has("bos_token_id")) c.bos_token_id = reader->integer("bos_token_id");
    if (!c.eos_token_id && reader->has("eos_token_id")) c.eos_token_id = reader->integer("eos_token_id");
  }

  if (c.qk_rope_head_dim % 2) r.invalid("qk_rope_head_dim", "must be even (RoPE rotates pairs)");
  if (c.rms_norm_eps <= 0) r.invalid("rms_norm_eps", "must be positive");
  if (c.rope_theta <= 1) r.invalid("rope_theta", "must be greater than 1");
  if (c.max_position_embeddings <= 0) r.invalid("max_position_embeddings", "must be positive");
  for (const auto& [key, id] : {std::pair{"bos_token_id", c.bos_token_id}, std::pair{"eos_token_id", c.eos_token_id}})
    if (id && (*id < 0 || *id >= c.vocab_size))
      root.invalid(key, fmt::format("{} is outside the vocabulary [0, {})", *id, c.vocab_size));
  if (!c.is_v4_like()) parse_v3_moe(r, c);
  parse_expert_pools(r, c);

  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    const std::string where = source + ": quantization_config";
    ConfigReader q(j["quantization_config"], where);
    const std::string method = q.string("quant_method", "");
    if (method == "megamoe") {
      const std::string format = q.string("weight_format", "");
      if (format != "q8_0" && format != "q4_0")
        q.invalid("weight_format", fmt::format("'{}' (expected q8_0 or q4_0)", format));
      c.weight_format = format == "q8_0" ? DType::Q8_0 : DType::Q4_0;
    } else {
      if (method != "fp8") fail("{}: unsupported quant_method '{}' (expected fp8 or megamoe)", where, method);
      // V4.1 scales FP8 weights per 32x32 block, the earlier families per 128x128.
      const int64_t side = v41 ? kFp8SmallBlockSize : kFp8BlockSize;
      const json& block = j["quantization_config"].value("weight_block_size", json::array({side, side}));
      if (block != json::array({side, side}))
        fail("{}: weight_block_size {} is not supported (expected [{}, {}])", where, block.dump(), side, side);
      c.fp8_weights = true;
      if (v41) {
        const std::string experts = q.string("expert_dtype", "fp8");
        if (experts != "fp4" && experts != "fp8")
          q.invalid("expert_dtype", fmt::format("'{}' (expected fp4 or fp8)", experts));
        c.v4.fp4_experts = experts == "fp4";
        check_fp4_experts(q, c, "expert_dtype");
      }
    }
  }
  return c;
}

ModelConfig load_model_config(const std::string& path) { return parse_model_config(read_json_file(path), path); }

std::string_view to_string(ScoringFunc f) {
  switch (f) {
    case ScoringFunc::Softmax:
      return "softmax";
    case ScoringFunc::Sigmoid:
      return "sigmoid";
    case ScoringFunc::SqrtSoftplus:
      return "sqrtsoftplus";
  }
  return "?";
}
std::string_view to_string(TopkMethod m) {
  switch (m) {
    case TopkMethod::Greedy:
      return "greedy";
    case TopkMethod::GroupLimitedGreedy:
      return "group_limited_greedy";
    case TopkMethod::NoauxTc:
      return "noaux_tc";
  }
  return "?";
}

bool V41Config::is_kv_source(int64_t layer) const {
  return std::find(kv_source_layers.begin(), kv_source_layers.end(), layer) != kv_source_layers.end();
}

bool V41Config::is_index_source(int64_t layer) const {
  return std::find(index_source_layers.begin(), index_source_layers.end(), layer) != index_source_layers.end();
}

int64_t V41Config::engram_index(int64_t layer) const {
  const auto it = std::find(engram_layers.begin(), engram_layers.end(), layer);
  return it == engram_layers.end() ? -1 : int64_t(it - engram_layers.begin());
}

V41Role ModelConfig::v41_role(int64_t layer) const {
  if (layer >= num_hidden_layers || v4.compress_ratio(layer) == 0) return V41Role::Window;  // and DSpark stages
  if (v41.is_kv_source(layer)) return V41Role::Full;
  return v41.is_index_source(layer) ? V41Role::Reindex : V41Role::Reuse;
}

RouterSpec router_spec(const ModelConfig& c) {
  return {c.n_routed_experts, c.num_experts_per_tok, c.scoring_func,   c.topk_method,
          c.n_group,          c.topk_group,          c.norm_topk_prob, c.routed_scaling_factor};
}

}  // namespace megamoe
