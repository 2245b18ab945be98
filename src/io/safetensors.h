// safetensors files: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the raw tensor bytes.
// Opening maps the file or reads it into huge-page memory (Residency); either way tensors are used in
// place, never copied one by one.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/file_bytes.h"
#include "ops/dtype.h"

namespace megamoe {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const std::byte* data;  // inside the file's bytes, valid while the file object lives
  size_t nbytes;
  const std::filesystem::path* file;  // the file it came from, for error messages
  // How the file names it where that differs from `name` (a GGUF tensor seen under its Hugging Face
  // name, model/gguf_checkpoint.h); empty otherwise.
  std::string stored_as;

  int64_t numel() const;
  std::string shape_string() const;  // "[3, 4]"
  std::string label() const;         // name, or "name (stored_as)", for messages
};

class SafetensorsFile {
 public:
  // Validates the whole header: size, JSON, dtypes, shapes against byte ranges, ranges inside the
  // file and not overlapping. Throws Error naming the file (and tensor) at fault.
  static std::unique_ptr<SafetensorsFile> open(const std::filesystem::path& path,
                                               Residency residency = Residency::Mapped);
  ~SafetensorsFile();

  const std::filesystem::path& path() const { return path_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The whole file: where a tensor's bytes sit in the file is data - bytes().data() (the expert
  // cache reads them with pread instead).
  std::span<const std::byte> bytes() const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  std::unique_ptr<FileBytes> bytes_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to be written; `fill` writes exactly its bytes into `out` (streams large checkpoints
// without holding them in memory).
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::function<void(std::byte* out)> fill;
};

// Writes atomically (temporary file + rename). Tensors are stored in the given order.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace megamoe
