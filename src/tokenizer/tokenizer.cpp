#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "tokenizer/utf8.h"
#include "util/error.h"
#include "util/json_file.h"

namespace megamoe {
namespace {

// The normalizers megamoe implements are those that leave text as it is (DeepSeek-V3 has an empty
// Sequence), so added tokens match the same text whether or not their "normalized" flag is set.
void check_identity_normalizer(const nlohmann::json& normalizer, const std::string& where) {
  if (normalizer.is_null()) return;
  const std::string type = normalizer.is_object() ? normalizer.value("type", "") : "";
  if (type != "Sequence")
    fail("{}: normalizer type \"{}\" is not supported (only null or a Sequence of none)", where, type);
  const nlohmann::json& list = normalizer.contains("normalizers") ? normalizer["normalizers"] : nlohmann::json::array();
  for (size_t i = 0; i < list.size(); ++i)
    check_identity_normalizer(list[i], fmt::format("{}.normalizers[{}]", where, i));
}

// JavaScript's String.prototype.trim set, which the reference applies around lstrip/rstrip tokens.
bool is_js_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

std::string_view trim_start(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t next = pos;
    if (!is_js_whitespace(next_code_point(text, next))) break;
    pos = next;
  }
  return text.substr(pos);
}

std::string_view trim_end(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    size_t pos = start;
    if (!is_js_whitespace(next_code_point(text, pos))) break;
    end = start;
  }
  return text.substr(0, end);
}

// tokenizer_config.json writes a token as "text" or as {"__type": "AddedToken", "content": "text"}.
std::optional<std::string> config_token(const nlohmann::json& config, const char* key, const std::string& where) {
  if (!config.is_object() || !config.contains(key) || config[key].is_null()) return std::nullopt;
  const nlohmann::json& value = config[key];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  fail("{}.{}: expected a string or an object with \"content\"", where, key);
}

}  // namespace

Tokenizer Tokenizer::load(const std::filesystem::path& path) {
  const bool is_dir = std::filesystem::is_directory(path);
  const std::filesystem::path json_path = is_dir ? path / "tokenizer.json" : path;
  const std::filesystem::path config_path = json_path.parent_path() / "tokenizer_config.json";
  if (!std::filesystem::exists(json_path)) fail("{}: no such file", json_path.string());
  const nlohmann::json config = std::filesystem::exists(config_path) ? read_json_file(config_path) : nlohmann::json();
  return from_json(read_json_file(json_path), config, json_path.string());
}

Tokenizer Tokenizer::from_json(const nlohmann::json& json, const nlohmann::json& config, const std::string& source) {
  try {
    return parse(json, config, source);
  } catch (const nlohmann::json::exception& e) {  // a field of the wrong type
    fail("{}: {}", source, e.what());
  }
}

Tokenizer Tokenizer::parse(const nlohmann::json& json, const nlohmann::json& config, const std::string& source) {
  if (!json.is_object()) fail("{}: expected a JSON object", source);
  Tokenizer t;
  t.source_ = source;
  check_identity_normalizer(json.value("normalizer", nlohmann::json()), source + ": normalizer");
  t.pre_tokenizer_ = PreTokenizer::from_json(json.value("pre_tokenizer", nlohmann::json()), source + ": pre_tokenizer");
  if (!json.contains("model")) fail("{}: no \"model\"", source);
  t.model_ = BpeModel::from_json(json["model"], source + ": model");
  const nlohmann::json decoder = json.value("decoder", nlohmann::json());
  if (!decoder.is_object() || decoder.value("type", "") != "ByteLevel")
    fail("{}: decoder: only ByteLevel is supported, got {}", source, decoder.dump());

  t.id_to_bytes_ = t.model_.id_to_bytes();
  const nlohmann::json added = json.value("added_tokens", nlohmann::json::array());
  if (!added.is_array()) fail("{}: added_tokens: expected an array", source);
  for (size_t i = 0; i < added.size(); ++i) {
    const std::string where = fmt::format("{}: added_tokens[{}]", source, i);
    const nlohmann::json& a = added[i];
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
        !a["content"].is_string())
      fail("{}: expected an object with an integer \"id\" and a string \"content\"", where);
    AddedToken token{a["content"].get<std::string>(), 0, a.value("special", false), a.value("lstrip", false),
                     a.value("rstrip", false)};
    const auto id = a["id"].get<int64_t>();
    if (id < 0 || id >= (1 << 30)) fail("{}: id {} out of range", where, id);
    if (token.content.empty() || find_invalid_utf8(token.content)) fail("{}: content must be non-empty UTF-8", where);
    token.id = int32_t(id);
    if (size_t(id) >= t.id_to_bytes_.size()) t.id_to_bytes_.resize(size_t(id) + 1);
    t.id_to_bytes_[size_t(id)] = token.content;
    t.added_tokens_.push_back(std::move(token));
  }

  t.special_.assign(t.id_to_bytes_.size(), false);
  t.trie_token_.assign(1, 0);
  for (size_t i = 0; i < t.added_tokens_.size(); ++i) {
    const AddedToken& token = t.added_tokens_[i];
    if (token.special) t.special_[size_t(token.id)] = true;
    uint32_t node = 0;
    for (char c : token.content) {
      const uint64_t key = (uint64_t(node) << 8) | static_cast<unsigned char>(c);
      const auto [it, inserted] = t.trie_children_.try_emplace(key, uint32_t(t.trie_token_.size()));
      if (inserted) t.trie_token_.push_back(0);
      node = it->second;
    }
    t.trie_token_[node] = uint32_t(i + 1);  // a content listed twice keeps its last entry, like the reference
    t.starts_added_token_[static_cast<unsigned char>(token.content[0])] = true;
  }

  const std::string config_where = source + ": tokenizer_config.json";
  t.bos_token_ = config_token(config, "bos_token", config_where);
  t.eos_token_ = config_token(config, "eos_token", config_where);
  if (config.is_object() && config.contains("chat_template") && config["chat_template"].is_string())
    t.chat_template_ = config["chat_template"].get<std::string>();
  if (t.bos_token_) t.bos_id_ = t.token_id(*t.bos_token_);
  if (t.eos_token_) t.eos_id_ = t.token_id(*t.eos_token_);
  return t;
}

size_t Tokenizer::added_token_at(std::string_view text, size_t pos) const {
  size_t found = 0;
  uint32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto it = trie_children_.find((uint64_t(node) << 8) | static_cast<unsigned char>(text[i]));
    if (it == trie_children_.end()) break;
    node = it->second;
    if (trie_token_[node]) found = trie_token_[node];
  }
  return found;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  encode(text, ids);
  return ids;
}

void Tokenizer::encode(std::string_view text, std::vector<int32_t>& ids) const {
  if (const std::optional<size_t> bad = find_invalid_utf8(text)) fail("text is not valid UTF-8 at byte {}", *bad);
  // Cut out the added tokens first (longest match, left to right), then encode the text between.
  struct Section {
    std::string_view text;
    const AddedToken* token;
  };
  std::vector<Section> sections;
  size_t start = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t found = starts_added_token_[static_cast<unsigned char>(text[pos])] ? added_token_at(text, pos) : 0;
    if (!found) {
      ++pos;
      continue;
    }
    const AddedToken& token = added_tokens_[found - 1];
    if (pos > start) sections.push_back({text.substr(start, pos - start), nullptr});
    sections.push_back({text.substr(pos, token.content.size()), &token});
    pos += token.content.size();
    start = pos;
  }
  if (start < text.size()) sections.push_back({text.substr(start), nullptr});

  for (size_t i = 0; i < sections.size(); ++i) {
    const AddedToken* token = sections[i].token;
    if (!token) continue;
    if (token->lstrip && i > 0 && !sections[i - 1].token) sections[i - 1].text = trim_end(sections[i - 1].text);
    if (token->rstrip && i + 1 < sections.size() && !sections[i + 1].token)
      sections[i + 1].text = trim_start(sections[i + 1].text);
  }
  for (const Section& section : sections) {
    if (section.token) ids.push_back(section.token->id);
    else encode_ordinary(section.text, ids);
  }
}

void Tokenizer::encode_ordinary(std::string_view text, std::vector<int32_t>& ids) const {
  if (text.empty()) return;
  thread_local std::vector<std::string_view> pieces;  // reused, as in PreTokenizer::split
  thread_local BpeModel::Scratch scratch;
  pieces.clear();
  pre_tokenizer_.split(text, pieces);
  for (std::string_view piece : pieces) model_.encode(piece, ids, scratch);
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || size_t(id) >= id_to_bytes_.size() || id_to_bytes_[size_t(id)].empty())
    fail("token id {} is not in the vocabulary of {}", id, source_);
  return id_to_bytes_[size_t(id)];
}

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && size_t(id) < special_.size() && special_[size_t(id)]; }

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    const std::string_view piece = token_bytes(id);
    if (!(skip_special_tokens && is_special(id))) bytes += piece;
  }
  std::string text;
  append_replacing_invalid_utf8(text, bytes, true);
  return text;
}

std::optional<int32_t> Tokenizer::token_id(std::string_view content) const {
  for (const AddedToken& token : added_tokens_)
    if (token.content == content) return token.id;
  return std::nullopt;
}

const std::string& Tokenizer::bos_token() const {
  if (!bos_token_) fail("{}: tokenizer_config.json defines no bos_token", source_);
  return *bos_token_;
}

const std::string& Tokenizer::eos_token() const {
  if (!eos_token_) fail("{}: tokenizer_config.json defines no eos_token", source_);
  return *eos_token_;
}

int32_t Tokenizer::bos_id() const {
  if (!bos_id_) fail("{}: bos_token \"{}\" is not an added token", source_, bos_token());
  return *bos_id_;
}

int32_t Tokenizer::eos_id() const {
  if (!eos_id_) fail("{}: eos_token \"{}\" is not an added token", source_, eos_token());
  return *eos_id_;
}

std::string Tokenizer::apply_chat_template(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  if (!chat_template_) fail("{}: tokenizer_config.json has no chat_template", source_);
  if (*chat_template_ != deepseek_v3_chat_template())
    fail("{}: the chat_template of tokenizer_config.json is not DeepSeek-V3's, the one chat format implemented",
         source_);
  return render_deepseek_v3_chat(messages, bos_token(), add_generation_prompt);
}

std::string StreamingDecoder::push(int32_t id) {
  const std::string_view bytes = tokenizer_.token_bytes(id);
  if (skip_special_tokens_ && tokenizer_.is_special(id)) return {};
  pending_ += bytes;
  std::string text;
  pending_.erase(0, append_replacing_invalid_utf8(text, pending_, false));
  return text;
}

std::string StreamingDecoder::finish() {
  std::string text;
  append_replacing_invalid_utf8(text, pending_, true);
  pending_.clear();
  return text;
}

}  // namespace megamoe
