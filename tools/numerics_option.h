// --numerics exact|fast (ops/numerics.h, docs/quantization.md#numerics), on every command that runs a
// model: sets the process's mode as the command line is parsed, before the model loads.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "ops/numerics.h"

namespace megamoe::cli {

inline void add_numerics_option(CLI::App* cmd) {
  cmd->add_option_function<std::string>(
         "--numerics", [](const std::string& name) { set_numerics(parse_numerics(name)); },
         "exact: fp32 activations in every matrix product (what references are compared with); fast "
         "(default): activations rounded to q8_0 blocks against q8_0, q4_0 and FP4 weights")
      ->type_name("exact|fast");
}

}  // namespace megamoe::cli
