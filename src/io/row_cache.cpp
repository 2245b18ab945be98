#include "io/row_cache.h"

#include <algorithm>
#include <cstring>

#include "util/error.h"

namespace megamoe {

namespace {

// The index's memory per slot (an unordered_map node and bucket), counted against the budget.
constexpr int64_t kIndexBytesPerSlot = 48;

int64_t longest_row(const std::vector<RowCache::Table>& tables) {
  int64_t longest = 0;
  for (const RowCache::Table& table : tables) {
    int64_t bytes = 0;
    for (const RowCache::Part& part : table) bytes += part.row_bytes;
    longest = std::max(longest, bytes);
  }
  return longest;
}

}  // namespace

int64_t RowCache::slot_cost(const std::vector<Table>& tables) {
  return longest_row(tables) + kIndexBytesPerSlot + int64_t(sizeof(uint64_t) + 1);
}

RowCache::RowCache(const Checkpoint& checkpoint, std::vector<Table> tables, int64_t bytes)
    : reads_(checkpoint), row_bytes_(longest_row(tables)) {
  for (const Table& table : tables) {
    std::vector<StoredPart>& stored = tables_.emplace_back();
    for (const Part& part : table) {
      const std::optional<CheckpointReads::Place> place = reads_.place(part.data);
      if (!place) fail("{}: a table read by rows is not in the checkpoint's files", checkpoint.dir().string());
      stored.push_back({*place, part.row_bytes});
    }
  }
  const int64_t slots = std::max<int64_t>(1, bytes / slot_cost(tables));
  storage_ = std::make_unique<std::byte[]>(size_t(slots * row_bytes_));
  slot_key_.assign(size_t(slots), kEmpty);
  referenced_.assign(size_t(slots), 0);
  slot_of_.reserve(size_t(slots));
}

void RowCache::read(int64_t table, int64_t row, std::byte* out) const {
  const std::vector<StoredPart>& parts = tables_[size_t(table)];
  const uint64_t key = uint64_t(table) << 48 | uint64_t(row);
  std::lock_guard lock(mutex_);
  ++stats_.lookups;
  int64_t slot;
  if (const auto found = slot_of_.find(key); found != slot_of_.end()) {
    slot = found->second;
    ++stats_.hits;
    referenced_[size_t(slot)] = 1;
  } else {
    while (referenced_[size_t(hand_)]) {  // the hand clears what was used since it last passed
      referenced_[size_t(hand_)] = 0;
      hand_ = (hand_ + 1) % slots();
    }
    slot = hand_;
    hand_ = (hand_ + 1) % slots();
    if (slot_key_[size_t(slot)] != kEmpty) slot_of_.erase(slot_key_[size_t(slot)]);
    slot_key_[size_t(slot)] = kEmpty;  // until the read succeeds
    std::byte* at = storage_.get() + slot * row_bytes_;
    for (const StoredPart& part : parts) {
      reads_.read({part.place.file, part.place.offset + row * part.row_bytes}, part.row_bytes, at);
      stats_.bytes_read += part.row_bytes;
      at += part.row_bytes;
    }
    slot_key_[size_t(slot)] = key;
    slot_of_.emplace(key, slot);
  }
  int64_t bytes = 0;
  for (const StoredPart& part : parts) bytes += part.row_bytes;
  std::memcpy(out, storage_.get() + slot * row_bytes_, size_t(bytes));
}

RowCacheStats RowCache::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void RowCache::reset_stats() const {
  std::lock_guard lock(mutex_);
  stats_ = {};
}

}  // namespace megamoe
