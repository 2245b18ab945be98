#include "tokenizer/bpe_trainer.h"

#include <algorithm>
#include <queue>

#include "tokenizer/bpe.h"
#include "tokenizer/chat_format.h"
#include "tokenizer/utf8.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace megamoe {
namespace {

struct Word {
  std::vector<int32_t> symbols;
  int64_t count;
};

struct Candidate {
  int64_t count;
  int32_t left, right;
};

// Priority order: the most frequent pair first; among equals the smallest ids, so training is
// deterministic.
bool less_urgent(const Candidate& a, const Candidate& b) {
  if (a.count != b.count) return a.count < b.count;
  return std::pair(a.left, a.right) > std::pair(b.left, b.right);
}

nlohmann::ordered_json config_token(const std::string& content) {
  return {{"__type", "AddedToken"}, {"content", content}, {"lstrip", false},
          {"normalized", true},     {"rstrip", false},    {"single_word", false}};
}

}  // namespace

BpeTrainer::BpeTrainer(BpeTrainingOptions options)
    : options_(std::move(options)),
      pre_tokenizer_(PreTokenizer::from_json(deepseek_v3_pre_tokenizer(), "DeepSeek-V3 pre_tokenizer")) {
  const auto& added = options_.added_tokens;
  if (added.size() < 2) fail("BPE training needs at least the BOS and EOS tokens among the added tokens");
  for (size_t i = 0; i < added.size(); ++i) {
    if (added[i].id != int32_t(i))
      fail("added token \"{}\" has id {}; they must be numbered 0, 1, ...", added[i].content, added[i].id);
    if (added[i].content.empty() || find_invalid_utf8(added[i].content))
      fail("added token {} must be non-empty UTF-8", i);
  }
  const int64_t minimum = int64_t(added.size()) + 256;
  if (options_.vocab_size < minimum)
    fail("vocab size {} is too small: the {} added tokens and the 256 byte tokens need {}", options_.vocab_size,
         added.size(), minimum);
  if (options_.min_frequency < 1) fail("min frequency must be at least 1, got {}", options_.min_frequency);
}

void BpeTrainer::add_text(std::string_view text, const std::string& source) {
  if (const std::optional<size_t> bad = find_invalid_utf8(text)) fail("{}: not valid UTF-8 at byte {}", source, *bad);
  // Added tokens written in the text are cut out, as encoding does, so that no merges are spent on
  // them. next_at[k] is where token k next occurs at or after `pos`.
  const auto& tokens = options_.added_tokens;
  std::vector<size_t> next_at(tokens.size());
  for (size_t k = 0; k < tokens.size(); ++k) next_at[k] = text.find(tokens[k].content);
  std::vector<std::string_view> pieces;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t cut = text.size(), cut_length = 0;
    for (size_t k = 0; k < tokens.size(); ++k) {
      if (next_at[k] < pos) next_at[k] = text.find(tokens[k].content, pos);
      if (next_at[k] < cut || (next_at[k] == cut && cut < text.size() && tokens[k].content.size() > cut_length)) {
        cut = next_at[k];
        cut_length = tokens[k].content.size();
      }
    }
    if (cut > pos) pre_tokenizer_.split(text.substr(pos, cut - pos), pieces);
    pos = cut + cut_length;
  }
  for (std::string_view piece : pieces) ++word_counts_[std::string(piece)];
}

TrainedTokenizer BpeTrainer::train() const {
  // Ids: the added tokens, then the 256 bytes in the order of their spelling, then the merges.
  std::vector<std::string> token_bytes;
  for (const AddedToken& token : options_.added_tokens) token_bytes.push_back(token.content);
  std::vector<int> bytes_by_spelling(256);
  for (int b = 0; b < 256; ++b) bytes_by_spelling[size_t(b)] = b;
  std::sort(bytes_by_spelling.begin(), bytes_by_spelling.end(),
            [](int a, int b) { return byte_level_alphabet()[size_t(a)] < byte_level_alphabet()[size_t(b)]; });
  StringIdMap bytes_to_id;
  std::array<int32_t, 256> byte_ids{};
  for (int b : bytes_by_spelling) {
    byte_ids[size_t(b)] = int32_t(token_bytes.size());
    bytes_to_id.emplace(std::string(1, char(b)), int32_t(token_bytes.size()));
    token_bytes.emplace_back(1, char(b));
  }

  std::vector<Word> words;
  words.reserve(word_counts_.size());
  for (const auto& [text, count] : word_counts_) {
    Word word{{}, count};
    for (char c : text) word.symbols.push_back(byte_ids[static_cast<unsigned char>(c)]);
    words.push_back(std::move(word));
  }
  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<uint32_t>> pair_words;  // words that may hold the pair
  auto note_word = [&](uint64_t key, uint32_t w) {
    std::vector<uint32_t>& list = pair_words[key];
    if (list.empty() || list.back() != w) list.push_back(w);
  };
  for (uint32_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      pair_counts[pair_key(s[i], s[i + 1])] += words[w].count;
      note_word(pair_key(s[i], s[i + 1]), w);
    }
  }
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(&less_urgent)> queue(less_urgent);
  for (const auto& [key, count] : pair_counts)
    if (count >= options_.min_frequency) queue.push({count, int32_t(key >> 32), int32_t(uint32_t(key))});

  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<int32_t> merged_symbols;
  while (int64_t(token_bytes.size()) < options_.vocab_size && !queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    const uint64_t key = pair_key(top.left, top.right);
    const auto count_it = pair_counts.find(key);
    const int64_t count = count_it == pair_counts.end() ? 0 : count_it->second;
    if (count != top.count) {  // stale: the pair lost occurrences to earlier merges
      if (count >= options_.min_frequency) queue.push({count, top.left, top.right});
      continue;
    }
    const std::string bytes = token_bytes[size_t(top.left)] + token_bytes[size_t(top.right)];
    // Two different pairs can spell the same bytes ("ab"+"c", "a"+"bc"): they share one token.
    const auto [id_it, is_new] = bytes_to_id.try_emplace(bytes, int32_t(token_bytes.size()));
    if (is_new) token_bytes.push_back(bytes);
    const int32_t merged = id_it->second;
    merges.emplace_back(top.left, top.right);

    std::vector<uint64_t> new_pairs;
    for (uint32_t w : pair_words[key]) {
      Word& word = words[w];
      merged_symbols.clear();
      const auto& s = word.symbols;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == top.left && s[i + 1] == top.right) {
          merged_symbols.push_back(merged);
          ++i;
        } else {
          merged_symbols.push_back(s[i]);
        }
      }
      if (merged_symbols.size() == s.size()) continue;  // no longer holds the pair
      for (size_t i = 0; i + 1 < s.size(); ++i) pair_counts[pair_key(s[i], s[i + 1])] -= word.count;
      for (size_t i = 0; i + 1 < merged_symbols.size(); ++i) {
        const uint64_t new_key = pair_key(merged_symbols[i], merged_symbols[i + 1]);
        pair_counts[new_key] += word.count;
        if (merged_symbols[i] == merged || merged_symbols[i + 1] == merged) {
          note_word(new_key, w);
          new_pairs.push_back(new_key);
        }
      }
      word.symbols.swap(merged_symbols);
    }
    pair_counts.erase(key);
    pair_words.erase(key);
    std::sort(new_pairs.begin(), new_pairs.end());
    new_pairs.erase(std::unique(new_pairs.begin(), new_pairs.end()), new_pairs.end());
    for (uint64_t new_key : new_pairs)
      if (const int64_t c = pair_counts[new_key]; c >= options_.min_frequency)
        queue.push({c, int32_t(new_key >> 32), int32_t(uint32_t(new_key))});
  }

  const size_t added_count = options_.added_tokens.size();
  auto spelling = [&](int32_t id) {
    return size_t(id) < added_count ? token_bytes[size_t(id)] : byte_level_spelling(token_bytes[size_t(id)]);
  };
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (size_t id = 0; id < token_bytes.size(); ++id) vocab[spelling(int32_t(id))] = id;
  std::vector<std::string> merge_list;
  for (const auto& [left, right] : merges) merge_list.push_back(spelling(left) + " " + spelling(right));

  TrainedTokenizer result;
  result.tokenizer = byte_level_bpe_json(options_.added_tokens, vocab, merge_list);
  const std::string& bos = options_.added_tokens[0].content;
  const std::string& eos = options_.added_tokens[1].content;
  result.config = {{"add_bos_token", true},
                   {"add_eos_token", false},
                   {"bos_token", config_token(bos)},
                   {"clean_up_tokenization_spaces", false},
                   {"eos_token", config_token(eos)},
                   {"legacy", true},
                   {"model_max_length", options_.model_max_length},
                   {"pad_token", config_token(eos)},
                   {"sp_model_kwargs", nlohmann::ordered_json::object()},
                   {"unk_token", nullptr},
                   {"tokenizer_class", "LlamaTokenizerFast"},
                   {"chat_template", deepseek_v3_chat_template()}};
  return result;
}

nlohmann::ordered_json byte_level_bpe_json(const std::vector<AddedToken>& added_tokens,
                                           const nlohmann::ordered_json& vocab,
                                           const std::vector<std::string>& merges) {
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (const AddedToken& token : added_tokens)
    added.push_back({{"id", token.id},
                     {"content", token.content},
                     {"single_word", false},
                     {"lstrip", token.lstrip},
                     {"rstrip", token.rstrip},
                     {"normalized", !token.special},
                     {"special", token.special}});
  const nlohmann::ordered_json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", {{"type", "Sequence"}, {"normalizers", nlohmann::ordered_json::array()}}},
          {"pre_tokenizer", nlohmann::ordered_json::parse(deepseek_v3_pre_tokenizer().dump())},
          {"post_processor", byte_level},
          {"decoder", byte_level},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"vocab", vocab},
            {"merges", merges}}}};
}

TrainedTokenizer train_bpe(std::span<const std::string> texts, const BpeTrainingOptions& options) {
  BpeTrainer trainer(options);
  for (size_t i = 0; i < texts.size(); ++i) trainer.add_text(texts[i], fmt::format("text {}", i));
  return trainer.train();
}

void save_tokenizer(const TrainedTokenizer& trained, const std::filesystem::path& dir) {
  AtomicDirectory out(dir);
  for (const auto& [name, json] :
       {std::pair{"tokenizer.json", &trained.tokenizer}, std::pair{"tokenizer_config.json", &trained.config}}) {
    AtomicFile file(out.path() / name);
    file.write(json->dump(2, ' ', false) + "\n");
    file.commit();
  }
  out.commit();
}

}  // namespace megamoe
