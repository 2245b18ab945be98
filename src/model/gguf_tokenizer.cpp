#include "model/gguf_tokenizer.h"

#include "util/error.h"

namespace megamoe {

namespace {

// An array of `element`s under `key`; fails naming the file and key otherwise.
const nlohmann::json& array_of(const GgufFile& file, const char* key, GgufValueType element) {
  const GgufKeyValue* entry = file.find_key(key);
  if (!entry) fail("{}: metadata key '{}' is missing", file.path().string(), key);
  if (entry->type != GgufValueType::Array || entry->element != element)
    fail("{}: metadata key '{}' is not an array of {}", file.path().string(), key, ggml_value_type_name(element));
  return entry->value;
}

}  // namespace

GgmlVocab read_ggml_vocab(const GgufFile& file) {
  GgmlVocab v;
  v.model = file.string("tokenizer.ggml.model");
  v.pre = file.find_key("tokenizer.ggml.pre") ? file.string("tokenizer.ggml.pre") : "default";
  v.tokens = array_of(file, "tokenizer.ggml.tokens", GgufValueType::String).get<std::vector<std::string>>();
  v.types = array_of(file, "tokenizer.ggml.token_type", GgufValueType::I32).get<std::vector<int32_t>>();
  v.merges = array_of(file, "tokenizer.ggml.merges", GgufValueType::String).get<std::vector<std::string>>();
  v.bos = file.integer_or("tokenizer.ggml.bos_token_id");
  v.eos = file.integer_or("tokenizer.ggml.eos_token_id");
  v.pad = file.integer_or("tokenizer.ggml.padding_token_id");
  if (const GgufKeyValue* add_bos = file.find_key("tokenizer.ggml.add_bos_token")) {
    if (!add_bos->value.is_boolean())
      fail("{}: metadata key 'tokenizer.ggml.add_bos_token' is not a bool", file.path().string());
    v.add_bos = add_bos->value.get<bool>();
  }
  if (file.find_key("tokenizer.chat_template")) v.chat_template = file.string("tokenizer.chat_template");
  return v;
}

std::vector<GgufKeyValue> ggml_vocab_metadata(const GgmlVocab& v) {
  constexpr GgufValueType kNone = GgufValueType::U8;  // the element type of what is not an array
  std::vector<GgufKeyValue> keys = {
      {"tokenizer.ggml.model", GgufValueType::String, kNone, v.model},
      {"tokenizer.ggml.pre", GgufValueType::String, kNone, v.pre},
      {"tokenizer.ggml.tokens", GgufValueType::Array, GgufValueType::String, v.tokens},
      {"tokenizer.ggml.token_type", GgufValueType::Array, GgufValueType::I32, v.types},
      {"tokenizer.ggml.merges", GgufValueType::Array, GgufValueType::String, v.merges},
      {"tokenizer.ggml.add_bos_token", GgufValueType::Bool, kNone, v.add_bos},
  };
  if (v.bos) keys.push_back({"tokenizer.ggml.bos_token_id", GgufValueType::U32, kNone, *v.bos});
  if (v.eos) keys.push_back({"tokenizer.ggml.eos_token_id", GgufValueType::U32, kNone, *v.eos});
  if (v.pad) keys.push_back({"tokenizer.ggml.padding_token_id", GgufValueType::U32, kNone, *v.pad});
  if (!v.chat_template.empty())
    keys.push_back({"tokenizer.chat_template", GgufValueType::String, kNone, v.chat_template});
  return keys;
}

Tokenizer load_tokenizer(const std::filesystem::path& path) {
  if (path.extension() != ".gguf") return Tokenizer::load(path);
  const std::unique_ptr<GgufModel> model = GgufModel::open(path);  // the first part holds the tokenizer
  const auto [tokenizer, config] = hf_tokenizer_from_ggml(read_ggml_vocab(model->first()), path.string());
  return Tokenizer::from_json(tokenizer, config, path.string());
}

}  // namespace megamoe
