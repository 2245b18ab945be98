// Log-prob files of `megamoe perplexity --kld-base`: the full-vocabulary log-probabilities of every
// position a perplexity run scored, for `--kld` to compare another run against (another weight
// format, numerics mode or model over the same vocabulary and text). Layout: the 8 bytes "MMLOGP01",
// a little-endian uint64 length, a JSON header (LogProbHeader), then float32 log-probs [positions,
// vocab_size] in C order and int32 targets [positions]: 4 x (vocab_size + 1) bytes per position.
#pragma once
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "util/atomic_file.h"

namespace megamoe {

struct LogProbHeader {
  int64_t vocab_size = 0;
  int64_t positions = 0;      // scored positions: rows of the file
  int64_t text_tokens = 0;    // tokens of the text the run scored
  std::string tokens_digest;  // token_digest of those tokens
  int64_t context = 0, stride = 0;
  std::string architecture, model, numerics;  // what made it (information; not compared)
};

// content_digest of token ids as little-endian int32: equal digests, same text and tokenizer.
std::string token_digest(std::span<const int32_t> tokens);

// Writes `path` whole or not at all: the rows in order, then commit().
class LogProbWriter {
 public:
  LogProbWriter(const std::filesystem::path& path, const LogProbHeader& header);
  // One scored position: its target token and log-probs [vocab_size].
  void add(int32_t target, std::span<const float> logprobs);
  void commit();  // fails unless header.positions rows were added

 private:
  std::filesystem::path path_;
  LogProbHeader header_;
  AtomicFile file_;
  std::vector<int32_t> targets_;  // written after the rows
};

// Reads the rows in order; the header is checked against the file's size when it opens.
class LogProbReader {
 public:
  explicit LogProbReader(const std::filesystem::path& path);
  ~LogProbReader();
  LogProbReader(const LogProbReader&) = delete;
  LogProbReader& operator=(const LogProbReader&) = delete;

  const LogProbHeader& header() const { return header_; }
  const std::filesystem::path& path() const { return path_; }
  // Row `i` (in order, from 0): its target and log-probs [vocab_size].
  int32_t target(int64_t i) const { return targets_[size_t(i)]; }
  // The next row's log-probs [vocab_size].
  void next_row(std::span<float> logprobs);

 private:
  std::filesystem::path path_;
  LogProbHeader header_;
  std::vector<int32_t> targets_;
  std::FILE* file_ = nullptr;
  int64_t rows_read_ = 0;
};

}  // namespace megamoe
