#include "model/gguf_deepseek4.h"

#include <fmt/format.h>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/gguf_checkpoint.h"
#include "util/error.h"

namespace megamoe {
using nlohmann::json;

namespace {

constexpr std::string_view kArchitecture = "deepseek4";

// llama.cpp's names (its converter, conversion/deepseek.py) beside DeepSeek's.
struct NamePair {
  std::string_view gguf, checkpoint;
};
constexpr NamePair kModelNames[] = {
    {"token_embd.weight", "embed.weight"},     {"output_norm.weight", "norm.weight"},
    {"output.weight", "head.weight"},          {"output_hc_fn.weight", "hc_head_fn"},
    {"output_hc_base.weight", "hc_head_base"}, {"output_hc_scale.weight", "hc_head_scale"},
};
// Per layer: "blk.{L}." and "layers.{L}.".
constexpr NamePair kLayerNames[] = {
    {"attn_norm.weight", "attn_norm.weight"},
    {"ffn_norm.weight", "ffn_norm.weight"},
    {"hc_attn_fn.weight", "hc_attn_fn"},
    {"hc_attn_base.weight", "hc_attn_base"},
    {"hc_attn_scale.weight", "hc_attn_scale"},
    {"hc_ffn_fn.weight", "hc_ffn_fn"},
    {"hc_ffn_base.weight", "hc_ffn_base"},
    {"hc_ffn_scale.weight", "hc_ffn_scale"},
    {"attn_sinks.weight", "attn.attn_sink"},
    {"attn_q_a.weight", "attn.wq_a.weight"},
    {"attn_q_a_norm.weight", "attn.q_norm.weight"},
    {"attn_q_b.weight", "attn.wq_b.weight"},
    {"attn_kv.weight", "attn.wkv.weight"},
    {"attn_kv_a_norm.weight", "attn.kv_norm.weight"},
    {"attn_output_a.weight", "attn.wo_a.weight"},
    {"attn_output_b.weight", "attn.wo_b.weight"},
    {"attn_compressor_kv.weight", "attn.compressor.wkv.weight"},
    {"attn_compressor_gate.weight", "attn.compressor.wgate.weight"},
    {"attn_compressor_ape.weight", "attn.compressor.ape"},
    {"attn_compressor_norm.weight", "attn.compressor.norm.weight"},
    {"indexer.attn_q_b.weight", "attn.indexer.wq_b.weight"},
    {"indexer.proj.weight", "attn.indexer.weights_proj.weight"},
    {"indexer_compressor_kv.weight", "attn.indexer.compressor.wkv.weight"},
    {"indexer_compressor_gate.weight", "attn.indexer.compressor.wgate.weight"},
    {"indexer_compressor_ape.weight", "attn.indexer.compressor.ape"},
    {"indexer_compressor_norm.weight", "attn.indexer.compressor.norm.weight"},
    {"ffn_gate_inp.weight", "ffn.gate.weight"},
    {"exp_probs_b.bias", "ffn.gate.bias"},
    {"ffn_gate_tid2eid.weight", "ffn.gate.tid2eid"},
    {"ffn_gate_shexp.weight", "ffn.shared_experts.w1.weight"},
    {"ffn_up_shexp.weight", "ffn.shared_experts.w3.weight"},
    {"ffn_down_shexp.weight", "ffn.shared_experts.w2.weight"},
};
// The routed experts, stacked [E, rows, cols] in one tensor per projection.
constexpr NamePair kStackedExperts[] = {
    {"ffn_gate_exps.weight", "w1.weight"},
    {"ffn_up_exps.weight", "w3.weight"},
    {"ffn_down_exps.weight", "w2.weight"},
};

std::string layer_name(int64_t layer, std::string_view rest) { return fmt::format("layers.{}.{}", layer, rest); }

}  // namespace

json deepseek4_config(const GgufModel& model) {
  const ArchitectureKeys k(model.first(), kArchitecture);
  const std::string& where = k.where();
  const GgufFile& f = model.first();
  // An array of numbers (or one number), as llama.cpp writes per-layer values.
  auto numbers = [&](std::string_view name) {
    const GgufKeyValue* kv = k.find(name);
    if (!kv) fail("{}: missing metadata key {}", where, k.key(name));
    const json values = kv->value.is_array() ? kv->value : json::array({kv->value});
    std::vector<double> out;
    for (const json& v : values) {
      if (!v.is_number()) fail("{}: {} holds a value that is not a number", where, k.key(name));
      out.push_back(v.get<double>());
    }
    return out;
  };

  const int64_t nextn = k.integer_or("nextn_predict_layers", 0);
  if (nextn > 0 && !model.find("blk.0.attn_norm.weight"))
    fail("{}: this is a file of DeepSeek-V4's MTP module alone (llama.cpp's --mtp); open the model's own file", where);
  const int64_t gating = k.integer("expert_gating_func");
  if (gating != 4)
    fail("{}: {} is {}, expected 4 (sqrt-softplus, DeepSeek-V4's)", where, k.key("expert_gating_func"), gating);
  const std::vector<double> limits = numbers("swiglu_clamp_exp");
  for (const double limit : limits)
    if (limit != limits.front())
      fail("{}: {} varies between layers; megamoe takes one limit for every layer", where, k.key("swiglu_clamp_exp"));

  const GgufTensor* embedding = model.find("token_embd.weight");
  if (!embedding || embedding->shape.size() != 2) fail("{}: no 2-D tensor token_embd.weight", where);
  const GgufTensor* experts = model.find("blk.0.ffn_gate_exps.weight");

  json c;
  c["architectures"] = {"DeepseekV4ForCausalLM"};
  c["model_type"] = "deepseek_v4";
  c["vocab_size"] = embedding->shape[0];
  c["hidden_size"] = k.integer("embedding_length");
  c["num_hidden_layers"] = k.integer("block_count") - nextn;  // MTP blocks are not read
  c["num_nextn_predict_layers"] = 0;
  c["num_attention_heads"] = k.integer("attention.head_count");
  c["head_dim"] = k.integer("attention.key_length");
  c["qk_rope_head_dim"] = k.integer("rope.dimension_count");
  c["q_lora_rank"] = k.integer("attention.q_lora_rank");
  c["o_groups"] = k.integer("attention.output_group_count");
  c["o_lora_rank"] = k.integer("attention.output_lora_rank");
  c["sliding_window"] = k.integer("attention.sliding_window");
  json ratios = json::array();
  for (const double ratio : numbers("attention.compress_ratios")) ratios.push_back(int64_t(ratio));
  c["compress_ratios"] = ratios;
  if (k.find("attention.compress_rope_freq_base"))
    c["compress_rope_theta"] = k.number("attention.compress_rope_freq_base");
  for (const auto& [gguf_key, config_key] : {std::pair{"attention.indexer.head_count", "index_n_heads"},
                                             std::pair{"attention.indexer.key_length", "index_head_dim"},
                                             std::pair{"attention.indexer.top_k", "index_topk"}})
    if (const std::optional<int64_t> value = k.integer_or(gguf_key)) c[config_key] = *value;
  c["hc_mult"] = k.integer("hyper_connection.count");
  c["hc_sinkhorn_iters"] = k.integer("hyper_connection.sinkhorn_iterations");
  c["hc_eps"] = k.number("hyper_connection.epsilon");
  c["num_hash_layers"] = k.integer_or("hash_layer_count", 0);
  c["n_routed_experts"] = k.integer("expert_count");
  c["num_experts_per_tok"] = k.integer("expert_used_count");
  c["moe_intermediate_size"] = k.integer("expert_feed_forward_length");
  c["n_shared_experts"] = k.integer_or("expert_shared_count", 0);
  c["routed_scaling_factor"] = k.number_or("expert_weights_scale", 1.0);
  c["norm_topk_prob"] = true;
  c["scoring_func"] = "sqrtsoftplus";
  c["swiglu_limit"] = limits.front();
  if (experts && ggml_type_info(experts->type)->name == "MXFP4") c["expert_dtype"] = "fp4";
  c["rms_norm_eps"] = k.number("attention.layer_norm_rms_epsilon");
  c["rope_theta"] = k.number_or("rope.freq_base", 10000);
  c["max_position_embeddings"] = k.integer("context_length");
  c["tie_word_embeddings"] = false;
  if (const std::optional<int64_t> bos = f.integer_or("tokenizer.ggml.bos_token_id")) c["bos_token_id"] = *bos;
  if (const std::optional<int64_t> eos = f.integer_or("tokenizer.ggml.eos_token_id")) c["eos_token_id"] = *eos;
  const std::string scaling = k.string_or("rope.scaling.type", "none");
  if (scaling == "yarn") {
    c["rope_scaling"] = {{"type", "yarn"},
                         {"factor", k.number("rope.scaling.factor")},
                         {"original_max_position_embeddings", k.integer("rope.scaling.original_context_length")},
                         {"beta_fast", k.number_or("rope.scaling.yarn_beta_fast", 32.0)},
                         {"beta_slow", k.number_or("rope.scaling.yarn_beta_slow", 1.0)}};
  } else if (scaling != "none") {
    fail("{}: {} is '{}'; DeepSeek-V4 uses yarn (or none)", where, k.key("rope.scaling.type"), scaling);
  }
  return c;
}

std::unique_ptr<Checkpoint> deepseek4_checkpoint(std::unique_ptr<GgufModel> gguf) {
  json config = deepseek4_config(*gguf);
  const int64_t layers = config["num_hidden_layers"].get<int64_t>(),
                experts = config["n_routed_experts"].get<int64_t>();
  std::vector<TensorInfo> tensors;
  for (const auto& part : gguf->parts()) {
    for (const GgufTensor& t : part->tensors()) {
      TensorInfo info = gguf_tensor_info(*part, t);
      auto rename = [&](std::string name) {
        info.stored_as = t.name;
        info.name = std::move(name);
      };
      for (const NamePair& n : kModelNames)
        if (t.name == n.gguf) rename(std::string(n.checkpoint));
      const auto layer = split_layer(t.name, "blk.");
      if (layer && layer->first < layers) {
        // Not a structured binding: clang 14 lambdas cannot capture one.
        const int64_t L = layer->first;
        const std::string_view rest = layer->second;
        for (const NamePair& n : kLayerNames)
          if (rest == n.gguf) rename(layer_name(L, n.checkpoint));
        for (const NamePair& n : kStackedExperts) {
          if (rest != n.gguf) continue;
          add_stacked_experts(&tensors, *part, t, experts, [&](int64_t e) {
            return layer_name(L, fmt::format("ffn.experts.{}.{}", e, n.checkpoint));
          });
          info.name.clear();
        }
      }
      if (!info.name.empty()) tensors.push_back(std::move(info));
    }
  }
  return Checkpoint::from_gguf(std::move(gguf), std::move(config), std::move(tensors), {});
}

}  // namespace megamoe
