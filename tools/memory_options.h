// --memory-budget and --no-prefetch (docs/streaming.md), shared by generate, chat, serve, bench
// and logits: stream routed experts from disk through a cache sized from the budget. Without a
// budget the weights are read into huge-page memory when they fit, or mapped (--mmap).
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "model/expert_streaming.h"
#include "model/model.h"

namespace megamoe::cli {

struct MemoryOptions {
  std::string budget;  // empty: everything mapped
  bool no_prefetch = false;
  std::string eviction = "lru";  // or "lfu"
  bool mmap = false;             // map the weight files even when they would fit in memory
};

void add_memory_options(CLI::App* cmd, MemoryOptions* options);

// How to hold the weight files of `model_dir`: read into huge-page memory unless there is a budget,
// --mmap, no transparent huge pages, or not enough available memory.
Residency weight_residency(const MemoryOptions& options, const std::string& model_dir);

// With a budget: streams the experts of `model` within it (and reads its Engram tables by rows),
// `kv_bytes` of it kept for KV caches, and returns the caches (for their statistics). Without:
// warns when the model exceeds the available memory and returns none.
StreamingStores apply_memory_options(Model* model, const MemoryOptions& options, const std::string& model_dir,
                                     int64_t kv_bytes);

}  // namespace megamoe::cli
