#include "io/file_bytes.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "util/error.h"
#include "util/progress.h"

namespace megamoe {
namespace fs = std::filesystem;

namespace {

// Reads the whole file into `out`, every thread its own 32 MiB pieces (huge pages are zeroed as
// they fault in, so that work is spread over the threads too). Progress for files of 1 GiB or more.
void read_whole_file(std::byte* out, size_t size, int fd, const fs::path& path) {
  constexpr size_t kPiece = size_t(32) << 20;
  const int64_t pieces = int64_t((size + kPiece - 1) / kPiece);
  std::unique_ptr<Progress> progress;
  if (size >= (size_t(1) << 30))
    progress = std::make_unique<Progress>("reading " + path.filename().string(), int64_t(size >> 20), "MiB");
  std::atomic<int> error = 0;  // errno of the first failed read; -1: the file ended early
  std::atomic<size_t> done = 0;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t piece = 0; piece < pieces; ++piece) {
    size_t offset = size_t(piece) * kPiece;
    const size_t end = std::min(size, offset + kPiece);
    while (offset < end && error == 0) {
      const ssize_t n = ::pread(fd, out + offset, end - offset, off_t(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) error = n < 0 ? errno : -1;
      else offset += size_t(n);
    }
    done += kPiece;
    if (progress && omp_get_thread_num() == 0) progress->update(int64_t(std::min(size_t(done), size) >> 20));
  }
  if (progress) progress->finish();
  if (error == -1) fail("{}: the file became shorter while it was read", path.string());
  if (error != 0) fail("{}: cannot read: {}", path.string(), std::strerror(error));
}

}  // namespace

FileBytes::FileBytes(const fs::path& path, Residency residency) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path.string());
  }
  size_ = size_t(st.st_size);
  if (size_ == 0) {
    ::close(fd);
    fail("{}: file is empty", path.string());
  }
  if (residency == Residency::HugePages) {
    try {
      memory_ = std::make_unique<HugePageBuffer>(size_);
      read_whole_file(memory_->data(), size_, fd, path);
      memory_->protect_read_only();
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
    data_ = memory_->data();
    return;
  }
  void* address = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (address == MAP_FAILED) fail("{}: cannot map: {}", path.string(), std::strerror(map_errno));
  data_ = static_cast<const std::byte*>(address);
}

FileBytes::~FileBytes() {
  if (!memory_) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace megamoe
