#include "tokenizer/ggml_vocab.h"

#include <algorithm>

#include "tokenizer/bpe_trainer.h"
#include "tokenizer/pre_tokenizer.h"
#include "util/error.h"

namespace megamoe {

namespace {

bool is_added(int32_t type) {
  return type == int32_t(GgmlTokenType::Control) || type == int32_t(GgmlTokenType::UserDefined);
}

// A tokenizer_config.json token: a string, or an object with "content" (null: none).
std::optional<std::string> config_token(const nlohmann::json& config, const char* key) {
  if (!config.is_object() || !config.contains(key) || config[key].is_null()) return std::nullopt;
  const nlohmann::json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

std::pair<nlohmann::ordered_json, nlohmann::ordered_json> hf_tokenizer_from_ggml(const GgmlVocab& v,
                                                                                 const std::string& source) {
  if (v.model != "gpt2")
    fail("{}: tokenizer.ggml.model is \"{}\"; megamoe reads byte-level BPE tokenizers (\"gpt2\")", source, v.model);
  if (v.pre != "deepseek-v3")
    fail("{}: tokenizer.ggml.pre is \"{}\"; megamoe knows DeepSeek-V3's pre-tokenizer (\"deepseek-v3\")", source,
         v.pre);
  if (v.types.size() != v.tokens.size())
    fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", source, v.types.size(), v.tokens.size());
  const int64_t n = int64_t(v.tokens.size());
  for (const auto& [key, id] : {std::pair{"bos", v.bos}, std::pair{"eos", v.eos}, std::pair{"padding", v.pad}})
    if (id && (*id < 0 || *id >= n))
      fail("{}: tokenizer.ggml.{}_token_id {} is not one of the {} tokens", source, key, *id, n);

  std::vector<AddedToken> added;
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (int64_t id = 0; id < n; ++id) {
    const int32_t type = v.types[size_t(id)];
    if (type == int32_t(GgmlTokenType::Unused)) continue;
    if (is_added(type)) added.push_back({v.tokens[size_t(id)], int32_t(id), type == int32_t(GgmlTokenType::Control)});
    else vocab[v.tokens[size_t(id)]] = id;
  }
  const nlohmann::ordered_json tokenizer = byte_level_bpe_json(added, vocab, v.merges);
  nlohmann::ordered_json config = {{"add_bos_token", v.add_bos}, {"add_eos_token", false}};
  if (v.bos) config["bos_token"] = v.tokens[size_t(*v.bos)];
  if (v.eos) config["eos_token"] = v.tokens[size_t(*v.eos)];
  if (v.pad) config["pad_token"] = v.tokens[size_t(*v.pad)];
  if (!v.chat_template.empty()) config["chat_template"] = v.chat_template;
  return {tokenizer, config};
}

GgmlVocab ggml_vocab_from_hf(const nlohmann::json& tokenizer, const nlohmann::json& config, const std::string& source,
                             int64_t min_tokens) {
  try {
    const nlohmann::json& model = tokenizer.at("model");
    if (model.value("type", "") != "BPE") fail("{}: model.type is not BPE", source);
    if (tokenizer.at("pre_tokenizer") != deepseek_v3_pre_tokenizer())
      fail("{}: pre_tokenizer is not DeepSeek-V3's, the one GGUF files name \"deepseek-v3\"", source);
    GgmlVocab v;
    int64_t n = min_tokens;
    for (const auto& [token, id] : model.at("vocab").items()) n = std::max(n, id.get<int64_t>() + 1);
    for (const nlohmann::json& a : tokenizer.value("added_tokens", nlohmann::json::array()))
      n = std::max(n, a.at("id").get<int64_t>() + 1);
    v.tokens.resize(size_t(n));
    v.types.assign(size_t(n), int32_t(GgmlTokenType::Unused));
    for (int64_t id = 0; id < n; ++id) v.tokens[size_t(id)] = "[PAD" + std::to_string(id) + "]";
    for (const auto& [token, id] : model.at("vocab").items()) {
      v.tokens[size_t(id.get<int64_t>())] = token;
      v.types[size_t(id.get<int64_t>())] = int32_t(GgmlTokenType::Normal);
    }
    for (const nlohmann::json& a : tokenizer.value("added_tokens", nlohmann::json::array())) {
      const int64_t id = a.at("id").get<int64_t>();
      v.tokens[size_t(id)] = a.at("content").get<std::string>();
      v.types[size_t(id)] = int32_t(a.value("special", false) ? GgmlTokenType::Control : GgmlTokenType::UserDefined);
    }
    for (const nlohmann::json& m : model.at("merges"))  // "a b", or ["a", "b"] in newer files
      v.merges.push_back(m.is_string() ? m.get<std::string>()
                                       : m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
    const auto id_of = [&](const std::optional<std::string>& content) -> std::optional<int64_t> {
      if (!content) return std::nullopt;
      for (int64_t id = 0; id < n; ++id)
        if (v.tokens[size_t(id)] == *content && v.types[size_t(id)] != int32_t(GgmlTokenType::Unused)) return id;
      return std::nullopt;
    };
    v.bos = id_of(config_token(config, "bos_token"));
    v.eos = id_of(config_token(config, "eos_token"));
    v.pad = id_of(config_token(config, "pad_token"));
    v.add_bos = config.is_object() && config.value("add_bos_token", false);
    if (config.is_object() && config.contains("chat_template") && config["chat_template"].is_string())
      v.chat_template = config["chat_template"].get<std::string>();
    return v;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {}", source, e.what());
  }
}

}  // namespace megamoe
