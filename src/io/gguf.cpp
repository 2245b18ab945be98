#include "io/gguf.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "util/atomic_file.h"
#include "util/error.h"

namespace megamoe {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr uint32_t kVersion = 3;
constexpr uint32_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;                  // GGML_MAX_DIMS
constexpr uint64_t kMaxNameBytes = 4096;          // keys and tensor names (llama.cpp: 64 for names)
constexpr uint64_t kMaxStringBytes = 1ull << 28;  // one metadata string (a chat template is kilobytes)

struct TypeRow {
  uint32_t type;
  GgmlTypeInfo info;
};
// ggml.h's ggml_type and each type's block (ggml-common.h's block structs).
constexpr TypeRow kTypes[] = {
    {0, {"F32", 1, 4}},         {1, {"F16", 1, 2}},         {2, {"Q4_0", 32, 18}},      {3, {"Q4_1", 32, 20}},
    {6, {"Q5_0", 32, 22}},      {7, {"Q5_1", 32, 24}},      {8, {"Q8_0", 32, 34}},      {9, {"Q8_1", 32, 36}},
    {10, {"Q2_K", 256, 84}},    {11, {"Q3_K", 256, 110}},   {12, {"Q4_K", 256, 144}},   {13, {"Q5_K", 256, 176}},
    {14, {"Q6_K", 256, 210}},   {15, {"Q8_K", 256, 292}},   {16, {"IQ2_XXS", 256, 66}}, {17, {"IQ2_XS", 256, 74}},
    {18, {"IQ3_XXS", 256, 98}}, {19, {"IQ1_S", 256, 50}},   {20, {"IQ4_NL", 32, 18}},   {21, {"IQ3_S", 256, 110}},
    {22, {"IQ2_S", 256, 82}},   {23, {"IQ4_XS", 256, 136}}, {24, {"I8", 1, 1}},         {25, {"I16", 1, 2}},
    {26, {"I32", 1, 4}},        {27, {"I64", 1, 8}},        {28, {"F64", 1, 8}},        {29, {"IQ1_M", 256, 56}},
    {30, {"BF16", 1, 2}},       {34, {"TQ1_0", 256, 54}},   {35, {"TQ2_0", 256, 66}},   {39, {"MXFP4", 32, 17}},
};

// Fixed-size value types and their bytes; 0 for strings and arrays.
uint64_t value_bytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::U8:
    case GgufValueType::I8:
    case GgufValueType::Bool:
      return 1;
    case GgufValueType::U16:
    case GgufValueType::I16:
      return 2;
    case GgufValueType::U32:
    case GgufValueType::I32:
    case GgufValueType::F32:
      return 4;
    case GgufValueType::U64:
    case GgufValueType::I64:
    case GgufValueType::F64:
      return 8;
    case GgufValueType::String:
    case GgufValueType::Array:
      return 0;
  }
  return 0;
}

bool is_value_type(uint32_t type) { return type <= uint32_t(GgufValueType::F64); }

// Reads the header front to back; every read is checked against the bytes left.
class Cursor {
 public:
  Cursor(std::span<const std::byte> bytes, const fs::path& path) : bytes_(bytes), path_(path) {}

  uint64_t left() const { return bytes_.size() - pos_; }
  uint64_t position() const { return pos_; }

  template <class T>
  T read(const std::string& what) {
    if (left() < sizeof(T))
      fail("{}: {} runs past the end of the file (the header is truncated)", path_.string(), what);
    T value;
    std::memcpy(&value, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string string(const std::string& what, uint64_t limit) {
    const uint64_t length = read<uint64_t>(what + "'s length");
    if (length > limit) fail("{}: {} is {} bytes long, more than the {} allowed", path_.string(), what, length, limit);
    if (length > left()) fail("{}: {} ({} bytes) runs past the end of the file", path_.string(), what, length);
    std::string text(reinterpret_cast<const char*>(bytes_.data() + pos_), size_t(length));
    pos_ += length;
    return text;
  }

  json value(GgufValueType type, const std::string& what) {
    switch (type) {
      case GgufValueType::U8:
        return read<uint8_t>(what);
      case GgufValueType::I8:
        return read<int8_t>(what);
      case GgufValueType::U16:
        return read<uint16_t>(what);
      case GgufValueType::I16:
        return read<int16_t>(what);
      case GgufValueType::U32:
        return read<uint32_t>(what);
      case GgufValueType::I32:
        return read<int32_t>(what);
      case GgufValueType::F32:
        return read<float>(what);
      case GgufValueType::Bool: {
        const uint8_t b = read<uint8_t>(what);
        if (b > 1) fail("{}: {} is a bool of value {}, not 0 or 1", path_.string(), what, b);
        return b == 1;
      }
      case GgufValueType::String:
        return string(what, kMaxStringBytes);
      case GgufValueType::U64:
        return read<uint64_t>(what);
      case GgufValueType::I64:
        return read<int64_t>(what);
      case GgufValueType::F64:
        return read<double>(what);
      case GgufValueType::Array:
        break;
    }
    fail("{}: {}: arrays are read by array()", path_.string(), what);
  }

  // An array's element type, count and values; `depth` limits arrays of arrays.
  json array(GgufValueType* element, const std::string& what, int depth) {
    const uint32_t type = read<uint32_t>(what + "'s element type");
    if (!is_value_type(type)) fail("{}: {} has elements of unknown type {}", path_.string(), what, type);
    *element = GgufValueType(type);
    const uint64_t count = read<uint64_t>(what + "'s length");
    // The smallest encoding of each element must fit in what is left, before anything is allocated.
    const uint64_t smallest = *element == GgufValueType::String  ? 8
                              : *element == GgufValueType::Array ? 12
                                                                 : value_bytes(*element);
    if (count > left() / smallest)
      fail("{}: {} claims {} elements, more than the {} bytes left in the file hold", path_.string(), what, count,
           left());
    if (*element == GgufValueType::Array && depth >= 1)
      fail("{}: {} nests arrays more than two deep", path_.string(), what);
    json values = json::array();
    for (uint64_t i = 0; i < count; ++i) {
      const std::string at = fmt::format("{}[{}]", what, i);
      if (*element == GgufValueType::Array) {
        GgufValueType inner;
        values.push_back(array(&inner, at, depth + 1));
      } else {
        values.push_back(value(*element, at));
      }
    }
    return values;
  }

 private:
  std::span<const std::byte> bytes_;
  const fs::path& path_;
  uint64_t pos_ = 0;
};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// Bytes of a tensor of `type` and `shape`; fails naming it when rows do not fill whole blocks or
// the size overflows.
uint64_t tensor_bytes(const std::string& name, uint32_t type, const std::vector<int64_t>& shape, const fs::path& path) {
  const std::optional<GgmlTypeInfo> info = ggml_type_info(type);
  if (!info) fail("{}: tensor {} has unknown ggml type {}", path.string(), name, type);
  const int64_t row = shape.empty() ? 1 : shape.back();
  if (row % info->block_elements != 0)
    fail("{}: tensor {} {} of type {}: rows of {} values are not whole blocks of {}", path.string(), name,
         shape_text(shape), info->name, row, info->block_elements);
  uint64_t bytes = uint64_t(row / info->block_elements) * uint64_t(info->block_bytes);
  for (size_t d = 0; d + 1 < shape.size(); ++d)
    if (__builtin_mul_overflow(bytes, uint64_t(shape[d]), &bytes))
      fail("{}: tensor {} {} is too large", path.string(), name, shape_text(shape));
  return bytes;
}

void put(std::string& out, const void* value, size_t bytes) { out.append(static_cast<const char*>(value), bytes); }
template <class T>
void put(std::string& out, T value) {
  put(out, &value, sizeof(T));
}
void put_string(std::string& out, const std::string& text) {
  put<uint64_t>(out, text.size());
  out += text;
}

void put_value(std::string& out, GgufValueType type, const json& value, const std::string& key) {
  try {
    switch (type) {
      case GgufValueType::U8:
        return put(out, value.get<uint8_t>());
      case GgufValueType::I8:
        return put(out, value.get<int8_t>());
      case GgufValueType::U16:
        return put(out, value.get<uint16_t>());
      case GgufValueType::I16:
        return put(out, value.get<int16_t>());
      case GgufValueType::U32:
        return put(out, value.get<uint32_t>());
      case GgufValueType::I32:
        return put(out, value.get<int32_t>());
      case GgufValueType::F32:
        return put(out, value.get<float>());
      case GgufValueType::Bool:
        return put(out, uint8_t(value.get<bool>()));
      case GgufValueType::String:
        return put_string(out, value.get<std::string>());
      case GgufValueType::U64:
        return put(out, value.get<uint64_t>());
      case GgufValueType::I64:
        return put(out, value.get<int64_t>());
      case GgufValueType::F64:
        return put(out, value.get<double>());
      case GgufValueType::Array:
        break;
    }
  } catch (const json::exception&) {
    fail("GGUF key {}: value {} does not fit its type", key, value.dump());
  }
  fail("GGUF key {}: arrays of arrays are not written", key);
}

uint64_t align_up(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

}  // namespace

std::string_view ggml_value_type_name(GgufValueType type) {
  static constexpr std::string_view kNames[] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
                                                "bool",  "string", "array",  "uint64", "int64",  "float64"};
  return uint32_t(type) < std::size(kNames) ? kNames[uint32_t(type)] : "unknown";
}

std::optional<GgmlTypeInfo> ggml_type_info(uint32_t type) {
  for (const TypeRow& row : kTypes)
    if (row.type == type) return row.info;
  return std::nullopt;
}

std::optional<uint32_t> ggml_type_of(std::string_view name) {
  for (const TypeRow& row : kTypes)
    if (row.info.name == name) return row.type;
  return std::nullopt;
}

std::string GgufTensor::shape_string() const { return shape_text(shape); }

std::unique_ptr<GgufFile> GgufFile::open(const fs::path& path, Residency residency) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->bytes_ = std::make_unique<FileBytes>(path, residency);
  const std::span<const std::byte> bytes = file->bytes();
  Cursor in(bytes, path);
  if (in.read<uint32_t>("the magic number") != kMagic) fail("{}: not a GGUF file (no \"GGUF\" magic)", path.string());
  file->version_ = in.read<uint32_t>("the version");
  if (file->version_ != kVersion)
    fail("{}: GGUF version {}; megamoe reads version 3 (convert older files with llama.cpp)", path.string(),
         file->version_);
  const uint64_t tensor_count = in.read<uint64_t>("the tensor count");
  const uint64_t key_count = in.read<uint64_t>("the metadata count");
  // Each key takes at least 12 bytes and each tensor 28: larger counts cannot fit in the file.
  if (key_count > in.left() / 12) fail("{}: {} metadata entries cannot fit in the file", path.string(), key_count);
  if (tensor_count > in.left() / 28) fail("{}: {} tensors cannot fit in the file", path.string(), tensor_count);

  for (uint64_t k = 0; k < key_count; ++k) {
    GgufKeyValue entry;
    entry.key = in.string(fmt::format("metadata key {}", k), kMaxNameBytes);
    const std::string what = "metadata key '" + entry.key + "'";
    if (file->key_index_.count(entry.key)) fail("{}: {} appears twice", path.string(), what);
    const uint32_t type = in.read<uint32_t>(what + "'s type");
    if (!is_value_type(type)) fail("{}: {} has unknown value type {}", path.string(), what, type);
    entry.type = GgufValueType(type);
    entry.value = entry.type == GgufValueType::Array ? in.array(&entry.element, what, 0) : in.value(entry.type, what);
    file->key_index_[entry.key] = file->metadata_.size();
    file->metadata_.push_back(std::move(entry));
  }
  if (const GgufKeyValue* alignment = file->find_key("general.alignment")) {
    if (alignment->type != GgufValueType::U32)
      fail("{}: metadata key 'general.alignment' must be a uint32", path.string());
    const uint32_t a = alignment->value.get<uint32_t>();
    if (a == 0 || (a & (a - 1)) != 0)
      fail("{}: metadata key 'general.alignment' is {}, not a power of two", path.string(), a);
    file->alignment_ = a;
  }

  for (uint64_t t = 0; t < tensor_count; ++t) {
    GgufTensor tensor;
    tensor.name = in.string(fmt::format("tensor {}'s name", t), kMaxNameBytes);
    const std::string what = "tensor " + tensor.name;
    if (tensor.name.empty() || file->tensor_index_.count(tensor.name))
      fail("{}: tensor {}: its name is empty or repeated", path.string(), t);
    const uint32_t dims = in.read<uint32_t>(what + "'s dimension count");
    if (dims > kMaxDims) fail("{}: {} has {} dimensions, more than ggml's {}", path.string(), what, dims, kMaxDims);
    tensor.shape.resize(dims);
    for (uint32_t d = 0; d < dims; ++d) {  // ggml's ne[0] (the row) first: stored reversed
      const int64_t n = in.read<int64_t>(what + "'s dimensions");
      if (n < 0) fail("{}: {} has a negative dimension {}", path.string(), what, n);
      tensor.shape[dims - 1 - d] = n;
    }
    tensor.type = in.read<uint32_t>(what + "'s type");
    tensor.offset = in.read<uint64_t>(what + "'s offset");
    tensor.nbytes = size_t(tensor_bytes(tensor.name, tensor.type, tensor.shape, path));
    if (tensor.offset % file->alignment_ != 0)
      fail("{}: {} starts at data offset {}, not a multiple of the alignment {}", path.string(), what, tensor.offset,
           file->alignment_);
    file->tensor_index_[tensor.name] = file->tensors_.size();
    file->tensors_.push_back(std::move(tensor));
  }
  const uint64_t data_start = align_up(in.position(), file->alignment_);
  std::vector<const GgufTensor*> by_offset;
  for (GgufTensor& tensor : file->tensors_) {
    uint64_t end = 0;
    if (__builtin_add_overflow(data_start, tensor.offset, &end) || __builtin_add_overflow(end, tensor.nbytes, &end) ||
        end > bytes.size())
      fail("{}: tensor {} ({} bytes at data offset {}) lies outside the file of {} bytes", path.string(), tensor.name,
           tensor.nbytes, tensor.offset, bytes.size());
    tensor.offset += data_start;
    tensor.data = bytes.data() + tensor.offset;
    by_offset.push_back(&tensor);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i - 1]->offset + by_offset[i - 1]->nbytes > by_offset[i]->offset)
      fail("{}: tensors {} and {} overlap", path.string(), by_offset[i - 1]->name, by_offset[i]->name);
  return file;
}

const GgufKeyValue* GgufFile::find_key(std::string_view key) const {
  const auto it = key_index_.find(key);
  return it == key_index_.end() ? nullptr : &metadata_[it->second];
}

const GgufTensor* GgufFile::find(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::optional<int64_t> GgufFile::integer_or(std::string_view key) const {
  const GgufKeyValue* entry = find_key(key);
  if (!entry) return std::nullopt;
  if (entry->value.is_number_unsigned()) {
    if (entry->value.get<uint64_t>() <= uint64_t(INT64_MAX)) return int64_t(entry->value.get<uint64_t>());
  } else if (entry->value.is_number_integer()) {
    return entry->value.get<int64_t>();
  }
  fail("{}: metadata key '{}' is {}, not an integer of at most 63 bits", path_.string(), key, entry->value.dump());
}

int64_t GgufFile::integer(std::string_view key) const {
  const std::optional<int64_t> value = integer_or(key);
  if (!value) fail("{}: metadata key '{}' is missing", path_.string(), key);
  return *value;
}

double GgufFile::number(std::string_view key) const {
  const GgufKeyValue* entry = find_key(key);
  if (!entry) fail("{}: metadata key '{}' is missing", path_.string(), key);
  if (!entry->value.is_number()) fail("{}: metadata key '{}' is not a number", path_.string(), key);
  return entry->value.get<double>();
}

std::string GgufFile::string(std::string_view key) const {
  const GgufKeyValue* entry = find_key(key);
  if (!entry) fail("{}: metadata key '{}' is missing", path_.string(), key);
  if (!entry->value.is_string()) fail("{}: metadata key '{}' is not a string", path_.string(), key);
  return entry->value.get<std::string>();
}

namespace {

// "NAME-00002-of-00005.gguf" -> {NAME, 2, 5}; nullopt for any other name.
struct SplitName {
  std::string prefix;
  int part, count;
};
std::optional<SplitName> split_name(const fs::path& path) {
  const std::string name = path.filename().string();
  constexpr size_t kTail = std::string_view("-00001-of-00005.gguf").size();
  if (name.size() <= kTail || !name.ends_with(".gguf")) return std::nullopt;
  const std::string tail = name.substr(name.size() - kTail);  // "-DDDDD-of-DDDDD.gguf"
  const auto digits = [&](size_t at) {
    return std::all_of(tail.begin() + ptrdiff_t(at), tail.begin() + ptrdiff_t(at + 5),
                       [](char c) { return c >= '0' && c <= '9'; });
  };
  if (tail[0] != '-' || !digits(1) || tail.compare(6, 4, "-of-") != 0 || !digits(10)) return std::nullopt;
  const int part = std::stoi(tail.substr(1, 5)), count = std::stoi(tail.substr(10, 5));
  if (part < 1 || count < 1 || part > count) return std::nullopt;
  return SplitName{name.substr(0, name.size() - kTail), part, count};
}

}  // namespace

fs::path gguf_split_path(const fs::path& first_or_prefix, int k, int n) {
  const std::optional<SplitName> split = split_name(first_or_prefix);
  const std::string prefix = split ? split->prefix : first_or_prefix.filename().string();
  return first_or_prefix.parent_path() / fmt::format("{}-{:05d}-of-{:05d}.gguf", prefix, k, n);
}

std::vector<fs::path> gguf_part_paths(const fs::path& path) {
  const std::optional<SplitName> split = split_name(path);
  if (!split) return {path};
  std::vector<fs::path> parts;
  for (int k = 1; k <= split->count; ++k) parts.push_back(gguf_split_path(path, k, split->count));
  return parts;
}

std::unique_ptr<GgufModel> GgufModel::open(const fs::path& path, Residency residency) {
  std::unique_ptr<GgufModel> model(new GgufModel());
  const std::optional<SplitName> split = split_name(path);
  const int count = split ? split->count : 1;
  for (int k = 1; k <= count; ++k) {
    const fs::path part = split ? gguf_split_path(path, k, count) : path;
    if (split && !fs::exists(part))
      fail("{}: part {} of the {} parts of this model is missing ({})", path.string(), k, count, part.string());
    std::unique_ptr<GgufFile> file = GgufFile::open(part, residency);
    if (split) {  // each part says which it is
      const std::optional<int64_t> no = file->integer_or("split.no"), n = file->integer_or("split.count");
      if (no != k - 1 || n != count)
        fail("{}: its split.no / split.count ({} / {}) do not make it part {} of {}", part.string(),
             no ? std::to_string(*no) : "missing", n ? std::to_string(*n) : "missing", k, count);
    }
    for (const GgufTensor& t : file->tensors()) {
      if (!model->by_name_.emplace(t.name, &t).second)
        fail("{}: tensor {} is in an earlier part too", part.string(), t.name);
      model->tensors_.push_back(&t);
    }
    model->parts_.push_back(std::move(file));
  }
  if (const std::optional<int64_t> total = model->first().integer_or("split.tensors.count");
      split && total && *total != int64_t(model->tensors_.size()))
    fail("{}: split.tensors.count is {}, but the {} parts hold {} tensors", path.string(), *total, count,
         model->tensors_.size());
  return model;
}

const GgufTensor* GgufModel::find(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

void write_gguf(const fs::path& path, const std::vector<GgufKeyValue>& metadata,
                const std::vector<GgufTensorToWrite>& tensors, uint32_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    fail("{}: GGUF alignment {} is not a power of two", path.string(), alignment);
  std::vector<GgufKeyValue> keys = metadata;
  const bool has_alignment =
      std::any_of(keys.begin(), keys.end(), [](const GgufKeyValue& k) { return k.key == "general.alignment"; });
  if (alignment != kDefaultAlignment && !has_alignment)
    keys.push_back({"general.alignment", GgufValueType::U32, GgufValueType::U8, alignment});
  std::string header;
  put(header, kMagic);
  put(header, kVersion);
  put<uint64_t>(header, tensors.size());
  put<uint64_t>(header, keys.size());
  for (const GgufKeyValue& k : keys) {
    put_string(header, k.key);
    put(header, uint32_t(k.type));
    if (k.type != GgufValueType::Array) {
      put_value(header, k.type, k.value, k.key);
      continue;
    }
    if (!k.value.is_array()) fail("GGUF key {}: an array needs a JSON array", k.key);
    put(header, uint32_t(k.element));
    put<uint64_t>(header, k.value.size());
    for (const json& v : k.value) put_value(header, k.element, v, k.key);
  }
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const GgufTensorToWrite& t : tensors) {
    if (t.shape.size() > kMaxDims) fail("{}: tensor {} has more than {} dimensions", path.string(), t.name, kMaxDims);
    sizes.push_back(tensor_bytes(t.name, t.type, t.shape, path));
    put_string(header, t.name);
    put(header, uint32_t(t.shape.size()));
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) put<int64_t>(header, *d);
    put(header, t.type);
    put<uint64_t>(header, offset);
    offset = align_up(offset + sizes.back(), alignment);
  }
  header.append(align_up(header.size(), alignment) - header.size(), '\0');

  AtomicFile out(path);
  out.write(header);
  std::vector<std::byte> buffer;  // one tensor at a time, with its padding
  for (size_t i = 0; i < tensors.size(); ++i) {
    buffer.assign(size_t(align_up(sizes[i], alignment)), std::byte(0));
    if (sizes[i] > 0) tensors[i].fill(buffer.data());
    out.write(buffer);
  }
  out.commit();
}

}  // namespace megamoe
