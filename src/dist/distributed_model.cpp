#include "dist/distributed_model.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <vector>

#include "dist/communicator.h"
#include "dist/expert_exchange.h"
#include "util/error.h"
#include "util/json_file.h"

namespace megamoe::dist {
namespace {

// Rank 0's messages to the followers (int64 words, broadcast):
//   stop:    [0]
//   forward: [1, n_released, released ids..., n_steps, per step: id, capacity, length, all_logits, n, tokens...]
enum Command : int64_t { kStop = 0, kForward = 1 };

// Bytes of this process's resident memory, and of it the mapped files (the checkpoint's touched pages).
std::pair<int64_t, int64_t> resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  int64_t total = 0, file = 0, kb;
  while (status >> key) {
    if (key == "VmRSS:" && status >> kb) total = kb * 1024;
    else if (key == "RssFile:" && status >> kb) file = kb * 1024;
  }
  return {total, file};
}

// The collective end of a run: every rank's exchange statistics and memory to rank 0, which prints a
// summary line and writes them to `path` when given.
void report(const ExpertExchange& exchange, const std::string& path) {
  const auto [rss, rss_file] = resident_bytes();
  const std::vector<double> rss_all = gather(double(rss)), rss_file_all = gather(double(rss_file));
  const std::vector<double> held = gather(double([&] {
    int64_t n = 0;
    for (int64_t L = 0; L < exchange.placement().layers(); ++L)
      for (int64_t e = 0; e < exchange.placement().experts(); ++e) n += exchange.holds(L, e);
    return n;
  }()));
  nlohmann::json stats = gather_stats(exchange.stats());
  if (rank() != 0) return;
  for (size_t r = 0; r < rss_all.size(); ++r) {
    stats["per_rank"][r]["rss_bytes"] = rss_all[r];
    stats["per_rank"][r]["rss_file_bytes"] = rss_file_all[r];
    stats["per_rank"][r]["experts_held"] = held[r];
  }
  const nlohmann::json& many = stats["per_rank"][0]["many_tokens"];
  const nlohmann::json& one = stats["per_rank"][0]["one_token"];
  std::fprintf(stderr,
               "expert parallel: %d ranks; rank 0 per MoE layer: experts %.3f ms + exchange %.3f ms (%lld multi-token "
               "calls), %.3f + %.3f ms (%lld one-token calls); measured imbalance (max/mean rows per rank) %.3f\n",
               size(), many["expert_ms_per_layer"].get<double>(), many["exchange_ms_per_layer"].get<double>(),
               (long long)many["layer_calls"].get<int64_t>(), one["expert_ms_per_layer"].get<double>(),
               one["exchange_ms_per_layer"].get<double>(), (long long)one["layer_calls"].get<int64_t>(),
               stats["measured_imbalance"].get<double>());
  if (!path.empty()) write_json_file(path, stats);
}

// Releases announced by caches as they go away, for the next message (caches may outlive the
// leader, and die on any thread).
struct Released {
  std::mutex mutex;
  std::vector<int64_t> ids;
};

// Rank 0's model: each forward pass is first broadcast, then run (its expert share included).
class LeaderModel final : public Model {
 public:
  LeaderModel(std::unique_ptr<Model> inner, std::unique_ptr<ExpertExchange> exchange, std::string stats_path)
      : inner_(std::move(inner)), exchange_(std::move(exchange)), stats_path_(std::move(stats_path)) {}
  ~LeaderModel() override {
    std::vector<int64_t> stop{kStop};
    broadcast(&stop);
    try {
      report(*exchange_, stats_path_);
    } catch (const std::exception& e) {  // a destructor must not throw: the run's outputs are written
      std::fprintf(stderr, "megamoe: error: %s\n", e.what());
    }
  }

  const ModelInfo& info() const override { return inner_->info(); }
  int64_t cache_bytes_per_token() const override { return inner_->cache_bytes_per_token(); }
  int64_t cache_bytes(int64_t capacity) const override { return inner_->cache_bytes(capacity); }
  void record_expert_load(ExpertLoad* load) override { inner_->record_expert_load(load); }

  std::unique_ptr<SequenceCache> new_cache(int64_t capacity) const override {
    std::unique_ptr<SequenceCache> cache = inner_->new_cache(capacity);
    std::lock_guard lock(released_->mutex);
    const int64_t id = next_id_++;
    ids_[cache.get()] = {id, capacity};
    cache->on_destroy = [released = released_, id] {
      std::lock_guard lock(released->mutex);
      released->ids.push_back(id);
    };
    return cache;
  }

  void forward(float* logits, std::span<const SequenceStep> batch) const override {
    std::vector<int64_t> message{kForward};
    {
      std::lock_guard lock(released_->mutex);
      message.push_back(int64_t(released_->ids.size()));
      message.insert(message.end(), released_->ids.begin(), released_->ids.end());
      released_->ids.clear();
      message.push_back(int64_t(batch.size()));
      for (const SequenceStep& step : batch) {
        auto it = ids_.find(step.cache);
        if (it == ids_.end()) fail("expert-parallel forward: a cache this model did not make");
        message.insert(message.end(), {it->second.id, it->second.capacity, step.cache->length(),
                                       int64_t(step.all_logits), int64_t(step.tokens.size())});
        message.insert(message.end(), step.tokens.begin(), step.tokens.end());
      }
    }
    broadcast(&message);
    inner_->forward(logits, batch);
  }

 private:
  struct CacheId {
    int64_t id, capacity;
  };
  std::unique_ptr<Model> inner_;
  std::unique_ptr<ExpertExchange> exchange_;
  std::string stats_path_;
  std::shared_ptr<Released> released_ = std::make_shared<Released>();
  // Addresses of live caches are unique; a dead cache's address may come back, and then maps to the
  // new cache's id (the old one was released).
  mutable std::map<const SequenceCache*, CacheId> ids_;
  mutable int64_t next_id_ = 0;
};

// The other ranks: rank 0's forward passes on their own caches, until rank 0 stops.
void follow(const Model& model) {
  std::map<int64_t, std::unique_ptr<SequenceCache>> caches;
  std::vector<int64_t> message;
  std::vector<float> logits;
  for (;;) {
    broadcast(&message);
    size_t i = 0;
    auto next = [&] {
      if (i >= message.size()) fail("rank {}: truncated message from rank 0", rank());
      return message[i++];
    };
    if (next() == kStop) return;
    for (int64_t n = next(); n > 0; --n) caches.erase(next());
    const int64_t steps = next();
    std::vector<SequenceStep> batch;
    std::vector<std::vector<int32_t>> tokens(steps);
    int64_t rows = 0;
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t id = next(), capacity = next(), length = next(), all_logits = next(), n = next();
      std::unique_ptr<SequenceCache>& cache = caches[id];
      if (!cache) cache = model.new_cache(capacity);
      if (cache->length() != length) cache->truncate(length);  // fails if rank 0 is ahead (lost a step)
      for (int64_t t = 0; t < n; ++t) tokens[s].push_back(int32_t(next()));
      batch.push_back({cache.get(), tokens[s], all_logits != 0});
      rows += all_logits ? n : 1;
    }
    logits.resize(size_t(rows * model.vocab_size()));
    try {
      model.forward(logits.data(), batch);
    } catch (const Error&) {
      // Bad input fails on rank 0 alike, before any exchange (it reports it, and may go on serving).
    }
  }
}

}  // namespace

std::unique_ptr<Model> load_model_on_ranks(const std::filesystem::path& dir, const DistributedOptions& options,
                                           Residency residency) {
  if (!distributed()) {
    if (!options.placement.empty()) fail("--placement needs an expert-parallel run (mpirun -np N with N > 1)");
    return load_model(dir, residency);
  }
  const std::filesystem::path stats_dir = std::filesystem::path(options.stats).parent_path();
  if (!options.stats.empty() && !stats_dir.empty() && !std::filesystem::is_directory(stats_dir))
    fail("--dist-stats {}: no such directory", options.stats);
  std::unique_ptr<Model> model;
  try {
    model = load_model(dir);
  } catch (const std::exception& e) {
    // Every rank must hear of it, or the others would wait for this one forever.
    std::fprintf(stderr, "megamoe: error (rank %d of %d): %s\n", rank(), size(), e.what());
    std::fflush(stderr);
    abort_all(1);
  }
  const ModelInfo& info = model->info();
  check_same(fmt::format("{} vocab {} layers {} experts {} weight bytes {}", info.architecture, info.vocab_size,
                         info.layers, info.routed_experts, info.weight_bytes),
             "the model (" + dir.string() + ")");
  ExpertPlacement placement = options.placement.empty()
                                  ? contiguous_placement(info.layers, info.routed_experts, size())
                                  : read_placement(options.placement, info.layers, info.routed_experts, size());
  auto exchange = std::make_unique<ExpertExchange>(std::move(placement));
  model->set_expert_parallel(exchange.get());
  if (rank() == 0) return std::make_unique<LeaderModel>(std::move(model), std::move(exchange), options.stats);
  // Rank 0 decides when the run ends (a server's SIGTERM from mpirun included); were a follower to
  // die of it first, rank 0 could not finish its last requests.
  std::signal(SIGINT, SIG_IGN);
  std::signal(SIGTERM, SIG_IGN);
  try {
    follow(*model);
    report(*exchange, "");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "megamoe: error (rank %d of %d): %s\n", rank(), size(), e.what());
    std::fflush(stderr);
    abort_all(1);
  }
  model.reset();
  finalize();
  std::exit(0);
}

}  // namespace megamoe::dist
