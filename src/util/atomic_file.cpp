#include "util/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "util/error.h"

namespace megamoe {
namespace fs = std::filesystem;
namespace {

fs::path temporary_beside(const fs::path& target) {
  return fs::path(target.string() + ".tmp." + std::to_string(::getpid()));
}

// Makes a rename inside `dir` durable; without it a power loss can undo the rename.
void fsync_directory(const fs::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: some file systems refuse to open directories
  ::fsync(fd);
  ::close(fd);
}

void rename_or_fail(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) fail("{}: cannot rename {} into place: {}", to.string(), from.string(), ec.message());
}

}  // namespace

AtomicFile::AtomicFile(fs::path target) : target_(std::move(target)), temp_(temporary_beside(target_)) {
  file_ = std::fopen(temp_.c_str(), "wb");
  if (!file_) fail("{}: cannot create {}: {}", target_.string(), temp_.string(), std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (file_) std::fclose(file_);
  if (!committed_) {
    std::error_code ignored;
    fs::remove(temp_, ignored);
  }
}

void AtomicFile::write(std::span<const std::byte> bytes) {
  if (!file_) fail("{}: write after commit", target_.string());
  if (bytes.empty()) return;
  if (std::fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size())
    fail("{}: write failed: {}", target_.string(), std::strerror(errno));
}

void AtomicFile::commit() {
  if (!file_) fail("{}: committed twice", target_.string());
  // A full disk often shows only here, when the buffered bytes reach the file system.
  const bool flushed = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  const int flush_errno = errno;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  if (!flushed || !closed) fail("{}: write failed: {}", target_.string(), std::strerror(flushed ? errno : flush_errno));
  rename_or_fail(temp_, target_);
  committed_ = true;
  fsync_directory(target_.parent_path());
}

AtomicDirectory::AtomicDirectory(fs::path target) : target_(std::move(target)), temp_(temporary_beside(target_)) {
  std::error_code ec;
  fs::remove_all(temp_, ec);  // a leftover of an earlier process that had our pid
  if (!ec) fs::create_directory(temp_, ec);
  if (ec) fail("{}: cannot create {}: {}", target_.string(), temp_.string(), ec.message());
}

AtomicDirectory::~AtomicDirectory() {
  if (committed_) return;
  std::error_code ignored;
  fs::remove_all(temp_, ignored);
}

void AtomicDirectory::commit() {
  if (committed_) fail("{}: committed twice", target_.string());
  fsync_directory(temp_);
  std::error_code ec;
  if (!fs::exists(target_, ec)) {
    rename_or_fail(temp_, target_);
  } else if (::renameat2(AT_FDCWD, temp_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
    // Swapped in one step (Linux): a crash at any moment leaves the old or the new directory at
    // target, never neither. The old one now sits at the temporary name.
    fs::remove_all(temp_, ec);
  } else {
    // rename() cannot replace a non-empty directory, and this file system cannot swap: move the old
    // one aside, and back on failure.
    const fs::path old = fs::path(target_.string() + ".old." + std::to_string(::getpid()));
    fs::remove_all(old, ec);
    rename_or_fail(target_, old);
    fs::rename(temp_, target_, ec);
    if (ec) {
      std::error_code ignored;
      fs::rename(old, target_, ignored);
      fail("{}: cannot rename {} into place: {}", target_.string(), temp_.string(), ec.message());
    }
    fs::remove_all(old, ec);
  }
  committed_ = true;
  fsync_directory(target_.parent_path());
}

}  // namespace megamoe
