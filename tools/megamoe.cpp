// megamoe: a C++ engine for DeepSeek-style Mega Mixture-of-Experts models.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "commands.h"
#include "dist/communicator.h"
#include "util/error.h"

int main(int argc, char** argv) {
  // libgomp reads OMP_WAIT_POLICY when it loads, before main. Its default spins waiting threads at
  // every barrier, which on shared cores takes the CPU from the very thread being waited for: with 2
  // threads on the shared 2-vCPU VM decode fell from 34 to 3.5 tokens/s (docs/performance.md). So
  // unless the user chose a policy, start again with passive waiting (execv returns only on failure).
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
  }
  megamoe::dist::init(&argc, &argv);  // only under mpirun
  CLI::App app{"megamoe: run, serve and train DeepSeek-style Mega-MoE models on CPUs", "megamoe"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "megamoe 0.1");
  megamoe::cli::register_bench(app);
  megamoe::cli::register_chat(app);
  megamoe::cli::register_experiment(app);
  megamoe::cli::register_generate(app);
  megamoe::cli::register_gradients(app);
  megamoe::cli::register_inspect(app);
  megamoe::cli::register_logits(app);
  megamoe::cli::register_placement(app);
  megamoe::cli::register_quantize(app);
  megamoe::cli::register_serve(app);
  megamoe::cli::register_synth(app);
  megamoe::cli::register_tokenize(app);
  megamoe::cli::register_train(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int status = app.exit(e);
    megamoe::dist::finalize();
    return status;
  } catch (const std::exception& e) {
    if (megamoe::dist::distributed())
      std::fprintf(stderr, "megamoe: error (rank %d of %d): %s\n", megamoe::dist::rank(), megamoe::dist::size(), e.what());
    else
      std::fprintf(stderr, "megamoe: error: %s\n", e.what());
    std::fflush(stderr);
    megamoe::dist::abort_all(1);  // the other ranks may be waiting for this one
    return 1;
  }
  megamoe::dist::finalize();
  return 0;
}
