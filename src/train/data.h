// Training data: text files tokenized once into a token file, split into training and validation
// parts, read as windows of seq_len + 1 tokens.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "util/text_file.h"

namespace megamoe {
class SafetensorsFile;
}  // namespace megamoe

namespace megamoe::train {

// The files of --data: the file itself, or every regular file under the directory (recursively,
// hidden ones skipped) in name order. Error naming the path when it is missing or holds no files.
std::vector<std::filesystem::path> list_data_files(const std::filesystem::path& data);

// A digest of the files' names (relative to `data`), sizes and contents: equal digests, same text.
std::string data_fingerprint(const std::filesystem::path& data, std::span<const std::filesystem::path> files);

// The token file of a run: one I32 tensor "tokens" in a safetensors file, every document's ids
// after a BOS token, with metadata naming the text and the tokenizer that made it.
class TokenFile {
 public:
  // Opens `path` if it exists and was made from `data_digest` with `tokenizer_digest`; otherwise
  // tokenizes `files` with `tokenizer` and writes it (atomically) first. Progress on stderr.
  static TokenFile prepare(const std::filesystem::path& path, std::span<const std::filesystem::path> files,
                           const std::string& data_digest, const Tokenizer& tokenizer,
                           const std::string& tokenizer_digest);
  ~TokenFile();
  TokenFile(TokenFile&&) noexcept;

  std::span<const int32_t> tokens() const { return tokens_; }
  const std::filesystem::path& path() const { return path_; }
  bool reused() const { return reused_; }

 private:
  TokenFile() = default;
  std::filesystem::path path_;
  std::unique_ptr<SafetensorsFile> file_;
  std::span<const int32_t> tokens_;
  bool reused_ = false;
};

// The last `validation_fraction` of the tokens (at least seq_len + 1 when the fraction is not 0)
// validate; the rest trains. Error naming `source` when either part is too short for one window.
struct DataSplit {
  std::span<const int32_t> train, validation;
};
DataSplit split_tokens(std::span<const int32_t> tokens, double validation_fraction, int64_t seq_len,
                       const std::string& source);

// Windows of seq_len + 1 tokens starting every seq_len tokens (inputs, and targets one later),
// read in order and round again (llm.c's data loader): the position is a plain window count.
class WindowReader {
 public:
  WindowReader(std::span<const int32_t> tokens, int64_t seq_len);
  int64_t windows() const { return windows_; }
  // rows [count, seq_len + 1] = windows first, first + 1, ... (modulo windows()).
  void read(int32_t* rows, int64_t first, int64_t count) const;

 private:
  std::span<const int32_t> tokens_;
  int64_t seq_len_, windows_;
};

}  // namespace megamoe::train
