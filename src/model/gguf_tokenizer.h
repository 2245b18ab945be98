// Tokenizers in GGUF files (docs/gguf.md#tokenizer): the tokenizer.ggml.* keys read into a
// GgmlVocab and written from one, and one loader for every place a tokenizer comes from.
#pragma once
#include <filesystem>
#include <vector>

#include "io/gguf.h"
#include "tokenizer/ggml_vocab.h"
#include "tokenizer/tokenizer.h"

namespace megamoe {

// The tokenizer a GGUF file carries; fails naming the file and key when one is missing or mistyped.
GgmlVocab read_ggml_vocab(const GgufFile& file);
// The metadata entries that carry `vocab` in a GGUF file.
std::vector<GgufKeyValue> ggml_vocab_metadata(const GgmlVocab& vocab);

// A tokenizer from a tokenizer.json (or the directory holding it, with its tokenizer_config.json)
// or from a GGUF file's metadata.
Tokenizer load_tokenizer(const std::filesystem::path& path);

}  // namespace megamoe
