#include "train/experiment.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "model/config.h"
#include "model/summary.h"
#include "report/plot.h"
#include "report/run_metrics.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/json_file.h"
#include "util/progress.h"

namespace megamoe::train {
namespace fs = std::filesystem;
using nlohmann::json;
namespace {

// The runs of one variant, one per seed, in seed order.
struct VariantResult {
  const ExperimentVariant* variant;
  ModelSummary summary;
  std::vector<RunMetrics> runs;
};

struct Spread {
  double mean = NAN, deviation = NAN;  // deviation: the sample standard deviation, NaN for one value
};

Spread spread(const std::vector<double>& values) {
  std::vector<double> finite;
  for (double v : values)
    if (std::isfinite(v)) finite.push_back(v);
  Spread s;
  if (finite.empty()) return s;
  s.mean = 0;
  for (double v : finite) s.mean += v / double(finite.size());
  if (finite.size() < 2) return s;
  double squares = 0;
  for (double v : finite) squares += (v - s.mean) * (v - s.mean);
  s.deviation = std::sqrt(squares / double(finite.size() - 1));
  return s;
}

// "1.2345 ± 0.0012" with `digits` decimals (scaled by `scale`, then `suffix`); "–" without values.
std::string format_spread(const Spread& s, int digits, double scale = 1, const char* suffix = "") {
  if (!std::isfinite(s.mean)) return "–";
  std::string text = fmt::format("{:.{}f}{}", s.mean * scale, digits, suffix);
  if (std::isfinite(s.deviation)) text += fmt::format(" ± {:.{}f}{}", s.deviation * scale, digits, suffix);
  return text;
}

double median(std::vector<double> values) {
  if (values.empty()) return NAN;
  std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
  return values[values.size() / 2];
}

// One number per run of a variant.
template <typename F>
Spread over_seeds(const VariantResult& result, F per_run) {
  std::vector<double> values;
  for (const RunMetrics& run : result.runs) values.push_back(per_run(run));
  return spread(values);
}

// The curve of `key` averaged over a variant's seeds (step by step) and smoothed over `window` steps.
Series mean_curve(const VariantResult& result, const std::string& key, bool validation, size_t window) {
  Series mean{result.variant->name, {}, {}};
  size_t runs = 0;
  for (const RunMetrics& run : result.runs) {
    std::vector<double> steps, values;
    metric_curve(&steps, &values, validation ? run.validations : run.steps, key);
    if (steps.empty()) continue;
    if (runs++ == 0) {
      mean.x = steps, mean.y = values;
      continue;
    }
    const size_t n = std::min(mean.y.size(), values.size());
    mean.x.resize(n), mean.y.resize(n);
    for (size_t i = 0; i < n; ++i) mean.y[i] += values[i];
  }
  for (double& y : mean.y) y /= double(std::max<size_t>(runs, 1));
  mean.y = moving_average(mean.y, window);
  return mean;
}

// The report's plots, written into `output`; returns Markdown image links.
std::string write_plots(const std::vector<VariantResult>& results, int64_t steps, const fs::path& output) {
  const size_t window = std::max<int64_t>(1, steps / 50);
  const std::string smoothed =
      window > 1 ? fmt::format(" (mean of seeds and of {} steps)", window) : " (mean of seeds)";
  std::string links;
  auto line_plot = [&](const std::string& file, const std::string& key, bool validation, LinePlot plot) {
    for (const VariantResult& result : results) {
      Series s = mean_curve(result, key, validation, validation ? 1 : window);
      if (!s.x.empty()) plot.series.push_back(std::move(s));
    }
    if (plot.series.empty()) return;
    plot_lines(output / file, plot);
    links += fmt::format("![{}]({})\n\n", plot.title, file);
  };
  line_plot("loss.png", "loss", false, {"Training loss" + smoothed, "step", "cross-entropy", {}, false});
  line_plot("val_loss.png", "val_loss", true, {"Validation loss (mean of seeds)", "step", "cross-entropy", {}, false});
  line_plot("maxvio.png", "maxvio_batch", false,
            {"MaxVio per batch, mean of MoE layers" + smoothed, "step", "MaxVio_batch", {}, true});
  for (const VariantResult& result : results) {
    const std::vector<std::vector<double>> loads = relative_expert_loads(result.runs.front());
    if (loads.empty()) continue;
    const std::string file = "load-" + result.variant->name + ".png";
    const std::string title = fmt::format("Expert loads on the validation set: {} (first seed)", result.variant->name);
    plot_heatmap(output / file, {title, "expert", "MoE layer", "load / mean load", loads});
    links += fmt::format("![{}]({})\n\n", title, file);
  }
  return links;
}

std::string results_table(const std::vector<VariantResult>& results) {
  std::string table =
      "| variant | parameters (active) | validation loss | MaxVio_global | load CV | dead experts | tokens/s |\n"
      "|---|---|---|---|---|---|---|\n";
  for (const VariantResult& r : results) {
    auto validation = [&](const char* key) {
      return over_seeds(r, [&](const RunMetrics& run) { return last_validation(run, key); });
    };
    const Spread tokens_per_s = over_seeds(r, [](const RunMetrics& run) {
      std::vector<double> steps, rates;
      metric_curve(&steps, &rates, run.steps, "tokens_per_s");
      return median(rates);
    });
    table += fmt::format("| {} | {} ({}) | {} | {} | {} | {} | {} |\n", r.variant->name,
                         format_si(double(r.summary.total_parameters)), format_si(double(r.summary.active_parameters)),
                         format_spread(validation("val_loss"), 4), format_spread(validation("maxvio_global"), 3),
                         format_spread(validation("load_cv"), 3),
                         format_spread(validation("dead_expert_share"), 1, 100, "%"), format_spread(tokens_per_s, 0));
  }
  return table;
}

// Whether the run `train` describes is already in its output, finished: the same config, seed,
// balancing, step count, batch shape and (when given) learning rate. Anything else trains anew.
bool finished(const TrainOptions& train, const json& config) {
  const fs::path state_path = train.output / "training" / "state.json";
  if (!fs::exists(state_path) || !fs::exists(train.metrics)) return false;
  const json state = read_json_file(state_path);
  const json h = state.value("hyperparameters", json::object());
  if (state.value("step", int64_t(-1)) != train.steps || h.value("balance", "") != to_string(*train.balance) ||
      h.value("seed", uint64_t(0)) != *train.seed || h.value("seq_len", int64_t(-1)) != train.seq_len ||
      h.value("batch_size", int64_t(-1)) != train.batch_size || (train.lr && h.value("lr", 0.0) != *train.lr) ||
      (train.balance_alpha && h.value("balance_alpha", 0.0) != *train.balance_alpha) ||
      (train.bias_update_rate && h.value("bias_update_rate", 0.0) != *train.bias_update_rate))
    return false;
  const json saved = read_json_file(train.output / "config.json");
  for (const auto& [key, value] : config.items())
    if (saved.value(key, json()) != value) return false;
  return true;
}

}  // namespace

std::vector<ExperimentVariant> balance_variants(const fs::path& model_config,
                                                const std::vector<BalanceStrategy>& strategies) {
  std::vector<ExperimentVariant> variants;
  for (BalanceStrategy s : strategies) variants.push_back({std::string(to_string(s)), model_config, nullptr, s});
  return variants;
}

std::vector<ExperimentVariant> pool_variants(const fs::path& model_config, const std::vector<int64_t>& group_sizes,
                                             BalanceStrategy balance) {
  const json base = read_json_file(model_config);
  const ModelConfig config = parse_model_config(base, model_config.string());
  const int64_t base_group = config.expert_sharing_group_size, base_experts = config.n_routed_experts;
  std::vector<ExperimentVariant> variants;
  for (int64_t g : group_sizes) {
    if (g < 1) fail("--group-sizes: {} is not a group size (at least 1)", g);
    if (base_experts * g % base_group != 0)
      fail("--group-sizes: {} routed experts x {} / {} (the config's group size) is not a whole number", base_experts,
           g, base_group);
    json derived = base;
    derived["expert_sharing_group_size"] = g;
    derived["n_routed_experts"] = base_experts * g / base_group;
    parse_model_config(derived, fmt::format("{} with expert_sharing_group_size {}", model_config.string(), g));
    variants.push_back({g == 1 ? "per-layer" : fmt::format("pool-{}", g), model_config, derived, balance});
  }
  return variants;
}

void run_experiment(const ExperimentOptions& o) {
  if (o.variants.empty()) fail("experiment: no variants to train");
  if (o.seeds < 1) fail("--seeds must be at least 1");
  if (o.train.steps < 1) fail("--steps must be at least 1");
  std::set<std::string> names;
  for (const ExperimentVariant& v : o.variants)
    if (!names.insert(v.name).second) fail("experiment: variant '{}' is given twice", v.name);
  if (fs::exists(o.output) && !fs::is_directory(o.output))
    fail("--output {}: exists and is not a directory", o.output.string());
  const fs::path runs_dir = o.output / "runs", data_dir = o.output / "data";
  fs::create_directories(runs_dir);
  fs::create_directories(data_dir);

  std::vector<ExperimentVariant> variants = o.variants;
  for (ExperimentVariant& v : variants) {
    if (v.derived.is_null()) continue;
    v.model_config = o.output / "configs" / (v.name + ".json");
    fs::create_directories(v.model_config.parent_path());
    AtomicFile file(v.model_config);
    file.write(v.derived.dump(2) + "\n");
    file.commit();
  }

  std::vector<VariantResult> results;
  const int64_t first_seed = int64_t(o.train.seed.value_or(0)), total = int64_t(o.variants.size()) * o.seeds;
  int64_t number = 0;
  for (const ExperimentVariant& variant : variants) {
    const json config = read_json_file(variant.model_config);
    VariantResult result{&variant, summarize(parse_model_config(config, variant.model_config.string()), nullptr), {}};
    for (int64_t seed = first_seed; seed < first_seed + o.seeds; ++seed) {
      const std::string name = fmt::format("{}-s{}", variant.name, seed);
      const fs::path run_dir = runs_dir / name, checkpoint = run_dir / "checkpoint",
                     metrics = run_dir / "metrics.jsonl";
      ++number;
      fs::create_directories(run_dir);
      TrainOptions train = o.train;
      train.model_config = variant.model_config;
      train.output = checkpoint;
      train.metrics = metrics;
      train.seed = uint64_t(seed);
      train.balance = variant.balance;
      train.resume = false;
      // Each strategy takes only its own parameter (the trainer refuses the others').
      if (variant.balance != BalanceStrategy::Bias) train.bias_update_rate.reset();
      if (variant.balance != BalanceStrategy::AuxLoss && variant.balance != BalanceStrategy::SeqAuxLoss)
        train.balance_alpha.reset();
      if (finished(train, config)) {
        std::fprintf(stderr, "experiment: run %lld/%lld %s: finished earlier, reused\n", (long long)number,
                     (long long)total, name.c_str());
      } else {
        std::fprintf(stderr, "experiment: run %lld/%lld %s (%s, --balance %s, --seed %lld)\n", (long long)number,
                     (long long)total, name.c_str(), variant.model_config.string().c_str(),
                     std::string(to_string(variant.balance)).c_str(), (long long)seed);
        fs::remove_all(checkpoint);  // an unfinished or different run starts again
        // The trainer keeps its tokenizer and token file in <checkpoint>.data: one shared directory.
        const fs::path link = run_dir / "checkpoint.data";
        if (!fs::is_symlink(link)) fs::create_directory_symlink(fs::path("..") / ".." / "data", link);
        run_training(train);
      }
      plot_training_metrics(metrics, run_dir);
      result.runs.push_back(read_run_metrics(metrics));
    }
    results.push_back(std::move(result));
  }

  const std::string table = results_table(results);
  const TrainOptions& t = o.train;
  std::string report = fmt::format("# {}\n\n", o.title);
  report += fmt::format(
      "Data `{}`; {} steps of {} x {} tokens, learning rate {}; seeds {}..{}; every run trained on the same tokens "
      "in the same order. Each number is the mean ± standard deviation over seeds of the last validation "
      "(MaxVio_global, load CV and dead experts: means over MoE layers; tokens/s: the median step).\n\n",
      t.data.string(), t.steps, t.batch_size, t.seq_len, t.lr ? fmt::format("{}", *t.lr) : "default", first_seed,
      first_seed + o.seeds - 1);
  report += "| variant | model config | balance |\n|---|---|---|\n";
  for (const ExperimentVariant& v : variants)
    report += fmt::format("| {} | `{}` | {} |\n", v.name, v.model_config.string(), to_string(v.balance));
  report += "\n" + table + "\n" + write_plots(results, t.steps, o.output);
  report += "Each run (checkpoint, metrics.jsonl, its own plots) is under `runs/<variant>-s<seed>/`.\n";
  AtomicFile file(o.output / "report.md");
  file.write(report);
  file.commit();
  std::printf("%s\nreport: %s\n", table.c_str(), (o.output / "report.md").string().c_str());
}

}  // namespace megamoe::train
