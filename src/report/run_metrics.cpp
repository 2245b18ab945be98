#include "report/run_metrics.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>

#include "report/plot.h"
#include "util/error.h"

namespace megamoe {
namespace fs = std::filesystem;
using nlohmann::json;

RunMetrics read_run_metrics(const fs::path& jsonl) {
  std::ifstream in(jsonl);
  if (!in) fail("{}: cannot open the metrics file", jsonl.string());
  RunMetrics metrics;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, false);
    if (!j.is_object()) fail("{}: line {} is not a JSON object", jsonl.string(), number);
    if (j.contains("val_loss")) metrics.validations.push_back(std::move(j));
    else if (j.contains("loss")) metrics.steps.push_back(std::move(j));
  }
  return metrics;
}

void metric_curve(std::vector<double>* steps, std::vector<double>* values, const std::vector<json>& lines,
                  const std::string& key) {
  for (const json& line : lines) {
    const auto it = line.find(key);
    if (it == line.end() || !it->is_number() || !line.contains("step")) continue;
    steps->push_back(line["step"].get<double>());
    values->push_back(it->get<double>());
  }
}

std::vector<double> moving_average(const std::vector<double>& values, size_t window) {
  std::vector<double> averaged(values.size());
  double sum = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    sum += values[i];
    if (i >= window) sum -= values[i - window];
    averaged[i] = sum / double(std::min(i + 1, window));
  }
  return averaged;
}

double last_validation(const RunMetrics& metrics, const std::string& key) {
  if (metrics.validations.empty()) return NAN;
  const json& line = metrics.validations.back();
  const auto it = line.find(key);
  return it != line.end() && it->is_number() ? it->get<double>() : NAN;
}

std::vector<std::vector<double>> relative_expert_loads(const RunMetrics& metrics) {
  std::vector<std::vector<double>> loads;
  if (metrics.validations.empty() || !metrics.validations.back().contains("expert_loads")) return loads;
  try {
    loads = metrics.validations.back()["expert_loads"].get<std::vector<std::vector<double>>>();
  } catch (const json::exception& e) {
    fail("metrics: 'expert_loads' is not a list of lists of numbers: {}", e.what());
  }
  for (std::vector<double>& layer : loads) {
    double mean = 0;
    for (double load : layer) mean += load;
    mean /= double(std::max<size_t>(layer.size(), 1));
    for (double& load : layer) load = mean > 0 ? load / mean : 0;
  }
  return loads;
}

std::string balance_table(const RunMetrics& metrics) {
  if (metrics.validations.empty()) return "";
  const json& line = metrics.validations.back();
  const char* keys[] = {"maxvio_global", "load_cv", "dead_expert_share", "routing_entropy"};
  auto cell = [](const char* key, double value) {
    return std::string(key) == "dead_expert_share" ? fmt::format("{:.1f}%", 100 * value) : fmt::format("{:.3f}", value);
  };
  if (!line.contains("maxvio_global")) return "";
  std::string table = fmt::format(
      "Expert balance on the validation set (step {}):\n\n| MoE layer | MaxVio_global | load CV | dead experts | "
      "routing entropy / log E |\n|---|---|---|---|---|\n",
      line.value("step", int64_t(0)));
  const json per_layer = line.value("maxvio_global_per_layer", json::array());
  for (size_t layer = 0; layer < per_layer.size(); ++layer) {
    table += fmt::format("| {} |", layer);
    for (const char* key : keys) {
      const json values = line.value(std::string(key) + "_per_layer", json::array());
      const bool known = layer < values.size() && values[layer].is_number();
      table += fmt::format(" {} |", known ? cell(key, values[layer].get<double>()) : "–");
    }
    table += "\n";
  }
  table += "| **mean** |";
  for (const char* key : keys) {
    const bool known = line.contains(key) && line[key].is_number();
    table += fmt::format(" {} |", known ? cell(key, line[key].get<double>()) : "–");
  }
  return table + "\n";
}

std::vector<fs::path> plot_training_metrics(const fs::path& metrics_jsonl, const fs::path& out_dir) {
  const RunMetrics metrics = read_run_metrics(metrics_jsonl);
  const std::string stem = metrics_jsonl.stem().string();
  std::vector<fs::path> written;
  const size_t window = std::max<size_t>(1, metrics.steps.size() / 50);
  LinePlot loss{"Loss: " + stem, "step", "cross-entropy", {}, false};
  Series train{window > 1 ? fmt::format("training (mean of {} steps)", window) : "training", {}, {}};
  metric_curve(&train.x, &train.y, metrics.steps, "loss");
  train.y = moving_average(train.y, window);
  Series validation{"validation", {}, {}};
  metric_curve(&validation.x, &validation.y, metrics.validations, "val_loss");
  for (Series* s : {&train, &validation})
    if (!s->x.empty()) loss.series.push_back(std::move(*s));
  if (!loss.series.empty()) {
    written.push_back(out_dir / (stem + "-loss.png"));
    plot_lines(written.back(), loss);
  }
  Series maxvio{window > 1 ? fmt::format("mean of MoE layers, of {} steps", window) : "mean of MoE layers", {}, {}};
  metric_curve(&maxvio.x, &maxvio.y, metrics.steps, "maxvio_batch");
  if (!maxvio.x.empty()) {
    maxvio.y = moving_average(maxvio.y, window);
    written.push_back(out_dir / (stem + "-maxvio.png"));
    plot_lines(written.back(), {"MaxVio per batch: " + stem, "step", "MaxVio_batch", {maxvio}, true});
  }
  const std::vector<std::vector<double>> loads = relative_expert_loads(metrics);
  if (!loads.empty()) {
    written.push_back(out_dir / (stem + "-expert-load.png"));
    plot_heatmap(written.back(), {fmt::format("Expert loads on the validation set (step {}): {}",
                                              metrics.validations.back().value("step", int64_t(0)), stem),
                                  "expert", "MoE layer", "load / mean load", loads});
  }
  return written;
}

}  // namespace megamoe
