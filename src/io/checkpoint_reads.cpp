#include "io/checkpoint_reads.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/error.h"

namespace megamoe {

CheckpointReads::CheckpointReads(const Checkpoint& checkpoint) : checkpoint_(checkpoint) {
  for (const Checkpoint::StoredFile& file : checkpoint.stored_files()) {
    const int fd = ::open(file.path->c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const int error = errno;
      for (int open_fd : fds_) ::close(open_fd);
      fail("{}: cannot open: {}", file.path->string(), std::strerror(error));
    }
    fds_.push_back(fd);
    files_.push_back(file.bytes);
  }
}

CheckpointReads::~CheckpointReads() {
  for (int fd : fds_) ::close(fd);
}

std::optional<CheckpointReads::Place> CheckpointReads::place(const void* mapped) const {
  const auto* byte = static_cast<const std::byte*>(mapped);
  for (size_t f = 0; f < files_.size(); ++f)
    if (byte >= files_[f].data() && byte < files_[f].data() + files_[f].size())
      return Place{int(f), byte - files_[f].data()};
  return std::nullopt;
}

int64_t CheckpointReads::read(Place place, int64_t bytes, std::byte* out) const {
  int64_t calls = 0;
  for (int64_t done = 0; done < bytes; ++calls) {
    const ssize_t n = ::pread(fds_[size_t(place.file)], out + done, size_t(bytes - done), off_t(place.offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      fail("{}: cannot read {} bytes at byte {}: {}", checkpoint_.stored_files()[size_t(place.file)].path->string(),
           bytes - done, place.offset + done, n < 0 ? std::strerror(errno) : "unexpected end of file");
    done += n;
  }
  return calls;
}

}  // namespace megamoe
