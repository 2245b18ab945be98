#include "train/data.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>

#include "io/safetensors.h"
#include "util/error.h"
#include "util/progress.h"

namespace megamoe::train {
namespace fs = std::filesystem;

std::vector<fs::path> list_data_files(const fs::path& data) {
  std::error_code ec;
  const fs::file_status status = fs::status(data, ec);
  if (!fs::exists(status)) fail("--data {}: no such file or directory", data.string());
  if (fs::is_regular_file(status)) return {data};
  if (!fs::is_directory(status)) fail("--data {}: not a file or directory", data.string());
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(data, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const bool hidden = it->path().filename().string().starts_with(".");
    if (hidden && it->is_directory()) it.disable_recursion_pending();
    if (!hidden && it->is_regular_file()) files.push_back(it->path());
  }
  if (ec) fail("--data {}: cannot list: {}", data.string(), ec.message());
  if (files.empty()) fail("--data {}: the directory holds no files to train on", data.string());
  std::sort(files.begin(), files.end());
  return files;
}

std::string data_fingerprint(const fs::path& data, std::span<const fs::path> files) {
  std::string listing;  // name, then the digest of the content, per file
  for (const fs::path& file : files) {
    listing += fs::is_directory(data) ? fs::relative(file, data).generic_string() : file.filename().string();
    listing += '\0' + content_digest(read_text_file(file)) + '\0';
  }
  return content_digest(listing);
}

TokenFile::~TokenFile() = default;
TokenFile::TokenFile(TokenFile&&) noexcept = default;

TokenFile TokenFile::prepare(const fs::path& path, std::span<const fs::path> files, const std::string& data_digest,
                             const Tokenizer& tokenizer, const std::string& tokenizer_digest) {
  const std::map<std::string, std::string> metadata{{"data", data_digest}, {"tokenizer", tokenizer_digest}};
  TokenFile out;
  out.path_ = path;
  std::error_code ec;
  if (fs::exists(path, ec)) {
    // An unreadable or stale file is simply made again.
    try {
      auto file = SafetensorsFile::open(path);
      const TensorInfo* tokens = file->find("tokens");
      if (file->metadata() == metadata && tokens && tokens->dtype == DType::I32 && tokens->shape.size() == 1) {
        out.tokens_ = {reinterpret_cast<const int32_t*>(tokens->data), size_t(tokens->shape[0])};
        out.file_ = std::move(file);
        out.reused_ = true;
        return out;
      }
    } catch (const Error&) {
    }
  }

  std::optional<int32_t> bos;
  try {
    bos = tokenizer.bos_id();
  } catch (const Error&) {  // a tokenizer without BOS: documents simply follow each other
  }
  int64_t total_bytes = 0;
  for (const fs::path& file : files) total_bytes += int64_t(fs::file_size(file, ec));
  std::vector<int32_t> ids;
  {
    Progress progress("tokenizing", total_bytes, "bytes");
    int64_t done_bytes = 0;
    for (const fs::path& file : files) {
      const std::string text = read_text_file(file);
      done_bytes += int64_t(text.size());
      if (text.empty()) continue;
      if (bos) ids.push_back(*bos);
      try {
        tokenizer.encode(text, ids);
      } catch (const Error& e) {
        rethrow_with_context(file.string(), e);
      }
      progress.update(done_bytes, fmt::format("{} tokens", ids.size()));
    }
    progress.finish(fmt::format("{} tokens", ids.size()));
  }
  if (ids.empty()) fail("--data: no text to train on (every file is empty)");
  fs::create_directories(path.parent_path(), ec);
  write_safetensors(path,
                    {{"tokens",
                      DType::I32,
                      {int64_t(ids.size())},
                      [&](std::byte* dst) { std::memcpy(dst, ids.data(), ids.size() * sizeof(int32_t)); }}},
                    metadata);
  out.file_ = SafetensorsFile::open(path);
  const TensorInfo* tokens = out.file_->find("tokens");
  out.tokens_ = {reinterpret_cast<const int32_t*>(tokens->data), size_t(tokens->shape[0])};
  return out;
}

DataSplit split_tokens(std::span<const int32_t> tokens, double validation_fraction, int64_t seq_len,
                       const std::string& source) {
  const int64_t n = int64_t(tokens.size()), window = seq_len + 1;
  int64_t validation = 0;
  if (validation_fraction > 0) validation = std::max(window, int64_t(std::ceil(validation_fraction * double(n))));
  if (n - validation < window)
    fail("{}: {} tokens are too few for --seq-len {}: training needs at least {} tokens{}", source, n, seq_len, window,
         validation ? fmt::format(" after {} for validation (--val-fraction)", validation) : "");
  return {tokens.subspan(0, size_t(n - validation)), tokens.subspan(size_t(n - validation))};
}

WindowReader::WindowReader(std::span<const int32_t> tokens, int64_t seq_len)
    : tokens_(tokens), seq_len_(seq_len), windows_(tokens.empty() ? 0 : (int64_t(tokens.size()) - 1) / seq_len) {}

void WindowReader::read(int32_t* rows, int64_t first, int64_t count) const {
  for (int64_t r = 0; r < count; ++r) {
    const int64_t window = (first + r) % windows_;
    std::copy_n(tokens_.data() + window * seq_len_, seq_len_ + 1, rows + r * (seq_len_ + 1));
  }
}

}  // namespace megamoe::train
