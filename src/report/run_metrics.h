// What a training run's metrics file (`megamoe train --metrics`, JSON Lines; docs/training.md)
// says, read back: its curves, its last validation's balance statistics, and plots of both.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace megamoe {

struct RunMetrics {
  std::vector<nlohmann::json> steps;        // the lines with "loss", in order
  std::vector<nlohmann::json> validations;  // the lines with "val_loss", in order
};

// Error naming the file and line for a line that is not a JSON object.
RunMetrics read_run_metrics(const std::filesystem::path& jsonl);

// Every step line's `key` as (step, value) series; values missing from a line are left out.
void metric_curve(std::vector<double>* steps, std::vector<double>* values, const std::vector<nlohmann::json>& lines,
                  const std::string& key);
// Each value replaced by the mean of the `window` values ending at it (fewer at the start):
// per-step curves are noisy.
std::vector<double> moving_average(const std::vector<double>& values, size_t window);
// The last validation's number under `key`, NaN when absent.
double last_validation(const RunMetrics& metrics, const std::string& key);
// The last validation's expert loads as load / mean load of the layer: [MoE layer, expert];
// empty when the run recorded none.
std::vector<std::vector<double>> relative_expert_loads(const RunMetrics& metrics);

// The last validation's balance per MoE layer (MaxVio_global, load CV, dead experts, routing
// entropy) as a Markdown table; empty when the run recorded none.
std::string balance_table(const RunMetrics& metrics);

// Plots of a run next to its metrics: <out_dir>/<stem>-loss.png (training and validation loss),
// <stem>-maxvio.png (MaxVio per batch, when recorded), <stem>-expert-load.png (the last
// validation's loads, layers x experts, when recorded). Returns the files written.
std::vector<std::filesystem::path> plot_training_metrics(const std::filesystem::path& metrics_jsonl,
                                                         const std::filesystem::path& out_dir);

}  // namespace megamoe
