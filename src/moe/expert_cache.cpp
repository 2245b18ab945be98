#include "moe/expert_cache.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "util/error.h"

namespace megamoe {

namespace {

constexpr int64_t kAlign = 64;
// Ranges closer than this are read together: one larger pread beats two small ones.
constexpr int64_t kMergeGap = 4096;

}  // namespace

StreamingExpertStore::StreamingExpertStore(const Checkpoint& checkpoint,
                                           std::vector<std::span<const MlpWeights>> experts)
    : reads_(checkpoint) {
  // Every tensor by its first byte, to size the ranges the views point at.
  std::map<const std::byte*, int64_t> tensor_bytes;
  for (const TensorInfo* tensor : checkpoint.tensors()) tensor_bytes[tensor->data] = int64_t(tensor->nbytes);

  // One entry per stored expert: a pool's layers share the span, so they share the entries.
  std::map<const MlpWeights*, int64_t> base_of_span;
  for (const std::span<const MlpWeights>& layer : experts) {
    if (layer.empty()) {
      layer_base_.push_back(-1);
      continue;
    }
    const auto [it, inserted] = base_of_span.emplace(layer.data(), int64_t(entries_.size()));
    layer_base_.push_back(it->second);
    if (!inserted) continue;
    for (const MlpWeights& mlp : layer) {
      Entry entry{mlp, {}};
      for (const WeightView* w : {&mlp.gate, &mlp.up, &mlp.down})
        for (const void* p :
             {w->data, static_cast<const void*>(w->scale_inv), static_cast<const void*>(w->scale_e8m0)}) {
          const auto* bytes = static_cast<const std::byte*>(p);
          if (!bytes) continue;
          // Outside any mapping (a realigned or decoded copy): resident already, left as is.
          const std::optional<CheckpointReads::Place> place = reads_.place(bytes);
          if (!place) continue;
          const auto size = tensor_bytes.find(bytes);
          if (size == tensor_bytes.end()) fail("expert weight at an unknown place in {}", checkpoint.dir().string());
          entry.runs.push_back({place->file, place->offset, size->second, 0});
        }
      std::sort(entry.runs.begin(), entry.runs.end(),
                [](const Run& a, const Run& b) { return std::tie(a.file, a.offset) < std::tie(b.file, b.offset); });
      std::vector<Run> merged;
      for (const Run& run : entry.runs) {
        if (!merged.empty() && merged.back().file == run.file &&
            run.offset - (merged.back().offset + merged.back().bytes) <= kMergeGap)
          merged.back().bytes = std::max(merged.back().bytes, run.offset + run.bytes - merged.back().offset);
        else merged.push_back(run);
      }
      // Each run keeps its file offset's alignment modulo 64 in the slot, so the kernels see the
      // same alignment as through the mapping.
      int64_t cursor = 0;
      for (Run& run : merged) {
        run.slot_offset = (cursor + kAlign - 1) / kAlign * kAlign + run.offset % kAlign;
        cursor = run.slot_offset + run.bytes;
        streamed_bytes_ += run.bytes;
      }
      slot_bytes_ = std::max(slot_bytes_, (cursor + kAlign - 1) / kAlign * kAlign);
      entry.runs = std::move(merged);
      entries_.push_back(std::move(entry));
    }
  }
  entry_slot_.assign(entries_.size(), -1);
}

StreamingExpertStore::~StreamingExpertStore() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wanted_.notify_all();
  if (prefetch_thread_.joinable()) prefetch_thread_.join();
}

void StreamingExpertStore::allocate(int64_t slots, bool prefetch, bool frequency) {
  frequency_ = frequency;
  slots = std::min(slots, int64_t(entries_.size()));  // a budget above the model holds every expert once
  entry_uses_.assign(entries_.size(), 0);
  // Zeroed: the whole cache is resident from the start, so a budget too big for the machine shows at once.
  storage_ = std::make_unique<std::byte[]>(size_t(slots * slot_bytes_ + kAlign));
  slot_data_ = storage_.get() + (kAlign - reinterpret_cast<uintptr_t>(storage_.get()) % kAlign) % kAlign;
  slot_entry_.assign(slots, -1);
  slot_state_.assign(slots, SlotState::Empty);
  slot_pins_.assign(slots, 0);
  slot_used_.assign(slots, 0);
  slot_prefetched_.assign(slots, false);
  slot_weights_.assign(slots, MlpWeights{});
  if (prefetch) prefetch_thread_ = std::thread([this] { prefetch_loop(); });
}

MlpWeights StreamingExpertStore::rebased(int64_t entry, std::byte* slot) const {
  const Entry& e = entries_[entry];
  auto move = [&](const void* p) -> const std::byte* {
    const auto* bytes = static_cast<const std::byte*>(p);
    for (const Run& run : e.runs) {
      const std::byte* start = reads_.mapped({run.file, run.offset});
      if (bytes >= start && bytes < start + run.bytes) return slot + run.slot_offset + (bytes - start);
    }
    return bytes;  // null, or resident outside the mapping
  };
  MlpWeights w = e.mapped;
  for (WeightView* v : {&w.gate, &w.up, &w.down}) {
    v->data = move(v->data);
    v->scale_inv = reinterpret_cast<const float*>(move(v->scale_inv));
    v->scale_e8m0 = reinterpret_cast<const uint8_t*>(move(v->scale_e8m0));
  }
  return w;
}

void StreamingExpertStore::load(int64_t slot, int64_t entry) const {
  std::byte* base = slot_data_ + slot * slot_bytes_;
  int64_t reads = 0, bytes = 0;
  for (const Run& run : entries_[entry].runs) {
    reads += reads_.read({run.file, run.offset}, run.bytes, base + run.slot_offset);
    bytes += run.bytes;
  }
  std::lock_guard lock(mutex_);
  stats_.reads += reads;
  stats_.bytes_read += bytes;
  slot_weights_[slot] = rebased(entry, base);
}

int64_t StreamingExpertStore::claim_slot(int64_t entry) const {
  int64_t best = -1;
  for (int64_t s = 0; s < slots(); ++s) {
    if (slot_state_[s] == SlotState::Empty) {
      best = s;
      break;
    }
    if (slot_state_[s] != SlotState::Ready || slot_pins_[s] != 0) continue;
    auto key = [&](int64_t slot) {
      return std::pair(frequency_ ? entry_uses_[slot_entry_[slot]] : 0, slot_used_[slot]);
    };
    if (best < 0 || key(s) < key(best)) best = s;
  }
  if (best < 0) return -1;
  if (slot_entry_[best] >= 0) entry_slot_[slot_entry_[best]] = -1;
  slot_entry_[best] = entry;
  slot_state_[best] = SlotState::Loading;
  slot_prefetched_[best] = false;
  slot_used_[best] = ++tick_;
  entry_slot_[entry] = best;
  return best;
}

void StreamingExpertStore::acquire(int64_t layer, std::span<const int32_t> experts) const {
  if (int64_t(experts.size()) > slots()) fail("{} experts cannot be pinned in {} cache slots", experts.size(), slots());
  std::unique_lock lock(mutex_);
  std::vector<std::pair<int64_t, int64_t>> to_load;  // (slot, entry)
  for (int32_t e : experts) {
    const int64_t entry = entry_of(layer, e);
    ++stats_.lookups;
    ++entry_uses_[entry];
    int64_t slot = entry_slot_[entry];
    if (slot >= 0) {
      ++stats_.hits;
      if (slot_prefetched_[slot]) ++stats_.prefetch_hits;
      slot_prefetched_[slot] = false;
    } else {
      // Every slot pinned or loading (prefetches in flight): wait for one to finish.
      while ((slot = claim_slot(entry)) < 0) loaded_.wait(lock);
      to_load.emplace_back(slot, entry);
    }
    ++slot_pins_[slot];
    slot_used_[slot] = ++tick_;
  }
  if (!pending_prefetch_.empty()) {
    prefetch_queue_.assign(pending_prefetch_.begin(), pending_prefetch_.end());  // older guesses are stale
    pending_prefetch_.clear();
    wanted_.notify_one();
  }
  lock.unlock();
  for (const auto& [slot, entry] : to_load) {
    try {
      load(slot, entry);
    } catch (...) {
      lock.lock();
      for (int32_t e : experts)
        if (const int64_t s = entry_slot_[entry_of(layer, e)]; s >= 0) --slot_pins_[s];
      for (const auto& [s, en] : to_load)
        if (slot_state_[s] == SlotState::Loading) {
          slot_state_[s] = SlotState::Empty;
          entry_slot_[en] = slot_entry_[s] = -1;
        }
      loaded_.notify_all();
      throw;
    }
    lock.lock();
    slot_state_[slot] = SlotState::Ready;
    lock.unlock();
  }
  loaded_.notify_all();
  // Experts a prefetch is still reading: wait for them.
  lock.lock();
  for (int32_t e : experts) {
    const int64_t entry = entry_of(layer, e);
    loaded_.wait(lock, [&] { return entry_slot_[entry] < 0 || slot_state_[entry_slot_[entry]] != SlotState::Loading; });
    if (entry_slot_[entry] < 0) fail("layer {} expert {}: the checkpoint could not be read", layer, e);
  }
}

void StreamingExpertStore::release(int64_t layer, std::span<const int32_t> experts) const {
  std::lock_guard lock(mutex_);
  for (int32_t e : experts) --slot_pins_[entry_slot_[entry_of(layer, e)]];
  loaded_.notify_all();
}

const MlpWeights& StreamingExpertStore::expert(int64_t layer, int64_t e) const {
  const int64_t slot = entry_slot_[entry_of(layer, e)];  // stable while pinned
  return slot_weights_[slot];
}

void StreamingExpertStore::prefetch(int64_t layer, std::span<const int32_t> experts) const {
  if (!prefetching() || layer_base_[layer] < 0) return;
  {
    std::lock_guard lock(mutex_);
    // Started by the next acquire(), once the experts it needs are pinned and safe from eviction.
    pending_prefetch_.clear();
    const size_t most = size_t(slots() / 2);  // leave room for the running layer
    for (int32_t e : experts.first(std::min(experts.size(), most))) pending_prefetch_.push_back(entry_of(layer, e));
  }
}

void StreamingExpertStore::prefetch_loop() const {
  std::unique_lock lock(mutex_);
  for (;;) {
    wanted_.wait(lock, [&] { return stop_ || !prefetch_queue_.empty(); });
    if (stop_) return;
    const int64_t entry = prefetch_queue_.front();
    prefetch_queue_.pop_front();
    if (entry_slot_[entry] >= 0) continue;
    const int64_t slot = claim_slot(entry);
    if (slot < 0) continue;  // everything pinned: drop the guess
    slot_prefetched_[slot] = true;
    lock.unlock();
    bool ok = true;
    try {
      load(slot, entry);
    } catch (const std::exception&) {
      ok = false;  // the demand read will report it
    }
    lock.lock();
    if (ok) {
      slot_state_[slot] = SlotState::Ready;
      ++stats_.prefetched;
    } else {
      slot_state_[slot] = SlotState::Empty;
      slot_entry_[slot] = entry_slot_[entry] = -1;
      slot_pins_[slot] = 0;
    }
    loaded_.notify_all();
  }
}

ExpertCacheStats StreamingExpertStore::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void StreamingExpertStore::reset_stats() const {
  std::lock_guard lock(mutex_);
  stats_ = {};
}

}  // namespace megamoe
