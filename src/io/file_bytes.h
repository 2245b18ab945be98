// A whole file's bytes, read-only: mapped, or read into huge-page memory. What safetensors and GGUF
// files are opened as.
#pragma once
#include <cstddef>
#include <filesystem>
#include <memory>

#include "util/huge_pages.h"

namespace megamoe {

// Where an opened file's bytes live.
enum class Residency {
  Mapped,     // mapped from the page cache: opens at once, shared between processes, may exceed memory
  HugePages,  // read into private huge-page memory: streams faster (util/huge_pages.h), costs a read
};

class FileBytes {
 public:
  // Fails naming the file when it cannot be opened, is not a regular file, is empty or cannot be read.
  FileBytes(const std::filesystem::path& path, Residency residency);
  ~FileBytes();
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
  std::unique_ptr<HugePageBuffer> memory_;  // null when mapped
};

}  // namespace megamoe
