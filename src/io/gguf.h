// GGUF files, llama.cpp's format (version 3; docs/gguf.md): typed metadata, then tensors in ggml's
// block types, each at an aligned offset. Reading validates the whole header (counts, lengths,
// types, shapes against block sizes, every tensor inside the file) and hands out views of the
// mapped bytes; writing lays a file out as llama.cpp reads it. Written by hand: Debian 12 packages
// neither ggml nor any GGUF library.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/file_bytes.h"

namespace megamoe {

// The value types of GGUF metadata (gguf_type).
enum class GgufValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

std::string_view ggml_value_type_name(GgufValueType type);  // "uint32", "string", ...

// One metadata entry: numbers, booleans and strings as JSON values, arrays as JSON arrays of
// `element` values (arrays of arrays: element Array, the inner ones' types not kept).
struct GgufKeyValue {
  std::string key;
  GgufValueType type = GgufValueType::U32;
  GgufValueType element = GgufValueType::U8;  // arrays only
  nlohmann::json value;
};

// ggml's tensor types (ggml_type), with the block each stores: `block_elements` values in
// `block_bytes` bytes, along a row.
struct GgmlTypeInfo {
  std::string_view name;  // "Q4_K"
  int64_t block_elements, block_bytes;
};
// nullopt for a number that names no type (or one removed from ggml, such as Q4_2).
std::optional<GgmlTypeInfo> ggml_type_info(uint32_t type);
// The type of a name ("Q4_K"), nullopt when there is none.
std::optional<uint32_t> ggml_type_of(std::string_view name);

struct GgufTensor {
  std::string name;
  uint32_t type = 0;           // ggml_type
  std::vector<int64_t> shape;  // outermost first, as safetensors has it: ggml's ne[] reversed, so a
                               // matrix is [rows, cols] and rows are contiguous blocks
  uint64_t offset = 0;         // from the start of the file
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  std::string shape_string() const;  // "[3, 4]"
};

class GgufFile {
 public:
  // Throws Error naming the file, and the key or tensor at fault.
  static std::unique_ptr<GgufFile> open(const std::filesystem::path& path, Residency residency = Residency::Mapped);

  const std::filesystem::path& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  const std::vector<GgufKeyValue>& metadata() const { return metadata_; }
  const GgufKeyValue* find_key(std::string_view key) const;  // nullptr when absent
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find(std::string_view name) const;  // nullptr when absent
  std::span<const std::byte> bytes() const { return {bytes_->data(), bytes_->size()}; }

  // A metadata value of the expected kind, or an Error naming the file and key: an unsigned or
  // signed integer of any width, a float of either width, a string, an array of strings.
  int64_t integer(std::string_view key) const;
  std::optional<int64_t> integer_or(std::string_view key) const;  // nullopt when absent
  double number(std::string_view key) const;
  std::string string(std::string_view key) const;

 private:
  GgufFile() = default;
  std::filesystem::path path_;
  std::unique_ptr<FileBytes> bytes_;
  uint32_t version_ = 0, alignment_ = 32;
  std::vector<GgufKeyValue> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t, std::less<>> key_index_, tensor_index_;
};

// A model in one GGUF file, or split by llama.cpp's gguf-split into NAME-0000k-of-0000N.gguf parts
// (split.no, split.count, split.tensors.count in each): the first part's metadata, every part's
// tensors. Opening any part opens them all; a missing, foreign or repeated part, or a tensor in two
// parts, is an Error naming the file.
class GgufModel {
 public:
  static std::unique_ptr<GgufModel> open(const std::filesystem::path& path, Residency residency = Residency::Mapped);

  const GgufFile& first() const { return *parts_.front(); }  // holds the metadata
  const std::vector<std::unique_ptr<GgufFile>>& parts() const { return parts_; }
  const std::vector<const GgufTensor*>& tensors() const { return tensors_; }  // every part's, in order
  const GgufTensor* find(std::string_view name) const;                        // nullptr when absent

 private:
  std::vector<std::unique_ptr<GgufFile>> parts_;
  std::vector<const GgufTensor*> tensors_;
  std::map<std::string, const GgufTensor*, std::less<>> by_name_;
};

// "NAME-0000k-of-0000N.gguf" for part k (1-based) of n, as gguf-split names them.
std::filesystem::path gguf_split_path(const std::filesystem::path& first_or_prefix, int k, int n);

// The files of the model `path` belongs to: itself, or every part of a split one.
std::vector<std::filesystem::path> gguf_part_paths(const std::filesystem::path& path);

// A tensor to write: `fill` writes exactly its bytes (shape outermost first, as GgufTensor).
struct GgufTensorToWrite {
  std::string name;
  uint32_t type;
  std::vector<int64_t> shape;
  std::function<void(std::byte* out)> fill;
};

// Writes a version-3 file atomically (temporary file + rename), tensors in the given order at
// `alignment`-byte offsets (general.alignment is written when it is not the default 32).
void write_gguf(const std::filesystem::path& path, const std::vector<GgufKeyValue>& metadata,
                const std::vector<GgufTensorToWrite>& tensors, uint32_t alignment = 32);

}  // namespace megamoe
