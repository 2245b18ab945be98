#include "memory_options.h"

namespace megamoe::cli {

void add_memory_options(CLI::App* cmd, MemoryOptions* o) {
  cmd->add_option("--memory-budget", o->budget,
                  "Keep resident memory within SIZE (e.g. 1GiB, 512MiB, bytes): dense weights stay mapped, "
                  "routed experts stream from disk through a cache");
  cmd->add_flag("--no-prefetch", o->no_prefetch, "With --memory-budget: do not read the next layer's experts ahead");
  cmd->add_option("--eviction", o->eviction,
                  "With --memory-budget: evict the least recently (lru) or least often (lfu) used expert")
      ->check(CLI::IsMember({"lru", "lfu"}))
      ->capture_default_str();
}

StreamingExpertStore* apply_memory_options(Model* model, const MemoryOptions& o, const std::string& model_dir,
                                           int64_t kv_bytes) {
  if (o.budget.empty()) {
    warn_if_model_exceeds_memory(*model, model_dir);
    return nullptr;
  }
  return stream_experts_within(model, parse_byte_size(o.budget), kv_bytes, !o.no_prefetch, o.eviction == "lfu");
}

}  // namespace megamoe::cli
