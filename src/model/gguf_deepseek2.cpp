#include "model/gguf_deepseek2.h"

#include <fmt/format.h>
#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <map>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/gguf_checkpoint.h"
#include "model/gguf_tokenizer.h"
#include "model/tensor_spec.h"
#include "ops/matmul.h"
#include "ops/quant.h"
#include "tokenizer/ggml_vocab.h"
#include "util/error.h"
#include "util/json_file.h"
#include "util/progress.h"

namespace megamoe {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::string_view kArchitecture = "deepseek2";
constexpr GgufValueType kScalar = GgufValueType::U8;  // the element type of what is not an array

// llama.cpp's names (llama-arch.cpp, LLM_ARCH_DEEPSEEK2) beside Hugging Face's, one table for both
// directions. Per-layer names follow "blk.{L}." and "model.layers.{L}.".
struct NamePair {
  std::string_view gguf, hf;
};
constexpr NamePair kModelNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};
constexpr NamePair kLayerNames[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_q_a.weight", "self_attn.q_a_proj.weight"},
    {"attn_q_a_norm.weight", "self_attn.q_a_layernorm.weight"},
    {"attn_q_b.weight", "self_attn.q_b_proj.weight"},
    {"attn_kv_a_mqa.weight", "self_attn.kv_a_proj_with_mqa.weight"},
    {"attn_kv_a_norm.weight", "self_attn.kv_a_layernorm.weight"},
    {"attn_kv_b.weight", "self_attn.kv_b_proj.weight"},  // older files; newer ones split it (below)
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
    {"ffn_gate_inp.weight", "mlp.gate.weight"},
    {"exp_probs_b.bias", "mlp.gate.e_score_correction_bias"},
    {"ffn_gate_shexp.weight", "mlp.shared_experts.gate_proj.weight"},
    {"ffn_up_shexp.weight", "mlp.shared_experts.up_proj.weight"},
    {"ffn_down_shexp.weight", "mlp.shared_experts.down_proj.weight"},
};
// The routed experts, stacked [E, rows, cols] in one tensor per projection.
constexpr NamePair kStackedExperts[] = {
    {"ffn_gate_exps.weight", "gate_proj.weight"},
    {"ffn_up_exps.weight", "up_proj.weight"},
    {"ffn_down_exps.weight", "down_proj.weight"},
};
constexpr std::string_view kKeyB = "attn_k_b.weight", kValueB = "attn_v_b.weight";

std::string layer_name(int64_t layer, std::string_view rest) { return fmt::format("model.layers.{}.{}", layer, rest); }

uint32_t ggml_type_of_dtype(DType dtype) { return *ggml_type_of(dtype_name(dtype)); }

}  // namespace

json deepseek2_config(const GgufModel& model) {
  const ArchitectureKeys k(model.first(), kArchitecture);
  const std::string& where = k.where();
  const GgufFile& f = model.first();

  json c;
  // Head widths: newer files give MLA's per-head widths in key_length_mla / value_length_mla (and
  // the latent's in key_length / value_length); older ones the per-head widths in the plain keys.
  const int64_t rope = k.integer("rope.dimension_count");
  const std::optional<int64_t> key_mla = k.integer_or("attention.key_length_mla");
  const int64_t key_length = key_mla ? *key_mla : k.integer("attention.key_length");
  const int64_t value_length = key_mla ? k.integer("attention.value_length_mla") : k.integer("attention.value_length");
  if (key_length <= rope)
    fail("{}: the key width {} does not exceed {}.rope.dimension_count ({})", where, key_length, kArchitecture, rope);

  const int64_t gating = k.integer_or("expert_gating_func", 1);  // absent in early V2 files: softmax
  if (gating != 1 && gating != 2)
    fail("{}: {} is {}, expected 1 (softmax) or 2 (sigmoid)", where, k.key("expert_gating_func"), gating);
  const int64_t groups = k.integer_or("expert_group_count", 1);
  const bool bias =
      std::ranges::any_of(model.tensors(), [](const GgufTensor* t) { return t->name.ends_with(".exp_probs_b.bias"); });

  const GgufTensor* embedding = model.find("token_embd.weight");
  if (!embedding || embedding->shape.size() != 2) fail("{}: no 2-D tensor token_embd.weight", where);
  std::optional<int64_t> vocab = k.integer_or("vocab_size");

  c["architectures"] = {gating == 2 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"};
  c["vocab_size"] = vocab ? *vocab : embedding->shape[0];
  c["hidden_size"] = k.integer("embedding_length");
  c["intermediate_size"] = k.integer("feed_forward_length");
  // MTP layers (nextn) follow the model's in newer files; megamoe's V2/V3 family does not run them.
  c["num_hidden_layers"] = k.integer("block_count") - k.integer_or("nextn_predict_layers", 0);
  c["num_attention_heads"] = k.integer("attention.head_count");
  c["max_position_embeddings"] = k.integer("context_length");
  c["rms_norm_eps"] = k.number("attention.layer_norm_rms_epsilon");
  c["rope_theta"] = k.number_or("rope.freq_base", 10000);
  if (const std::optional<int64_t> q_lora = k.integer_or("attention.q_lora_rank"); q_lora && *q_lora > 0)
    c["q_lora_rank"] = *q_lora;
  c["kv_lora_rank"] = k.integer("attention.kv_lora_rank");
  c["qk_rope_head_dim"] = rope;
  c["qk_nope_head_dim"] = key_length - rope;
  c["v_head_dim"] = value_length;
  c["first_k_dense_replace"] = k.integer_or("leading_dense_block_count", 0);
  c["n_routed_experts"] = k.integer("expert_count");
  c["num_experts_per_tok"] = k.integer("expert_used_count");
  c["moe_intermediate_size"] = k.integer("expert_feed_forward_length");
  c["n_shared_experts"] = k.integer_or("expert_shared_count", 0);
  c["routed_scaling_factor"] = k.number_or("expert_weights_scale", 1.0);
  if (const GgufKeyValue* norm = k.find("expert_weights_norm")) {
    if (!norm->value.is_boolean()) fail("{}: {} is not a bool", where, norm->key);
    c["norm_topk_prob"] = norm->value.get<bool>();
  }
  c["scoring_func"] = gating == 2 ? "sigmoid" : "softmax";
  c["n_group"] = groups;
  c["topk_group"] = k.integer_or("expert_group_used_count", 1);
  c["topk_method"] = bias ? "noaux_tc" : groups > 1 ? "group_limited_greedy" : "greedy";
  c["tie_word_embeddings"] = model.find("output.weight") == nullptr;
  if (const std::optional<int64_t> bos = f.integer_or("tokenizer.ggml.bos_token_id")) c["bos_token_id"] = *bos;
  if (const std::optional<int64_t> eos = f.integer_or("tokenizer.ggml.eos_token_id")) c["eos_token_id"] = *eos;

  const std::string scaling = k.string_or("rope.scaling.type", "none");
  const double factor = k.number_or("rope.scaling.factor", 1.0);
  if (scaling == "yarn") {
    // llama.cpp keeps one magnitude, 0.1 x mscale_all_dim (DeepSeek's mscale equals it).
    const double mscale = k.number_or("rope.scaling.yarn_log_multiplier", 0.0) / 0.1;
    c["rope_scaling"] = {{"type", "yarn"},
                         {"factor", factor},
                         {"original_max_position_embeddings", k.integer("rope.scaling.original_context_length")},
                         {"beta_fast", k.number_or("rope.scaling.yarn_beta_fast", 32.0)},
                         {"beta_slow", k.number_or("rope.scaling.yarn_beta_slow", 1.0)},
                         {"mscale", mscale},
                         {"mscale_all_dim", mscale}};
  } else if (!((scaling == "none" || scaling == "linear") && (factor == 0 || factor == 1))) {
    fail("{}: {} is '{}' with factor {}; megamoe supports yarn (or none)", where, k.key("rope.scaling.type"), scaling,
         factor);
  }
  return c;
}

std::unique_ptr<Checkpoint> deepseek2_checkpoint(std::unique_ptr<GgufModel> gguf) {
  json config = deepseek2_config(*gguf);
  const ModelConfig c = parse_model_config(config, gguf->first().path().string() + " (its metadata)");
  const int64_t H = c.num_attention_heads, C = c.kv_lora_rank, dn = c.qk_nope_head_dim, dv = c.v_head_dim;

  std::vector<TensorInfo> tensors;
  std::map<int64_t, std::pair<const GgufTensor*, const GgufTensor*>> split_kv_b;  // layer -> k_b, v_b
  std::map<const GgufTensor*, const fs::path*> file_of;
  for (const auto& part : gguf->parts()) {
    for (const GgufTensor& t : part->tensors()) {
      file_of[&t] = &part->path();
      TensorInfo info = gguf_tensor_info(*part, t);
      auto rename = [&](std::string hf) {
        info.stored_as = t.name;
        info.name = std::move(hf);
      };
      for (const NamePair& n : kModelNames)
        if (t.name == n.gguf) rename(std::string(n.hf));
      const auto layer = split_layer(t.name, "blk.");
      if (layer && layer->first < c.num_hidden_layers) {
        // Not a structured binding: clang 14 lambdas cannot capture one.
        const int64_t L = layer->first;
        const std::string_view rest = layer->second;
        if (rest == kKeyB || rest == kValueB) {
          (rest == kKeyB ? split_kv_b[L].first : split_kv_b[L].second) = &t;
          continue;
        }
        for (const NamePair& n : kLayerNames)
          if (rest == n.gguf) rename(layer_name(L, n.hf));
        for (const NamePair& n : kStackedExperts) {
          if (rest != n.gguf) continue;
          add_stacked_experts(&tensors, *part, t, c.n_routed_experts,
                              [&](int64_t e) { return layer_name(L, fmt::format("mlp.experts.{}.{}", e, n.hf)); });
          info.name.clear();
        }
      }
      if (!info.name.empty()) tensors.push_back(std::move(info));
    }
  }

  // kv_b_proj [H*(dn+dv), C] from the split halves: per head, k_b [C, dn] transposed, then v_b [dv, C].
  std::vector<std::unique_ptr<std::byte[]>> owned;
  for (const auto& [L, halves] : split_kv_b) {
    const auto [k_b, v_b] = halves;
    const GgufTensor* present = k_b ? k_b : v_b;
    const fs::path& file = *file_of[present];
    if (!k_b || !v_b)
      fail("{}: tensor {} has no {} beside it", file.string(), present->name,
           fmt::format("blk.{}.{}", L, k_b ? kValueB : kKeyB));
    const std::array<int64_t, 3> k_shape{H, C, dn}, v_shape{H, dv, C};
    for (const auto& [t, shape] : {std::pair{k_b, k_shape}, std::pair{v_b, v_shape}})
      if (!std::ranges::equal(t->shape, shape))
        fail("{}: tensor {} has shape {}, expected [{}]", file_of[t]->string(), t->name, t->shape_string(),
             fmt::join(shape, ", "));
    const WeightView k{.dtype = *dtype_of_ggml(k_b->type), .rows = H * C, .cols = dn, .data = k_b->data};
    const WeightView v{.dtype = *dtype_of_ggml(v_b->type), .rows = H * dv, .cols = C, .data = v_b->data};
    k.check();
    v.check();
    const int64_t rows = H * (dn + dv);
    auto bytes = std::make_unique<std::byte[]>(size_t(rows * C) * sizeof(float));
    float* kv_b = reinterpret_cast<float*>(bytes.get());
    std::vector<float> row(size_t(std::max(dn, C)));
    for (int64_t h = 0; h < H; ++h) {
      float* head = kv_b + h * (dn + dv) * C;
      for (int64_t c_row = 0; c_row < C; ++c_row) {
        dequantize_row(row.data(), k, h * C + c_row);
        for (int64_t i = 0; i < dn; ++i) head[i * C + c_row] = row[size_t(i)];
      }
      for (int64_t j = 0; j < dv; ++j) dequantize_row(head + (dn + j) * C, v, h * dv + j);
    }
    tensors.push_back(TensorInfo{layer_name(L, "self_attn.kv_b_proj.weight"),
                                 DType::F32,
                                 {rows, C},
                                 bytes.get(),
                                 size_t(rows * C) * sizeof(float),
                                 &file,
                                 fmt::format("blk.{0}.{1} and blk.{0}.{2}", L, kKeyB, kValueB)});
    owned.push_back(std::move(bytes));
  }
  return Checkpoint::from_gguf(std::move(gguf), std::move(config), std::move(tensors), std::move(owned));
}

namespace {

// One tensor of the exported file: llama.cpp's name, its type and shape, and how to fill it.
void add_tensor(std::vector<GgufTensorToWrite>* out, std::string name, DType dtype, std::vector<int64_t> shape,
                std::function<void(std::byte*)> fill) {
  out->push_back(GgufTensorToWrite{std::move(name), ggml_type_of_dtype(dtype), std::move(shape), std::move(fill)});
}

int64_t row_bytes(DType dtype, int64_t cols) { return cols / dtype_block_size(dtype) * int64_t(dtype_size(dtype)); }

// The format a matrix of `cols` columns takes: `wanted`, or F32 where its rows are not whole blocks.
DType matrix_format(DType wanted, int64_t cols) { return cols % dtype_block_size(wanted) == 0 ? wanted : DType::F32; }

// `w` as `dtype` at `out`: the stored bytes when the formats agree, else each row through fp32.
void write_rows(std::byte* out, const WeightView& w, DType dtype) {
  const int64_t bytes = row_bytes(dtype, w.cols);
  if (w.dtype == dtype) {
    std::memcpy(out, w.data, size_t(bytes * w.rows));
    return;
  }
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(row.data(), w, r);
    encode_row(reinterpret_cast<uint8_t*>(out + r * bytes), dtype, row.data(), w.cols);
  }
}

GgmlVocab exported_vocab(const fs::path& dir, int64_t vocab_size) {
  const fs::path tokenizer = dir / "tokenizer.json", config = dir / "tokenizer_config.json";
  if (!fs::exists(tokenizer)) fail("{}: no tokenizer.json (a GGUF file carries its tokenizer)", dir.string());
  return ggml_vocab_from_hf(read_json_file(tokenizer), fs::exists(config) ? read_json_file(config) : json(),
                            tokenizer.string(), vocab_size);
}

}  // namespace

GgufExportSummary export_gguf(const fs::path& dir, const fs::path& output, const GgufExportOptions& options) {
  static constexpr DType kMatrixFormats[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};
  if (std::ranges::find(kMatrixFormats, options.matrices) == std::end(kMatrixFormats))
    fail("export-gguf writes matrices in f32, f16, bf16, q8_0 or q4_0, not {}", dtype_name(options.matrices));
  const std::unique_ptr<Checkpoint> ckpt = Checkpoint::open(dir);
  const ModelConfig c = parse_model_config(ckpt->config(), ckpt->config_source());
  if (c.is_v4_like())
    fail("{}: export-gguf writes DeepSeek-V2/V3 models (llama.cpp's deepseek2); this is {}", dir.string(),
         c.architecture);
  if (c.expert_sharing_group_size > 1 || c.moe_layer_freq != 1)
    fail(
        "{}: llama.cpp's deepseek2 has no expert pools across layers and no dense layers between MoE layers; "
        "export-gguf cannot write this model",
        dir.string());
  if (c.yarn && c.yarn->mscale != c.yarn->mscale_all_dim)
    fail("{}: rope_scaling has mscale {} and mscale_all_dim {}; a GGUF file keeps one (they must agree)",
         ckpt->config_source(), c.yarn->mscale, c.yarn->mscale_all_dim);
  const GgmlVocab vocab = exported_vocab(dir, c.vocab_size);
  const int64_t H = c.num_attention_heads, C = c.kv_lora_rank, dn = c.qk_nope_head_dim, dv = c.v_head_dim;
  const int64_t dr = c.qk_rope_head_dim;

  auto kv = [](std::string key, GgufValueType type, json value) {
    return GgufKeyValue{std::move(key), type, kScalar, std::move(value)};
  };
  auto arch = [&](std::string_view key, GgufValueType type, json value) {
    return kv(fmt::format("{}.{}", kArchitecture, key), type, std::move(value));
  };
  using T = GgufValueType;
  std::vector<GgufKeyValue> metadata = {
      kv("general.architecture", T::String, kArchitecture),
      kv("general.name", T::String, options.name.empty() ? fs::absolute(dir).filename().string() : options.name),
      kv("general.quantization_version", T::U32, 2),
      arch("context_length", T::U32, c.max_position_embeddings),
      arch("embedding_length", T::U32, c.hidden_size),
      arch("feed_forward_length", T::U32, c.intermediate_size),
      arch("block_count", T::U32, c.num_hidden_layers),
      arch("attention.head_count", T::U32, H),
      arch("attention.head_count_kv", T::U32, 1),  // MLA runs as one shared key-value head in llama.cpp
      arch("rope.freq_base", T::F32, c.rope_theta),
      arch("attention.layer_norm_rms_epsilon", T::F32, c.rms_norm_eps),
      arch("expert_used_count", T::U32, c.num_experts_per_tok),
      arch("leading_dense_block_count", T::U32, c.first_k_dense_replace),
      arch("vocab_size", T::U32, c.vocab_size),
      arch("attention.kv_lora_rank", T::U32, C),
      arch("attention.key_length", T::U32, C + dr),
      arch("attention.value_length", T::U32, C),
      arch("attention.key_length_mla", T::U32, dn + dr),
      arch("attention.value_length_mla", T::U32, dv),
      arch("expert_feed_forward_length", T::U32, c.moe_intermediate_size),
      arch("expert_count", T::U32, c.n_routed_experts),
      arch("expert_shared_count", T::U32, c.n_shared_experts),
      arch("expert_weights_scale", T::F32, c.routed_scaling_factor),
      arch("expert_gating_func", T::U32, c.scoring_func == ScoringFunc::Sigmoid ? 2 : 1),
      arch("rope.dimension_count", T::U32, dr),
  };
  // 0: no q LoRA (llama.cpp asks for the key unless the model has DeepSeek-V2-Lite's 27 layers).
  metadata.push_back(arch("attention.q_lora_rank", T::U32, c.q_lora_rank.value_or(0)));
  if (c.norm_topk_prob) metadata.push_back(arch("expert_weights_norm", T::Bool, true));
  if (c.n_group > 1) {
    metadata.push_back(arch("expert_group_count", T::U32, c.n_group));
    metadata.push_back(arch("expert_group_used_count", T::U32, c.topk_group));
  }
  if (c.yarn) {
    const YarnConfig& y = *c.yarn;
    metadata.push_back(arch("rope.scaling.type", T::String, "yarn"));
    metadata.push_back(arch("rope.scaling.factor", T::F32, y.factor));
    metadata.push_back(arch("rope.scaling.original_context_length", T::U32, y.original_max_position_embeddings));
    metadata.push_back(arch("rope.scaling.yarn_log_multiplier", T::F32, 0.1 * y.mscale_all_dim));
    metadata.push_back(arch("rope.scaling.yarn_beta_fast", T::F32, y.beta_fast));
    metadata.push_back(arch("rope.scaling.yarn_beta_slow", T::F32, y.beta_slow));
  }
  for (GgufKeyValue& entry : ggml_vocab_metadata(vocab)) metadata.push_back(std::move(entry));

  GgufExportSummary summary;
  std::vector<GgufTensorToWrite> tensors;
  const Checkpoint& source = *ckpt;
  auto view = [&](const TensorSpec& spec) {
    return source.weight(spec.name, spec.shape[0], spec.shape[1], ScaleLayout::ScaleInvF32,
                         block_format(spec, c.weight_format));
  };
  // The router in F32, as llama.cpp keeps it. Under q8_0 / q4_0 the rules of megamoe's own
  // checkpoints (block_format: the head in Q8_0, the embedding as stored), so that exporting a
  // quantized checkpoint keeps its bytes; the other formats everywhere.
  auto matrix_dtype = [&](const TensorSpec& spec) {
    if (spec.role == TensorRole::RouterGate) return DType::F32;
    if (dtype_block_size(options.matrices) == 1) return options.matrices;
    if (const std::optional<DType> block = block_format(spec, options.matrices)) return *block;
    if (spec.role == TensorRole::Linear) ++summary.fallbacks;
    const DType stored = view(spec).dtype;
    return stored == DType::F16 || stored == DType::BF16 ? stored : DType::F32;
  };
  // The routed experts of each layer, gathered into ffn_{gate,up,down}_exps.
  std::map<std::pair<int64_t, std::string>, std::vector<TensorSpec>> experts;
  std::vector<std::pair<std::string, TensorSpec>> order;  // gguf name, the spec (or its first expert's)

  for_each_tensor(c, [&](const TensorSpec& spec) {
    std::string gguf;
    for (const NamePair& n : kModelNames)
      if (spec.name == n.hf) gguf = n.gguf;
    if (const auto layer = split_layer(spec.name, "model.layers.")) {
      const auto [L, rest] = *layer;
      for (const NamePair& n : kLayerNames)
        if (rest == n.hf) gguf = fmt::format("blk.{}.{}", L, n.gguf);
      if (spec.expert >= 0) {
        for (const NamePair& n : kStackedExperts)
          if (rest.ends_with(n.hf)) gguf = fmt::format("blk.{}.{}", L, n.gguf);
        auto& stack = experts[{L, gguf}];
        if (stack.empty()) order.emplace_back(gguf, spec);
        stack.push_back(spec);
        return;
      }
    }
    if (gguf.empty()) fail("internal error: export-gguf has no llama.cpp name for {}", spec.name);
    order.emplace_back(gguf, spec);
  });

  for (const auto& [gguf, spec] : order) {
    if (spec.shape.size() == 1) {
      const std::vector<float> values = source.vector_f32(spec.name, spec.shape[0]);
      add_tensor(&tensors, gguf, DType::F32, spec.shape,
                 [values](std::byte* out) { std::memcpy(out, values.data(), values.size() * sizeof(float)); });
      continue;
    }
    const DType dtype = matrix_dtype(spec);
    if (spec.expert >= 0) {
      const auto layer = split_layer(spec.name, "model.layers.");
      const std::vector<TensorSpec>& stack = experts.at({layer->first, gguf});
      add_tensor(&tensors, gguf, dtype, {int64_t(stack.size()), spec.shape[0], spec.shape[1]},
                 [&view, stack, dtype](std::byte* out) {
                   for (const TensorSpec& e : stack) {
                     write_rows(out, view(e), dtype);
                     out += e.shape[0] * row_bytes(dtype, e.shape[1]);
                   }
                 });
      continue;
    }
    if (spec.name.ends_with("self_attn.kv_b_proj.weight")) {
      // llama.cpp's absorbed MLA: per head k_b [C, dn] (transposed) and v_b [dv, C].
      const std::string prefix = gguf.substr(0, gguf.size() - std::string_view("attn_kv_b.weight").size());
      const WeightView kv_b = view(spec);
      const DType k_dtype = matrix_format(options.matrices, dn), v_dtype = matrix_format(options.matrices, C);
      summary.fallbacks += (k_dtype != options.matrices) + (v_dtype != options.matrices);
      add_tensor(&tensors, prefix + std::string(kKeyB), k_dtype, {H, C, dn}, [=](std::byte* out) {
        std::vector<float> rows(static_cast<size_t>(dn * C)), column(static_cast<size_t>(dn));
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t i = 0; i < dn; ++i) dequantize_row(rows.data() + i * C, kv_b, h * (dn + dv) + i);
          for (int64_t c_row = 0; c_row < C; ++c_row, out += row_bytes(k_dtype, dn)) {
            for (int64_t i = 0; i < dn; ++i) column[size_t(i)] = rows[size_t(i * C + c_row)];
            encode_row(reinterpret_cast<uint8_t*>(out), k_dtype, column.data(), dn);
          }
        }
      });
      add_tensor(&tensors, prefix + std::string(kValueB), v_dtype, {H, dv, C}, [=](std::byte* out) {
        std::vector<float> row(static_cast<size_t>(C));
        for (int64_t h = 0; h < H; ++h)
          for (int64_t j = 0; j < dv; ++j, out += row_bytes(v_dtype, C)) {
            dequantize_row(row.data(), kv_b, h * (dn + dv) + dn + j);
            encode_row(reinterpret_cast<uint8_t*>(out), v_dtype, row.data(), C);
          }
      });
      continue;
    }
    const WeightView w = view(spec);
    add_tensor(&tensors, gguf, dtype, spec.shape, [w, dtype](std::byte* out) { write_rows(out, w, dtype); });
  }

  // Large models take minutes: a progress bar over the bytes written.
  constexpr int64_t kMiB = 1 << 20;
  std::vector<int64_t> sizes;
  for (const GgufTensorToWrite& t : tensors) {
    int64_t elements = 1;
    for (int64_t d : t.shape) elements *= d;
    const GgmlTypeInfo info = *ggml_type_info(t.type);
    sizes.push_back(elements / info.block_elements * info.block_bytes);
    summary.bytes += sizes.back();
  }
  summary.tensors = int64_t(tensors.size());
  Progress progress("export-gguf", (summary.bytes + kMiB - 1) / kMiB, "MiB");
  int64_t written = 0;
  for (size_t i = 0; i < tensors.size(); ++i)
    tensors[i].fill = [fill = std::move(tensors[i].fill), bytes = sizes[i], &written, &progress](std::byte* out) {
      fill(out);
      written += bytes;
      progress.update((written + kMiB - 1) / kMiB);
    };
  write_gguf(output, metadata, tensors);
  progress.finish();
  return summary;
}

}  // namespace megamoe
