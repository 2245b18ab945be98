// Learning a byte-level BPE tokenizer from text, in DeepSeek-V3's format: its pre-tokenizer, its
// special tokens and chat template, so that the result loads in megamoe and in the reference.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace megamoe {

struct BpeTrainingOptions {
  int32_t vocab_size = 0;     // the whole vocabulary: added tokens, the 256 bytes and the merges
  int64_t min_frequency = 2;  // pairs seen fewer times are never merged (the vocabulary may end smaller)
  // Given ids 0, 1, ... in this order. DeepSeek-V3's: BOS and EOS (special), then its chat roles.
  std::vector<AddedToken> added_tokens = {
      {"<｜begin▁of▁sentence｜>", 0, true, false, false},
      {"<｜end▁of▁sentence｜>", 1, true, false, false},
      {"<｜User｜>", 2, false, false, false},
      {"<｜Assistant｜>", 3, false, false, false},
  };
  int64_t model_max_length = 131072;  // written to tokenizer_config.json
};

struct TrainedTokenizer {
  nlohmann::ordered_json tokenizer;  // tokenizer.json
  nlohmann::ordered_json config;     // tokenizer_config.json
};

// Counts the pre-tokenized words of the training text, then learns the merges.
class BpeTrainer {
 public:
  explicit BpeTrainer(BpeTrainingOptions options);
  // Adds one text (UTF-8; Error naming `source` and the byte offset otherwise).
  void add_text(std::string_view text, const std::string& source);
  // Repeatedly merges the most frequent adjacent pair (ties: the smallest token ids) until the
  // vocabulary is full or no pair reaches min_frequency.
  TrainedTokenizer train() const;

 private:
  BpeTrainingOptions options_;
  PreTokenizer pre_tokenizer_;
  std::unordered_map<std::string, int64_t> word_counts_;
};

TrainedTokenizer train_bpe(std::span<const std::string> texts, const BpeTrainingOptions& options);

// A byte-level BPE tokenizer.json with DeepSeek-V3's pre-tokenizer: the format megamoe writes
// (training, and GGUF tokenizers read back). `vocab` maps byte-level spellings to ids.
nlohmann::ordered_json byte_level_bpe_json(const std::vector<AddedToken>& added_tokens,
                                           const nlohmann::ordered_json& vocab, const std::vector<std::string>& merges);

// Writes tokenizer.json and tokenizer_config.json into `dir`, which appears whole or not at all.
void save_tokenizer(const TrainedTokenizer& trained, const std::filesystem::path& dir);

}  // namespace megamoe
