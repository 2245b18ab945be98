// Running a model expert-parallel under mpirun: every rank maps the checkpoint and runs the dense
// parts, each computes only its routed experts (ExpertExchange). Rank 0 runs the command; the other
// ranks follow its forward passes (docs/distributed.md).
#pragma once
#include <filesystem>
#include <memory>
#include <string>

#include "model/model.h"

namespace megamoe::dist {

struct DistributedOptions {
  std::string placement;  // --placement FILE.json (default: contiguous blocks of experts)
  std::string stats;      // --dist-stats FILE.json: per-rank times, traffic, loads and memory
};

// load_model(dir, residency) without mpirun or with one rank. With N > 1 ranks every rank loads the
// model mapped (a rank never reads another rank's experts, and ranks on one machine share the pages), checks that all loaded the same one and
// places the experts; rank 0 gets the model to run the command with, and every other rank follows
// rank 0's forward passes until rank 0's model is destroyed, then finalizes MPI and exits 0.
std::unique_ptr<Model> load_model_on_ranks(const std::filesystem::path& dir, const DistributedOptions& options,
                                           Residency residency = Residency::Mapped);

}  // namespace megamoe::dist
