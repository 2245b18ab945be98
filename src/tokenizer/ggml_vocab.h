// A tokenizer as llama.cpp's GGUF files carry it (the tokenizer.ggml.* keys; docs/gguf.md#tokenizer)
// and the Hugging Face tokenizer.json it stands for: byte-level BPE with DeepSeek-V3's
// pre-tokenizer ("deepseek-v3"), each token by id with its type, the merges, the special ids.
// Converting one way and back keeps every id (tests/unit/test_ggml_vocab.cpp).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace megamoe {

// llama.cpp's token types (llama_token_type).
enum class GgmlTokenType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct GgmlVocab {
  std::string model = "gpt2";            // tokenizer.ggml.model: byte-level BPE
  std::string pre = "deepseek-v3";       // tokenizer.ggml.pre: the pre-tokenizer's name
  std::vector<std::string> tokens;       // tokenizer.ggml.tokens, by id (byte-level spellings)
  std::vector<int32_t> types;            // tokenizer.ggml.token_type, by id (GgmlTokenType)
  std::vector<std::string> merges;       // tokenizer.ggml.merges: "left right"
  std::optional<int64_t> bos, eos, pad;  // tokenizer.ggml.{bos,eos,padding}_token_id
  bool add_bos = false;                  // tokenizer.ggml.add_bos_token
  std::string chat_template;             // tokenizer.chat_template ("" when none)
};

// tokenizer.json and tokenizer_config.json (as Tokenizer::from_json takes them) of `vocab`. Fails
// naming `source` and the key at fault: a model other than gpt2, an unknown pre-tokenizer, type and
// token lists of different lengths, a special id outside the tokens.
std::pair<nlohmann::ordered_json, nlohmann::ordered_json> hf_tokenizer_from_ggml(const GgmlVocab& vocab,
                                                                                 const std::string& source);
// The GGUF form of a tokenizer.json (and its tokenizer_config.json, may be null), as llama.cpp's
// converter writes it: ids missing from both the vocabulary and the added tokens become unused
// "[PAD<id>]" tokens, and so do the ids up to `min_tokens` (a model's vocab_size beyond its
// tokenizer's); added tokens are control tokens when special, user-defined otherwise.
GgmlVocab ggml_vocab_from_hf(const nlohmann::json& tokenizer, const nlohmann::json& config, const std::string& source,
                             int64_t min_tokens = 0);

}  // namespace megamoe
