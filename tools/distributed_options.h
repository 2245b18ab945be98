// Flags of the commands that run a model, for expert-parallel runs under mpirun (src/dist).
#pragma once
#include <CLI/CLI.hpp>

#include "dist/distributed_model.h"

namespace megamoe::cli {

// --placement, --dist-stats.
inline void add_distributed_options(CLI::App* cmd, dist::DistributedOptions* o) {
  cmd->add_option("--placement", o->placement,
                  "Under mpirun: which ranks hold which experts (megamoe placement; default: contiguous blocks)");
  cmd->add_option("--dist-stats", o->stats,
                  "Under mpirun: write per-rank exchange times, traffic, loads and memory to this JSON file");
}

}  // namespace megamoe::cli
