// Models larger than memory (docs/streaming.md): the dense weights stay mapped, the routed experts
// are read from the checkpoint files with pread (never through the mapping, which would count in
// the resident set) into a fixed set of cache slots allocated once from a memory budget. The MoE
// layer pins the experts it computes (ExpertStore::acquire); least recently used unpinned slots are
// evicted; a background thread prefetches the experts the next layer is predicted to need.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "io/checkpoint.h"
#include "io/checkpoint_reads.h"
#include "moe/moe.h"

namespace megamoe {

// What the cache has done since it was made (or since reset_stats()).
struct ExpertCacheStats {
  int64_t lookups = 0;        // experts the MoE layers asked for
  int64_t hits = 0;           // already resident (prefetched ones included)
  int64_t prefetch_hits = 0;  // of the hits, the ones a prefetch brought in
  int64_t prefetched = 0;     // experts the prefetch thread read
  int64_t bytes_read = 0;     // from the checkpoint files, demand and prefetch
  int64_t reads = 0;          // pread calls
  double hit_rate() const { return lookups ? double(hits) / double(lookups) : 0; }
};

class StreamingExpertStore final : public ExpertStore {
 public:
  // experts[layer]: the layer's mapped views, as InMemoryExpertStore takes them (an expert pool's
  // layers share one span, so they share cache entries). Only their addresses are used, to find
  // the bytes in the files. No slot exists until allocate().
  StreamingExpertStore(const Checkpoint& checkpoint, std::vector<std::span<const MlpWeights>> experts);
  ~StreamingExpertStore() override;

  int64_t slot_bytes() const { return slot_bytes_; }          // one expert's bytes in a slot
  int64_t streamed_bytes() const { return streamed_bytes_; }  // every distinct routed expert
  // Makes `slots` cache slots (one allocation) and, with `prefetch`, starts the prefetch thread.
  // `frequency`: evict the expert used least often so far (ties: least recently), not LRU.
  void allocate(int64_t slots, bool prefetch, bool frequency = false);
  int64_t slots() const { return int64_t(slot_entry_.size()); }

  const MlpWeights& expert(int64_t layer, int64_t e) const override;  // only while pinned
  int64_t max_pinned() const override { return slots(); }
  void acquire(int64_t layer, std::span<const int32_t> experts) const override;
  void release(int64_t layer, std::span<const int32_t> experts) const override;
  void prefetch(int64_t layer, std::span<const int32_t> experts) const override;
  bool prefetching() const override { return prefetch_thread_.joinable(); }

  ExpertCacheStats stats() const;
  void reset_stats() const;

 private:
  // A run of bytes of one file read with one pread, placed at slot_offset in a slot.
  struct Run {
    int file;
    int64_t offset, bytes, slot_offset;
  };
  struct Entry {
    MlpWeights mapped;      // the views into the mapping (never dereferenced here)
    std::vector<Run> runs;  // by file offset, adjacent ranges merged
  };
  enum class SlotState { Empty, Loading, Ready };

  int64_t entry_of(int64_t layer, int64_t e) const { return layer_base_[layer] + e; }
  // A slot to load `entry` into: an empty one, else the least recently used unpinned ready one
  // (-1: none). Takes it (state Loading). Caller holds mutex_.
  int64_t claim_slot(int64_t entry) const;
  void load(int64_t slot, int64_t entry) const;  // preads the entry's runs; without the lock
  MlpWeights rebased(int64_t entry, std::byte* slot) const;
  void prefetch_loop() const;

  CheckpointReads reads_;
  std::vector<int64_t> layer_base_;  // first entry of each layer (-1: dense)
  std::vector<Entry> entries_;
  int64_t slot_bytes_ = 0, streamed_bytes_ = 0;

  std::unique_ptr<std::byte[]> storage_;  // [slots, slot_bytes]
  std::byte* slot_data_ = nullptr;        // 64-byte aligned start of storage_
  mutable std::mutex mutex_;
  mutable std::condition_variable loaded_;   // a slot became Ready (or Empty after a failed read)
  mutable std::condition_variable wanted_;   // a prefetch request arrived, or stop
  mutable std::vector<int64_t> slot_entry_;  // [slots] -1: empty
  mutable std::vector<SlotState> slot_state_;
  mutable std::vector<int32_t> slot_pins_;
  mutable std::vector<int64_t> slot_used_;     // last use (a tick), for LRU
  mutable std::vector<bool> slot_prefetched_;  // loaded by prefetch and not used yet
  mutable std::vector<MlpWeights> slot_weights_;
  mutable std::vector<int64_t> entry_slot_;  // [entries] -1: not cached
  mutable std::vector<int64_t> entry_uses_;  // [entries] acquires so far, cached or not
  bool frequency_ = false;
  mutable int64_t tick_ = 0;
  mutable std::vector<int64_t> pending_prefetch_;  // entries hinted, not yet started
  mutable std::deque<int64_t> prefetch_queue_;     // entries the prefetch thread reads in order
  mutable ExpertCacheStats stats_;
  bool stop_ = false;
  std::thread prefetch_thread_;
};

}  // namespace megamoe
