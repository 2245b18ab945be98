// Tables that stay on disk and are read a few rows at a time (DeepSeek-V4.1's Engram tables: 203 GB
// at the released size, 48 rows of 264 bytes per token; docs/streaming.md#engram-tables): each row
// is read with pread into one of a fixed number of slots when first wanted, and stays until the
// CLOCK hand (an approximation of least recently used, O(1) per miss) passes it unused. A row
// counts as used only when it is wanted again, so the many n-grams seen once pass through without
// pushing out the common ones.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "io/checkpoint_reads.h"

namespace megamoe {

struct RowCacheStats {
  int64_t lookups = 0;     // rows asked for
  int64_t hits = 0;        // already in a slot
  int64_t bytes_read = 0;  // from the checkpoint files
  double hit_rate() const { return lookups ? double(hits) / double(lookups) : 0; }
};

class RowCache {
 public:
  // One part of a table's rows: the mapped address of row 0 and the bytes of each row (a table of
  // FP8 codes with a scale tensor beside it has two parts). Only the addresses are used.
  struct Part {
    const void* data;
    int64_t row_bytes;
  };
  using Table = std::vector<Part>;

  // Slots for `bytes` of rows (at least one); `tables` must lie in the checkpoint's files.
  RowCache(const Checkpoint& checkpoint, std::vector<Table> tables, int64_t bytes);

  // What one slot costs: the longest row, every part, and its share of the index.
  static int64_t slot_cost(const std::vector<Table>& tables);
  int64_t slots() const { return int64_t(slot_key_.size()); }
  int64_t row_bytes() const { return row_bytes_; }

  // Copies row `row` of table `table` to `out` [row_bytes of the table]: its parts one after the
  // other. Safe to call from several threads.
  void read(int64_t table, int64_t row, std::byte* out) const;

  RowCacheStats stats() const;
  void reset_stats() const;

 private:
  struct StoredPart {
    CheckpointReads::Place place;  // of row 0
    int64_t row_bytes;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);

  CheckpointReads reads_;
  std::vector<std::vector<StoredPart>> tables_;
  int64_t row_bytes_ = 0;                 // of a slot
  std::unique_ptr<std::byte[]> storage_;  // [slots, row_bytes_]
  mutable std::mutex mutex_;
  mutable std::unordered_map<uint64_t, int64_t> slot_of_;  // table << 48 | row -> slot
  mutable std::vector<uint64_t> slot_key_;                 // [slots] kEmpty: free
  mutable std::vector<uint8_t> referenced_;                // [slots] hit since the hand last passed
  mutable int64_t hand_ = 0;
  mutable RowCacheStats stats_;
};

}  // namespace megamoe
