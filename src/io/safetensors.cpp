#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <tuple>

#include "util/atomic_file.h"
#include "util/error.h"
#include "util/huge_pages.h"
#include "util/progress.h"

namespace megamoe {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The reference implementation refuses headers above 100 MB; a real one is a few MB at most.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// numel * element size, or nullopt when a dimension is negative or the product overflows.
std::optional<uint64_t> byte_count(std::span<const int64_t> shape, DType dtype) {
  uint64_t bytes = dtype_size(dtype);
  for (int64_t dim : shape)
    if (dim < 0 || __builtin_mul_overflow(bytes, uint64_t(dim), &bytes)) return std::nullopt;
  return bytes;
}

std::map<std::string, std::string> parse_metadata(const json& entry, const fs::path& path) {
  if (!entry.is_object()) fail("{}: __metadata__ is not a JSON object", path.string());
  std::map<std::string, std::string> metadata;
  for (const auto& [key, value] : entry.items()) {
    if (!value.is_string()) fail("{}: __metadata__ value of \"{}\" is not a string", path.string(), key);
    metadata[key] = value.get<std::string>();
  }
  return metadata;
}

// One header entry; data offsets are checked against `data_bytes`, relative to `data`.
TensorInfo parse_tensor(const std::string& name, const json& entry, const std::byte* data, uint64_t data_bytes,
                        const fs::path& path) {
  const auto bad = [&](std::string_view what) {
    return Error(fmt::format("{}: tensor \"{}\": {}", path.string(), name, what));
  };
  if (!entry.is_object()) throw bad("entry is not a JSON object");
  const auto dtype_field = entry.find("dtype");
  const auto shape_field = entry.find("shape");
  const auto offsets_field = entry.find("data_offsets");
  if (dtype_field == entry.end() || !dtype_field->is_string()) throw bad("\"dtype\" missing or not a string");
  if (shape_field == entry.end() || !shape_field->is_array()) throw bad("\"shape\" missing or not an array");
  if (offsets_field == entry.end() || !offsets_field->is_array() || offsets_field->size() != 2)
    throw bad("\"data_offsets\" missing or not [begin, end]");

  TensorInfo info{
      .name = name, .dtype = DType::F32, .shape = {}, .data = nullptr, .nbytes = 0, .file = &path, .stored_as = {}};
  const auto dtype = dtype_from_name(dtype_field->get<std::string>());
  if (!dtype) throw bad(fmt::format("unknown dtype \"{}\"", dtype_field->get<std::string>()));
  info.dtype = *dtype;
  for (const json& dim : *shape_field) {
    if (!dim.is_number_integer()) throw bad("shape holds a value that is not an integer");
    if (dim.is_number_unsigned() ? dim.get<uint64_t>() > uint64_t(INT64_MAX) : dim.get<int64_t>() < 0)
      throw bad("shape holds a negative or huge dimension");
    info.shape.push_back(dim.get<int64_t>());
  }
  const json& begin = (*offsets_field)[0];
  const json& end = (*offsets_field)[1];
  if (!begin.is_number_unsigned() || !end.is_number_unsigned()) throw bad("data_offsets are not non-negative integers");
  const uint64_t first = begin.get<uint64_t>(), last = end.get<uint64_t>();
  if (first > last) throw bad("data_offsets begin after they end");
  if (last > data_bytes) throw bad(fmt::format("data_offsets reach past the end of the data ({} bytes)", data_bytes));
  const auto expected = byte_count(info.shape, info.dtype);
  if (!expected || *expected != last - first)
    throw bad(fmt::format("holds {} bytes but its dtype and shape need {}", last - first,
                          expected ? fmt::format("{}", *expected) : std::string("more than 2^64")));
  info.data = data + first;
  info.nbytes = size_t(last - first);
  return info;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

std::string TensorInfo::shape_string() const { return fmt::format("[{}]", fmt::join(shape, ", ")); }

std::string TensorInfo::label() const {
  return stored_as.empty() ? name : fmt::format("{} ({} in the file)", name, stored_as);
}

SafetensorsFile::~SafetensorsFile() = default;

std::span<const std::byte> SafetensorsFile::bytes() const { return {bytes_->data(), bytes_->size()}; }

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const fs::path& path, Residency residency) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->bytes_ = std::make_unique<FileBytes>(path, residency);
  const std::byte* bytes = file->bytes_->data();
  const uint64_t size = file->bytes_->size();
  if (size < 8) fail("{}: {} bytes is too short for a safetensors file", path.string(), size);

  uint64_t header_bytes = 0;
  for (int i = 0; i < 8; ++i) header_bytes |= uint64_t(bytes[i]) << (8 * i);  // little-endian
  if (header_bytes > size - 8 || header_bytes > kMaxHeaderBytes)
    fail("{}: header length {} does not fit in the file of {} bytes (truncated or not safetensors?)", path.string(),
         header_bytes, size);

  const auto* header_text = reinterpret_cast<const char*>(bytes + 8);
  json header;
  try {
    header = json::parse(header_text, header_text + header_bytes);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON: {}", path.string(), e.what());
  }
  if (!header.is_object()) fail("{}: header is not a JSON object", path.string());

  const std::byte* data = bytes + 8 + header_bytes;
  const uint64_t data_bytes = size - 8 - header_bytes;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") file->metadata_ = parse_metadata(entry, file->path_);
    else file->tensors_.push_back(parse_tensor(name, entry, data, data_bytes, file->path_));
  }

  // Kept in file order, which also makes overlaps show between neighbours.
  auto& tensors = file->tensors_;
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.data, a.nbytes) < std::tie(b.data, b.nbytes);
  });
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (i > 0 && tensors[i].data < tensors[i - 1].data + tensors[i - 1].nbytes)
      fail("{}: tensors \"{}\" and \"{}\" overlap", path.string(), tensors[i - 1].name, tensors[i].name);
    file->index_[tensors[i].name] = i;
  }
  return file;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void write_safetensors(const fs::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Assembled entry by entry to keep the caller's order (json objects sort their keys).
  std::string header_text = "{";
  if (!metadata.empty()) header_text += R"("__metadata__":)" + json(metadata).dump() + ",";
  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const TensorToWrite& tensor : tensors) {
    if (tensor.name.empty() || tensor.name == "__metadata__" || !names.insert(tensor.name).second)
      fail("{}: tensor name \"{}\" is empty, reserved or repeated", path.string(), tensor.name);
    const auto bytes = byte_count(tensor.shape, tensor.dtype);
    if (!bytes) fail("{}: tensor \"{}\" has a negative or huge shape", path.string(), tensor.name);
    if (!tensor.fill && *bytes > 0) fail("{}: tensor \"{}\" has nothing to fill it", path.string(), tensor.name);
    const nlohmann::ordered_json entry = {
        {"dtype", dtype_name(tensor.dtype)}, {"shape", tensor.shape}, {"data_offsets", {offset, offset + *bytes}}};
    header_text += json(tensor.name).dump() + ":" + entry.dump() + ",";
    offset += *bytes;
  }
  if (header_text.size() > 1) header_text.pop_back();  // the last comma
  header_text += "}";
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // data starts 8-byte aligned

  AtomicFile out(path);
  std::array<std::byte, 8> length;
  for (int i = 0; i < 8; ++i) length[i] = std::byte(header_text.size() >> (8 * i));
  out.write(length);
  out.write(header_text);
  std::vector<std::byte> buffer;  // reused: holds one tensor at a time
  for (const TensorToWrite& tensor : tensors) {
    buffer.resize(*byte_count(tensor.shape, tensor.dtype));
    if (buffer.empty()) continue;  // nothing to fill; also keeps a null pointer away from `fill`
    tensor.fill(buffer.data());
    out.write(buffer);
  }
  out.commit();
}

}  // namespace megamoe
