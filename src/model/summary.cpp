#include "model/summary.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "model/deepseek_v4.h"
#include "model/tensor_spec.h"
#include "ops/quant.h"

namespace megamoe {
namespace {

// DeepSeek-V3's MLA cache, the comparison for V4: 61 layers x (kv_lora_rank 512 + rope key 64) per token.
constexpr int64_t kDeepseekV3CacheValuesPerToken = 61 * (512 + 64);

// Bytes a tensor takes: as stored, or as synth would store it when there is no checkpoint.
int64_t stored_bytes(const TensorSpec& spec, const ModelConfig& c, const Checkpoint* checkpoint) {
  if (checkpoint) {
    const TensorInfo* info = checkpoint->find(spec.name);
    const TensorInfo* scale = checkpoint->find(Checkpoint::scale_name(spec.name, scale_layout(c.family)));
    return (info ? int64_t(info->nbytes) : 0) + (scale ? int64_t(scale->nbytes) : 0);
  }
  int64_t n = 1;
  for (int64_t d : spec.shape) n *= d;
  if (const std::optional<DType> block = block_format(spec, c.weight_format))
    return n / kQuantBlock * int64_t(dtype_size(*block));
  switch (spec.role) {
    case TensorRole::RouterBias:
    case TensorRole::HyperMix:
    case TensorRole::Parameter:
    case TensorRole::HashTable:
      return 4 * n;
    case TensorRole::EngramTable:
      return c.fp8_weights ? n + n / 32 : 2 * n;  // e4m3 + ue8m0 per 32
    case TensorRole::Linear: {
      if (!c.fp8_weights) break;
      const bool v4 = c.is_v4_like();
      if (v4 && spec.expert >= 0 && c.v4.fp4_experts) return n / 2 + n / 32;  // e2m1 pairs + ue8m0 per 32
      const int64_t B = c.family == ModelFamily::DeepseekV41 ? kFp8SmallBlockSize : kFp8BlockSize;
      const int64_t blocks = ((spec.shape[0] + B - 1) / B) * ((spec.shape[1] + B - 1) / B);
      return n + (v4 ? 1 : 4) * blocks;  // ue8m0 or F32 block scales
    }
    default:
      break;
  }
  return 2 * n;
}

// The MoE layers of each expert pool, e.g. [[1, 2, 3], [4]]; the first layer of each stores it.
std::vector<std::vector<int64_t>> expert_pools(const ModelConfig& c) {
  std::vector<std::vector<int64_t>> pools;
  for (int64_t pool = 0; pool < c.expert_pool_count(); ++pool) pools.push_back(c.expert_pool_layers(pool));
  return pools;
}

}  // namespace

ModelSummary summarize(const ModelConfig& c, const Checkpoint* checkpoint, int64_t context) {
  ModelSummary s;
  std::set<std::string> used;
  int64_t active_unrouted = 0;  // every tensor but the routed experts, once per layer that uses it
  std::vector<int64_t> layer_active(size_t(c.num_hidden_layers), 0);  // the same per layer (V4.1's prefill)
  int64_t head = 0;
  std::map<std::string, DType> blocks;  // megamoe's U8 block tensors: counted as Q8_0 / Q4_0
  for_each_tensor(c, [&](const TensorSpec& spec) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    used.insert(spec.name);
    if (const std::optional<DType> block = block_format(spec, c.weight_format)) blocks[spec.name] = *block;
    used.insert(Checkpoint::scale_name(spec.name, scale_layout(c.family)));
    if (spec.mtp) {
      s.mtp_parameters += n;
      return;
    }
    if (spec.role == TensorRole::EngramTable) s.engram_parameters += n;
    s.total_parameters += n;  // an expert pool's tensors are listed, and counted, once
    if (spec.expert >= 0) s.routed_expert_parameters += n;
    const int64_t active = spec.expert >= 0                       ? 0
                           : spec.role == TensorRole::EngramTable ? c.v41.engram_rows_per_token() * spec.shape[1]
                                                                  : n * spec.uses;
    active_unrouted += active;
    if (spec.layer >= 0) layer_active[size_t(spec.layer)] += active;
    if (spec.role == TensorRole::Head) head += n;
    if (spec.role == TensorRole::Embedding) s.embedding_parameters += n;
    int64_t bytes = stored_bytes(spec, c, checkpoint) * spec.uses;
    if (spec.role == TensorRole::Embedding || spec.role == TensorRole::HashTable)
      bytes = bytes / spec.shape[0];  // one row per token
    if (spec.role == TensorRole::EngramTable) {
      s.engram_bytes += bytes;
      bytes = bytes / spec.shape[0] * c.v41.engram_rows_per_token();
      s.engram_bytes_per_token += bytes;
    }
    if (spec.expert >= 0) bytes = bytes * c.num_experts_per_tok / c.n_routed_experts;  // expected share
    s.active_weight_bytes += bytes;
  });
  // Each MoE layer's top-k, from its pool or its own experts.
  const int64_t expert_size = 3 * c.hidden_size * c.moe_intermediate_size;
  const int64_t moe_layers = c.is_v4_like() ? c.num_hidden_layers : c.moe_layer_count();
  s.active_parameters = active_unrouted + moe_layers * c.num_experts_per_tok * expert_size;
  if (checkpoint)
    for (const TensorInfo* t : checkpoint->tensors()) {
      const auto block = blocks.find(t->name);
      const DType shown = t->dtype == DType::U8 && block != blocks.end() ? block->second : t->dtype;
      s.bytes_by_dtype[std::string(dtype_name(shown))] += int64_t(t->nbytes);
      if (!used.count(t->name)) ++s.unused_tensors;
    }
  s.kv_cache_context = context > 0 ? context : c.max_position_embeddings;
  if (c.family == ModelFamily::DeepseekV41) {
    // A prompt of P tokens: the head runs once, and each layer after the last kv source on the
    // positions within reach of the window rings and the last position (docs/deepseek-v41.md#v41-prefill).
    const double P = double(s.kv_cache_context);
    const int64_t W = c.v4.sliding_window, last = c.num_hidden_layers - 1;
    const std::vector<int64_t>& sources = c.v41.kv_source_layers;
    double prefill = double(s.active_parameters) - double(head) * (1 - 1 / P);
    for (int64_t L = sources.empty() ? 0 : *std::max_element(sources.begin(), sources.end()) + 1; L <= last; ++L) {
      const double computed = std::min(P, double(W + RingCache::kRewindSlack + (last - L) * (W - 1)));
      prefill -= double(layer_active[size_t(L)] + c.num_experts_per_tok * expert_size) * (1 - computed / P);
    }
    s.prefill_active_parameters = prefill;
    // As DeepSeek stores it (megamoe's cache keeps fp32): per kv source and 1/r of a
    // token, an FP4 entry with e4m3 scales per 16 and an FP4 index key with ue8m0 scales per 32;
    // per layer and DSpark stage a ring of `window` FP8 keys with ue8m0 scales per 32.
    const V4Config& v = c.v4;
    double per_token = 0;
    for (int64_t l : c.v41.kv_source_layers)
      per_token += double(v.head_dim / 2 + v.head_dim / 16 + v.index_head_dim / 2 + v.index_head_dim / 32) /
                   double(v.compress_ratio(l));
    s.kv_cache_ring_bytes =
        (c.num_hidden_layers + v.num_nextn_predict_layers) * v.sliding_window * (v.head_dim + v.head_dim / 32);
    s.kv_cache_bytes = int64_t(std::ceil(per_token * double(s.kv_cache_context))) + s.kv_cache_ring_bytes;
    s.deepseek_v3_kv_cache_bytes_per_token = double(kDeepseekV3CacheValuesPerToken * sizeof(float));
  } else if (c.family == ModelFamily::DeepseekV4) {
    s.kv_cache_bytes = V4Cache::values(c, s.kv_cache_context) * int64_t(sizeof(float));
    s.deepseek_v3_kv_cache_bytes_per_token = double(kDeepseekV3CacheValuesPerToken * sizeof(float));
  } else {
    s.kv_cache_bytes =
        s.kv_cache_context * c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * int64_t(sizeof(float));
    s.naive_kv_cache_values_per_token = c.num_hidden_layers * c.num_attention_heads * (c.qk_head_dim() + c.v_head_dim);
  }
  s.kv_cache_bytes_per_token = double(s.kv_cache_bytes) / double(s.kv_cache_context);
  s.kv_cache_values_per_token = s.kv_cache_bytes_per_token / sizeof(float);
  return s;
}

ModelInfo model_info(const ModelConfig& c, const Checkpoint& checkpoint) {
  auto id = [](const std::optional<int64_t>& v) { return v ? std::optional<int32_t>(int32_t(*v)) : std::nullopt; };
  ModelInfo info{c.architecture,     c.vocab_size,       c.max_position_embeddings, c.num_hidden_layers,
                 c.n_routed_experts, id(c.bos_token_id), id(c.eos_token_id)};
  const ModelSummary summary = summarize(c, &checkpoint);
  info.active_weight_bytes_per_token = summary.active_weight_bytes;
  for (const auto& [dtype, bytes] : summary.bytes_by_dtype) info.weight_bytes += bytes;
  info.table_bytes = summary.engram_bytes;
  info.table_bytes_per_token = summary.engram_bytes_per_token;
  return info;
}

// "Full (ratio 2), Engram": what V4.1's layer does.
std::string v41_layer_role(const ModelConfig& c, int64_t layer) {
  std::string role;
  switch (c.v41_role(layer)) {
    case V41Role::Window:
      role = "window";
      break;
    case V41Role::Full:
      role = fmt::format("Full (ratio {})", c.v4.compress_ratio(layer));
      break;
    case V41Role::Reindex:
      role = fmt::format("Reindex (ratio {})", c.v4.compress_ratio(layer));
      break;
    case V41Role::Reuse:
      role = fmt::format("Reuse (ratio {})", c.v4.compress_ratio(layer));
      break;
  }
  if (layer == c.v41.candidate_source_layer) role += ", candidate source";
  if (c.v41.engram_index(layer) >= 0) role += ", Engram";
  return role;
}

nlohmann::json to_json(const ModelSummary& s, const ModelConfig& c) {
  nlohmann::json j = {{"architecture", c.architecture},
                      {"layers", c.num_hidden_layers},
                      {"hidden_size", c.hidden_size},
                      {"vocab_size", c.vocab_size},
                      {"routed_experts", c.n_routed_experts},
                      {"experts_per_token", c.num_experts_per_tok},
                      {"routed_expert_parameters", s.routed_expert_parameters},
                      {"total_parameters", s.total_parameters},
                      {"active_parameters", s.active_parameters},
                      {"embedding_parameters", s.embedding_parameters},
                      {"active_weight_bytes_per_token", s.active_weight_bytes},
                      {"bytes_by_dtype", s.bytes_by_dtype},
                      {"unused_tensors", s.unused_tensors},
                      {"kv_cache_context", s.kv_cache_context},
                      {"kv_cache_bytes", s.kv_cache_bytes},
                      {"kv_cache_bytes_per_token", s.kv_cache_bytes_per_token},
                      {"kv_cache_values_per_token", s.kv_cache_values_per_token}};
  if (c.family == ModelFamily::DeepseekV41) {
    j["mtp_parameters"] = s.mtp_parameters;
    j["deepseek_v3_kv_cache_bytes_per_token"] = s.deepseek_v3_kv_cache_bytes_per_token;
    j["kv_cache_ring_bytes"] = s.kv_cache_ring_bytes;
    j["engram_parameters"] = s.engram_parameters;
    j["prefill_active_parameters"] = s.prefill_active_parameters;
    nlohmann::json roles = nlohmann::json::array();
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) roles.push_back(v41_layer_role(c, l));
    j["layer_roles"] = roles;
  } else if (c.family == ModelFamily::DeepseekV4) {
    j["mtp_parameters"] = s.mtp_parameters;
    j["deepseek_v3_kv_cache_bytes_per_token"] = s.deepseek_v3_kv_cache_bytes_per_token;
  } else {
    j["naive_kv_cache_values_per_token"] = s.naive_kv_cache_values_per_token;
    j["expert_sharing_group_size"] = c.expert_sharing_group_size;
    j["share_shared_experts"] = c.share_shared_experts;
    j["expert_pools"] = expert_pools(c);
  }
  return j;
}

namespace {
std::string human(double v, const char* unit, double base) {
  const char* prefixes[] = {"", "K", "M", "G", "T", "P"};
  int i = 0;
  while (std::abs(v) >= base && i < 5) v /= base, ++i;
  return i == 0 ? fmt::format("{:.0f} {}", v, unit)
                : fmt::format("{:.2f} {}{}{}", v, prefixes[i], base == 1024 ? "i" : "", unit);
}
std::string count(int64_t n) { return n ? fmt::format("{} ({})", n, human(double(n), "", 1000)) : "0"; }
std::string bytes(int64_t n) { return human(double(n), "B", 1024); }
}  // namespace

// "N window-only, N CSA (ratio 4), N HCA (ratio r, ...)" of V4's layers.
std::string v4_layer_kinds(const ModelConfig& c) {
  int64_t window = 0, csa = 0;
  std::set<int64_t> hca_ratios;
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    const int64_t r = c.v4.compress_ratio(L);
    if (r == 0) ++window;
    else if (r == 4) ++csa;
    else hca_ratios.insert(r);
  }
  const int64_t hca = c.num_hidden_layers - window - csa;
  return fmt::format("{} window-only, {} CSA (ratio 4, top {}), {} HCA{}", window, csa, c.v4.index_topk, hca,
                     hca ? fmt::format(" (ratio {})", fmt::join(hca_ratios, ", ")) : "");
}

// DeepSeek-V4.1's lines of `inspect`: every layer's role, Engram and the cache as DeepSeek stores it.
std::string describe_v41(const ModelSummary& s, const ModelConfig& c) {
  std::string out;
  auto line = [&](std::string_view key, const std::string& value) { out += fmt::format("{:<34}{}\n", key, value); };
  const V4Config& v = c.v4;
  const V41Config& w = c.v41;
  line("architecture", c.architecture);
  line("layers", fmt::format("{} and {} DSpark stages", c.num_hidden_layers, v.num_nextn_predict_layers));
  for (int64_t first = 0; first < c.num_hidden_layers;) {  // runs of layers with one role
    int64_t last = first;
    while (last + 1 < c.num_hidden_layers && v41_layer_role(c, last + 1) == v41_layer_role(c, first)) ++last;
    line(first == last ? fmt::format("  layer {}", first) : fmt::format("  layers {}-{}", first, last),
         v41_layer_role(c, first));
    first = last + 1;
  }
  line("hidden size / vocab", fmt::format("{} / {}", c.hidden_size, c.vocab_size));
  line("attention", fmt::format("one shared K=V head of {} for {} query heads, window {}, indexer {} heads x {} "
                                "top {}, candidate blocks {} x {}",
                                v.head_dim, c.num_attention_heads, v.sliding_window, v.index_n_heads, v.index_head_dim,
                                v.index_topk, w.candidate_topk_blocks, w.candidate_block_size));
  line("hyper-connections", fmt::format("{} streams, {} Sinkhorn iterations", v.hc_mult, v.hc_sinkhorn_iters));
  line("experts", fmt::format("{} routed (top {}), {} shared, width {}; sqrtsoftplus gate with bias, SwiGLU limit {}",
                              c.n_routed_experts, c.num_experts_per_tok, c.n_shared_experts, c.moe_intermediate_size,
                              v.swiglu_limit));
  if (!w.engram_layers.empty())
    line("Engram",
         fmt::format("layers {}; n-grams of 2-{} tokens x {} heads = {} rows of {} per layer and token; {} parameters",
                     fmt::join(w.engram_layers, ", "), w.engram_max_ngram_size, w.engram_n_heads,
                     w.engram_rows_per_token(), w.engram_head_dim, count(s.engram_parameters)));
  line("total parameters", fmt::format("{} ({} without Engram)", count(s.total_parameters),
                                       count(s.total_parameters - s.engram_parameters)));
  line("active parameters per token", count(s.active_parameters));
  line(fmt::format("  in a {}-token prefill", s.kv_cache_context),
       fmt::format("{} (decoder layers only where a later position sees them; the head once)",
                   count(int64_t(s.prefill_active_parameters))));
  line("DSpark stages (not in the counts)", count(s.mtp_parameters));
  line("weight bytes read per token", bytes(s.active_weight_bytes));
  for (const auto& [dtype, n] : s.bytes_by_dtype) line(fmt::format("stored {}", dtype), bytes(n));
  if (s.unused_tensors) line("unused tensors (e.g. vision)", std::to_string(s.unused_tensors));
  line(fmt::format("KV cache at {} tokens", s.kv_cache_context),
       fmt::format("{} per sequence, as DeepSeek stores it", bytes(s.kv_cache_bytes)));
  line("  per token", fmt::format("{:.0f} B of compressed entries and index keys, plus {} of window rings",
                                  double(s.kv_cache_bytes - s.kv_cache_ring_bytes) / double(s.kv_cache_context),
                                  bytes(s.kv_cache_ring_bytes)));
  return out;
}

std::string describe(const ModelSummary& s, const ModelConfig& c) {
  if (c.family == ModelFamily::DeepseekV41) return describe_v41(s, c);
  std::string out;
  auto line = [&](std::string_view key, const std::string& value) { out += fmt::format("{:<34}{}\n", key, value); };
  const bool v4 = c.family == ModelFamily::DeepseekV4;
  line("architecture", c.architecture);
  if (v4) {
    line("layers", fmt::format("{}: {}; {} hash-routed; {} MTP", c.num_hidden_layers, v4_layer_kinds(c),
                               c.v4.num_hash_layers, c.v4.num_nextn_predict_layers));
  } else {
    line("layers", fmt::format("{} ({} dense, {} MoE)", c.num_hidden_layers, c.num_hidden_layers - c.moe_layer_count(),
                               c.moe_layer_count()));
  }
  line("hidden size / vocab", fmt::format("{} / {}", c.hidden_size, c.vocab_size));
  if (v4) {
    const V4Config& v = c.v4;
    line("attention", fmt::format("one shared K=V head of {} for {} query heads, q_lora_rank {}, rope dim {}, "
                                  "window {}, output {} groups x rank {}{}",
                                  v.head_dim, c.num_attention_heads, *c.q_lora_rank, c.qk_rope_head_dim,
                                  v.sliding_window, v.o_groups, v.o_lora_rank,
                                  c.yarn ? fmt::format(", YaRN x{} on compressed layers", c.yarn->factor) : ""));
    line("hyper-connections", fmt::format("{} streams, {} Sinkhorn iterations", v.hc_mult, v.hc_sinkhorn_iters));
  } else {
    line("attention",
         fmt::format("MLA, {} heads, kv_lora_rank {}, q_lora_rank {}, rope dim {}{}", c.num_attention_heads,
                     c.kv_lora_rank, c.q_lora_rank ? std::to_string(*c.q_lora_rank) : "none", c.qk_rope_head_dim,
                     c.yarn ? fmt::format(", YaRN x{}", c.yarn->factor) : ""));
  }
  if (c.n_routed_experts > 0)
    line("experts",
         fmt::format("{} routed (top {}), {} shared, width {}; {} {}", c.n_routed_experts, c.num_experts_per_tok,
                     c.n_shared_experts, c.moe_intermediate_size, to_string(c.scoring_func),
                     v4 ? fmt::format("gate with bias, SwiGLU limit {}", c.v4.swiglu_limit)
                        : fmt::format("{} gate", to_string(c.topk_method))));
  if (c.expert_sharing_group_size > 1) {
    std::vector<std::string> groups;
    for (const std::vector<int64_t>& layers : expert_pools(c))
      groups.push_back(fmt::format("{}", fmt::join(layers, ",")));
    line("expert pools",
         fmt::format("{} pools of {} routed experts{} for MoE layers {}; {} routed parameters", c.expert_pool_count(),
                     c.n_routed_experts, c.share_shared_experts ? " and the shared experts" : "",
                     fmt::join(groups, " | "), count(s.routed_expert_parameters)));
  }
  line("total parameters", count(s.total_parameters));
  line("active parameters per token", fmt::format("{}, {:.1f}% of total", count(s.active_parameters),
                                                  100.0 * double(s.active_parameters) / double(s.total_parameters)));
  line("  of which embedding", count(s.embedding_parameters));
  if (v4) line("MTP modules (not in the counts)", count(s.mtp_parameters));
  line("weight bytes read per token", bytes(s.active_weight_bytes));
  for (const auto& [dtype, n] : s.bytes_by_dtype) line(fmt::format("stored {}", dtype), bytes(n));
  if (s.unused_tensors) line("unused tensors (e.g. MTP)", std::to_string(s.unused_tensors));
  line(fmt::format("KV cache at {} tokens", s.kv_cache_context),
       fmt::format("{} per sequence (fp32, as megamoe stores it)", bytes(s.kv_cache_bytes)));
  if (v4) {
    line("  per token", fmt::format("{:.1f} B ({:.2f} values): window ring, compressed entries, indexer keys",
                                    s.kv_cache_bytes_per_token, s.kv_cache_values_per_token));
    line("  DeepSeek-V3 per token",
         fmt::format("{:.0f} B (61 layers x 576 values), {:.1f}x more", s.deepseek_v3_kv_cache_bytes_per_token,
                     s.deepseek_v3_kv_cache_bytes_per_token / s.kv_cache_bytes_per_token));
  } else {
    line("  per token", fmt::format("{:.0f} B ({:.0f} values: latent + rope key, {} layers)",
                                    s.kv_cache_bytes_per_token, s.kv_cache_values_per_token, c.num_hidden_layers));
    line("  uncompressed K/V would be",
         fmt::format("{} values ({:.1f}x more)", s.naive_kv_cache_values_per_token,
                     double(s.naive_kv_cache_values_per_token) / s.kv_cache_values_per_token));
  }
  return out;
}

}  // namespace megamoe
