// Reads of a checkpoint's bytes with pread instead of through the mapping, for what stays on disk
// (streamed experts, Engram table rows): the mapping's pages are never touched, so they never count
// in the resident set.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "io/checkpoint.h"

namespace megamoe {

class CheckpointReads {
 public:
  // Where a byte of the checkpoint lies: a file (an index into Checkpoint::files()) and its offset there.
  struct Place {
    int file;
    int64_t offset;
  };

  explicit CheckpointReads(const Checkpoint& checkpoint);  // opens every file; fails naming one that cannot be
  ~CheckpointReads();
  CheckpointReads(const CheckpointReads&) = delete;
  CheckpointReads& operator=(const CheckpointReads&) = delete;

  // The place of a mapped address; nullopt outside every file (a realigned or decoded copy, resident).
  std::optional<Place> place(const void* mapped) const;
  // The mapped address of a place (to compare with views, never to read).
  const std::byte* mapped(Place place) const { return files_[size_t(place.file)].data() + place.offset; }
  // Reads `bytes` at `place` into `out`; fails naming the file on an error or an early end.
  // Returns the pread calls it took.
  int64_t read(Place place, int64_t bytes, std::byte* out) const;

 private:
  const Checkpoint& checkpoint_;
  std::vector<int> fds_;                           // one per file
  std::vector<std::span<const std::byte>> files_;  // each file's mapped bytes
};

}  // namespace megamoe
