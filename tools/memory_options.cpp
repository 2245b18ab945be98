#include "memory_options.h"

#include <filesystem>
#include <system_error>

#include "io/gguf.h"
#include "util/byte_size.h"
#include "util/huge_pages.h"

namespace megamoe::cli {

void add_memory_options(CLI::App* cmd, MemoryOptions* o) {
  cmd->add_option("--memory-budget", o->budget,
                  "Keep resident memory within SIZE (e.g. 1GiB, 512MiB, bytes): dense weights stay mapped, "
                  "routed experts stream from disk through a cache, Engram tables are read by rows through another");
  cmd->add_flag("--no-prefetch", o->no_prefetch, "With --memory-budget: do not read the next layer's experts ahead");
  cmd->add_option("--eviction", o->eviction,
                  "With --memory-budget: evict the least recently (lru) or least often (lfu) used expert")
      ->check(CLI::IsMember({"lru", "lfu"}))
      ->capture_default_str();
  cmd->add_flag("--mmap", o->mmap,
                "Map the weight files instead of reading them into huge-page memory (the default when they fit): "
                "starts at once and shares the page cache, but decode streams rarely used weights slower");
}

Residency weight_residency(const MemoryOptions& o, const std::string& model_dir) {
  if (!o.budget.empty() || o.mmap || !transparent_huge_pages_enabled()) return Residency::Mapped;
  std::error_code error;
  int64_t file_bytes = 0;
  const std::filesystem::path model(model_dir);
  if (model.extension() == ".gguf") {
    // A GGUF model: this file, and the other parts of a split one beside it.
    for (const std::filesystem::path& part : gguf_part_paths(model))
      file_bytes += int64_t(std::filesystem::file_size(part, error));
  }
  for (const auto& entry : std::filesystem::directory_iterator(model_dir, error))
    if (entry.is_regular_file(error) && entry.path().extension() == ".safetensors")
      file_bytes += int64_t(entry.file_size(error));
  // Room left for activations, KV caches and the rest of the system.
  const auto available = available_memory();
  return available && file_bytes <= *available / 10 * 9 ? Residency::HugePages : Residency::Mapped;
}

StreamingStores apply_memory_options(Model* model, const MemoryOptions& o, const std::string& model_dir,
                                     int64_t kv_bytes) {
  if (o.budget.empty()) {
    warn_if_model_exceeds_memory(*model, model_dir);
    return {};
  }
  return stream_within_budget(model, parse_byte_size(o.budget), kv_bytes, !o.no_prefetch, o.eviction == "lfu");
}

}  // namespace megamoe::cli
