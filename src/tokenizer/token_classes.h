// DeepSeek-V4.1's Engram token map (docs/deepseek-v41.md#engram): tokens whose text differs only in case,
// accents, Unicode compatibility form or surrounding whitespace share one class, so that their
// n-grams share table rows.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace megamoe {

// NFKC, then NFD, combining marks dropped, each character lowercased alone, each run of spaces,
// tabs and newlines made one space, then Unicode White_Space stripped at both ends (unless the
// text is exactly one space).
std::string engram_normalize(std::string_view text);

struct TokenClasses {
  std::vector<int32_t> of_token;  // [tokenizer vocab size]
  int64_t count = 0;
};

// Each id decoded alone (special tokens kept) and keyed by its normalized text (the text itself where
// that is empty; the vocabulary spelling where the decode is not valid UTF-8); classes numbered in the
// order of their first token.
TokenClasses engram_token_classes(const Tokenizer& tokenizer);

}  // namespace megamoe
