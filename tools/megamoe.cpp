// megamoe: a C++ engine for DeepSeek-style Mega Mixture-of-Experts models.
#include <sched.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "commands.h"
#include "dist/communicator.h"
#include "runtime/wait_policy.h"
#include "util/error.h"

int main(int argc, char** argv) {
  // libgomp reads its wait settings when it loads, before main: unless the user chose one, start
  // again with megamoe's choice for this machine's load (runtime/wait_policy.h; execv returns only
  // on failure).
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) {
    double load_average = 1e9;  // unknown: as if busy
    if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
      if (std::fscanf(f, "%lf", &load_average) != 1) load_average = 1e9;
      std::fclose(f);
    }
    cpu_set_t cpus;
    const int cores = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
    const char* local_ranks = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");  // set by Open MPI's mpirun
    const megamoe::EnvSetting wait =
        megamoe::openmp_wait_setting(load_average, cores, local_ranks ? std::atoi(local_ranks) : 1);
    setenv(wait.name.c_str(), wait.value.c_str(), 1);
    execv("/proc/self/exe", argv);
  }
  megamoe::dist::init(&argc, &argv);  // only under mpirun
  CLI::App app{"megamoe: run, serve and train DeepSeek-style Mega-MoE models on CPUs", "megamoe"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "megamoe 0.1");
  megamoe::cli::register_bench(app);
  megamoe::cli::register_chat(app);
  megamoe::cli::register_experiment(app);
  megamoe::cli::register_export_gguf(app);
  megamoe::cli::register_generate(app);
  megamoe::cli::register_gradients(app);
  megamoe::cli::register_inspect(app);
  megamoe::cli::register_logits(app);
  megamoe::cli::register_perplexity(app);
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
      std::fprintf(stderr, "megamoe: error (rank %d of %d): %s\n", megamoe::dist::rank(), megamoe::dist::size(),
                   e.what());
    else std::fprintf(stderr, "megamoe: error: %s\n", e.what());
    std::fflush(stderr);
    megamoe::dist::abort_all(1);  // the other ranks may be waiting for this one
    return 1;
  }
  megamoe::dist::finalize();
  return 0;
}
