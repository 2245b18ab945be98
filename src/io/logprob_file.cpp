#include "io/logprob_file.h"

#include <bit>
#include <cstring>
#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/text_file.h"

namespace megamoe {
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, "log-prob files are little-endian");

namespace {

constexpr char kMagic[8] = {'M', 'M', 'L', 'O', 'G', 'P', '0', '1'};

nlohmann::json to_json(const LogProbHeader& h) {
  return {{"vocab_size", h.vocab_size},       {"positions", h.positions}, {"text_tokens", h.text_tokens},
          {"tokens_digest", h.tokens_digest}, {"context", h.context},     {"stride", h.stride},
          {"architecture", h.architecture},   {"model", h.model},         {"numerics", h.numerics}};
}

LogProbHeader from_json(const nlohmann::json& j, const fs::path& path) {
  LogProbHeader h;
  try {
    h.vocab_size = j.at("vocab_size").get<int64_t>();
    h.positions = j.at("positions").get<int64_t>();
    h.text_tokens = j.at("text_tokens").get<int64_t>();
    h.tokens_digest = j.at("tokens_digest").get<std::string>();
    h.context = j.at("context").get<int64_t>();
    h.stride = j.at("stride").get<int64_t>();
    h.architecture = j.value("architecture", "");
    h.model = j.value("model", "");
    h.numerics = j.value("numerics", "");
  } catch (const nlohmann::json::exception& e) {
    fail("{}: bad log-prob file header: {}", path.string(), e.what());
  }
  if (h.vocab_size <= 0 || h.positions < 0 || h.text_tokens < 0)
    fail("{}: bad log-prob file header: vocab_size {}, positions {}, text_tokens {}", path.string(), h.vocab_size,
         h.positions, h.text_tokens);
  return h;
}

}  // namespace

std::string token_digest(std::span<const int32_t> tokens) {
  return content_digest(std::string_view(reinterpret_cast<const char*>(tokens.data()), tokens.size_bytes()));
}

LogProbWriter::LogProbWriter(const fs::path& path, const LogProbHeader& header)
    : path_(path), header_(header), file_(path) {
  const std::string text = to_json(header).dump();
  const uint64_t length = text.size();
  file_.write(std::as_bytes(std::span(kMagic)));
  file_.write(std::as_bytes(std::span(&length, 1)));
  file_.write(text);
  targets_.reserve(size_t(header.positions));
}

void LogProbWriter::add(int32_t target, std::span<const float> logprobs) {
  if (int64_t(logprobs.size()) != header_.vocab_size || int64_t(targets_.size()) >= header_.positions)
    fail("{}: row {} of {} log-probs does not fit the header ({} rows of {})", path_.string(), targets_.size(),
         logprobs.size(), header_.positions, header_.vocab_size);
  file_.write(std::as_bytes(logprobs));
  targets_.push_back(target);
}

void LogProbWriter::commit() {
  if (int64_t(targets_.size()) != header_.positions)
    fail("{}: {} rows written of {}", path_.string(), targets_.size(), header_.positions);
  file_.write(std::as_bytes(std::span(targets_)));
  file_.commit();
}

LogProbReader::LogProbReader(const fs::path& path) : path_(path) {
  file_ = std::fopen(path.c_str(), "rb");
  if (!file_) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  char magic[8];
  uint64_t length = 0;
  if (std::fread(magic, 1, 8, file_) != 8 || std::memcmp(magic, kMagic, 8) != 0 ||
      std::fread(&length, 8, 1, file_) != 1 || length > (1 << 20))
    fail("{}: not a log-prob file (megamoe perplexity --kld-base writes them)", path.string());
  std::string text(length, '\0');
  if (std::fread(text.data(), 1, length, file_) != length) fail("{}: log-prob file header is cut short", path.string());
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) fail("{}: log-prob file header is not a JSON object", path.string());
  header_ = from_json(json, path);
  const uint64_t rows_begin = 16 + length;
  const uint64_t expected = rows_begin + uint64_t(header_.positions) * uint64_t(header_.vocab_size + 1) * 4;
  std::error_code error;
  const uint64_t size = fs::file_size(path, error);
  if (error || size != expected)
    fail("{}: {} bytes where its header ({} positions of {} log-probs) needs {}", path.string(), size,
         header_.positions, header_.vocab_size, expected);
  targets_.resize(size_t(header_.positions));
  if (std::fseek(file_, long(expected - uint64_t(header_.positions) * 4), SEEK_SET) != 0 ||
      std::fread(targets_.data(), 4, targets_.size(), file_) != targets_.size() ||
      std::fseek(file_, long(rows_begin), SEEK_SET) != 0)
    fail("{}: cannot read its targets", path.string());
  for (size_t i = 0; i < targets_.size(); ++i)
    if (targets_[i] < 0 || targets_[i] >= header_.vocab_size)
      fail("{}: target {} of row {} is outside the vocabulary of {}", path.string(), targets_[i], i,
           header_.vocab_size);
}

LogProbReader::~LogProbReader() {
  if (file_) std::fclose(file_);
}

void LogProbReader::next_row(std::span<float> logprobs) {
  if (int64_t(logprobs.size()) != header_.vocab_size || rows_read_ >= header_.positions ||
      std::fread(logprobs.data(), 4, logprobs.size(), file_) != logprobs.size())
    fail("{}: cannot read row {} of {}", path_.string(), rows_read_, header_.positions);
  ++rows_read_;
}

}  // namespace megamoe
