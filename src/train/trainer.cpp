#include "train/trainer.h"

#include <omp.h>
#include <signal.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "dist/communicator.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "moe/expert_stats.h"
#include "runtime/generation.h"
#include "tokenizer/bpe_trainer.h"
#include "train/data.h"
#include "train/optimizer.h"
#include "train/trainable_model.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/json_file.h"
#include "util/progress.h"
#include "util/random.h"

namespace megamoe::train {
namespace fs = std::filesystem;
using nlohmann::json;
namespace {

// The trainer's state lives in a subdirectory, which Hugging Face loaders and megamoe's checkpoint
// reader (both take the *.safetensors files of the directory itself) do not look into.
constexpr const char* kTrainingDir = "training";
constexpr const char* kStateFile = "training/state.json";
constexpr const char* kOptimizerFile = "training/optimizer.safetensors";
constexpr int kStateFormat = 1;
// Keys of config.json that the trainer writes itself (from the tokenizer and the saved dtype).
const std::set<std::string> kDerivedConfigKeys = {"bos_token_id", "eos_token_id", "torch_dtype"};

// Data parallelism under mpirun (docs/distributed.md): each rank trains on its share of every
// global batch and the ranks sum what the global batch's numbers need, so N ranks step exactly as
// one process with N times the batch. Only rank 0 writes (checkpoints, metrics, progress, samples).
bool leader() { return dist::rank() == 0; }

// In place: the sums over the ranks (nothing in one process).
void sum_over_ranks(std::span<double> values) {
  if (dist::distributed()) dist::all_reduce_sum(values);
}
void sum_over_ranks(std::vector<std::vector<int64_t>>* loads) {  // [MoE layer][expert]
  if (!dist::distributed()) return;
  std::vector<int64_t> flat;
  for (const auto& layer : *loads) flat.insert(flat.end(), layer.begin(), layer.end());
  dist::all_reduce_sum(std::span<int64_t>(flat));
  for (size_t i = 0, at = 0; i < loads->size(); at += (*loads)[i].size(), ++i)
    std::copy_n(flat.begin() + int64_t(at), (*loads)[i].size(), (*loads)[i].begin());
}

void write_file(const fs::path& path, std::string_view content) {
  AtomicFile file(path);
  file.write(content);
  file.commit();
}

// The settings that decide the numbers a run produces; a resumed run must keep them.
struct Hyperparameters {
  int64_t batch_size = 0, seq_len = 0, warmup_steps = 0;
  double lr = 1e-3, min_lr_ratio = 0.1, weight_decay = 0.1, grad_clip = 1.0, val_fraction = 0.1;
  uint64_t seed = 0;
  AdamWSettings adamw;
  BalanceLoss balance;          // strategy, and alpha of the auxiliary losses (0 otherwise)
  double bias_update_rate = 0;  // u of the Bias strategy (0 otherwise)

  json to_json() const {
    return {{"batch_size", batch_size},
            {"seq_len", seq_len},
            {"lr", lr},
            {"warmup_steps", warmup_steps},
            {"min_lr_ratio", min_lr_ratio},
            {"weight_decay", weight_decay},
            {"grad_clip", grad_clip},
            {"val_fraction", val_fraction},
            {"seed", seed},
            {"beta1", adamw.beta1},
            {"beta2", adamw.beta2},
            {"eps", adamw.eps},
            {"balance", std::string(to_string(balance.strategy))},
            {"balance_alpha", balance.alpha},
            {"bias_update_rate", bias_update_rate}};
  }
};

const std::pair<BalanceStrategy, std::string_view> kBalanceNames[] = {{BalanceStrategy::None, "none"},
                                                                      {BalanceStrategy::AuxLoss, "aux-loss"},
                                                                      {BalanceStrategy::SeqAuxLoss, "seq-aux-loss"},
                                                                      {BalanceStrategy::Bias, "bias"}};

// The flags' values, or a resumed run's: a flag given with another value than the run's is an error.
Hyperparameters resolve_hyperparameters(const TrainOptions& o, const json* saved_run, const fs::path& state_path) {
  Hyperparameters h;
  // Runs saved before balancing strategies existed trained without one.
  json saved_with_defaults = saved_run ? *saved_run : json();
  if (saved_run)
    for (auto [key, value] :
         {std::pair<const char*, json>{"balance", "none"}, {"balance_alpha", 0.0}, {"bias_update_rate", 0.0}})
      if (!saved_with_defaults.contains(key)) saved_with_defaults[key] = value;
  const json* saved = saved_run ? &saved_with_defaults : nullptr;
  auto pick = [&]<typename T>(const char* key, const char* flag, const std::optional<T>& given, T fallback) {
    if (!saved) return given.value_or(fallback);
    if (!saved->contains(key)) fail("{}: missing hyperparameter '{}'", state_path.string(), key);
    T value;
    try {
      value = (*saved)[key].get<T>();
    } catch (const json::exception& e) {
      fail("{}: hyperparameter '{}': {}", state_path.string(), key, e.what());
    }
    if (given && *given != value)
      fail("--resume: {} {} differs from the run's {} (in {}); resume with the same value", flag, json(*given).dump(),
           json(value).dump(), state_path.string());
    return value;
  };
  // The global batch: a run resumes with any number of ranks that splits it.
  h.batch_size = pick("batch_size", dist::distributed() ? "--batch-size times the ranks" : "--batch-size",
                      std::optional<int64_t>(o.batch_size * dist::size()), int64_t(0));
  h.seq_len = pick("seq_len", "--seq-len", std::optional<int64_t>(o.seq_len), int64_t(0));
  h.lr = pick("lr", "--lr", o.lr, h.lr);
  h.warmup_steps = pick("warmup_steps", "--warmup-steps", o.warmup_steps, std::min<int64_t>(100, o.steps / 10));
  h.min_lr_ratio = pick("min_lr_ratio", "--min-lr-ratio", o.min_lr_ratio, h.min_lr_ratio);
  h.weight_decay = pick("weight_decay", "--weight-decay", o.weight_decay, h.weight_decay);
  h.grad_clip = pick("grad_clip", "--grad-clip", o.grad_clip, h.grad_clip);
  h.val_fraction = pick("val_fraction", "--val-fraction", o.val_fraction, h.val_fraction);
  h.seed = pick("seed", "--seed", o.seed, h.seed);
  const std::optional<std::string> balance_name =
      o.balance ? std::optional<std::string>(to_string(*o.balance)) : std::nullopt;
  h.balance.strategy = parse_balance_strategy(pick("balance", "--balance", balance_name, std::string("none")),
                                              state_path.string() + ": hyperparameter 'balance'");
  const bool aux = h.balance.on(), bias = h.balance.strategy == BalanceStrategy::Bias;
  if (o.balance_alpha && !aux) fail("--balance-alpha applies to --balance aux-loss or seq-aux-loss only");
  if (o.bias_update_rate && !bias) fail("--bias-update-rate applies to --balance bias only");
  const double default_alpha = h.balance.strategy == BalanceStrategy::AuxLoss ? 1e-2 : 1e-4;
  h.balance.alpha = pick("balance_alpha", "--balance-alpha", o.balance_alpha, aux ? default_alpha : 0.0);
  h.bias_update_rate = pick("bias_update_rate", "--bias-update-rate", o.bias_update_rate, bias ? 1e-3 : 0.0);
  if (h.batch_size < 1) fail("--batch-size must be at least 1");
  if (h.seq_len < 1) fail("--seq-len must be at least 1");
  if (h.lr <= 0) fail("--lr must be positive");
  if (h.warmup_steps < 0) fail("--warmup-steps must not be negative");
  if (h.min_lr_ratio < 0 || h.min_lr_ratio > 1) fail("--min-lr-ratio must be in [0, 1]");
  if (h.weight_decay < 0) fail("--weight-decay must not be negative");
  if (h.val_fraction < 0 || h.val_fraction >= 1) fail("--val-fraction must be in [0, 1)");
  if (aux && !(h.balance.alpha > 0 && std::isfinite(h.balance.alpha)))
    fail("--balance-alpha must be a positive number");
  if (bias && !(h.bias_update_rate > 0 && std::isfinite(h.bias_update_rate)))
    fail("--bias-update-rate must be a positive number");
  return h;
}

// A balancing strategy needs MoE layers; the Bias strategy needs router biases. Greedy and
// group-limited gates have none, and refusing beats adding one: inference of such a config reads
// no e_score_correction_bias, so it would route differently from training (set 'topk_method' to
// noaux_tc for a gate with a bias).
void check_balance(const Hyperparameters& h, const ModelConfig& c, const fs::path& config_path) {
  if (h.balance.strategy == BalanceStrategy::None) return;
  if (c.moe_layer_count() == 0)
    fail("--balance {}: the model of {} has no MoE layer", to_string(h.balance.strategy), config_path.string());
  if (h.balance.strategy == BalanceStrategy::Bias && !c.has_bias())
    fail(
        "--balance bias needs a router bias (e_score_correction_bias), which only 'topk_method': \"noaux_tc\" "
        "gates have; {} has another gate (inference would ignore a bias trained for it)",
        config_path.string());
}

// A --resume must continue the same model: the first key whose value differs is the error.
void check_same_config(const json& run, const json& given, const fs::path& run_path, const fs::path& given_path) {
  std::set<std::string> keys;
  for (const json* j : {&run, &given})
    for (auto it = j->begin(); it != j->end(); ++it) keys.insert(it.key());
  for (const std::string& key : keys) {
    if (kDerivedConfigKeys.count(key)) continue;
    const json a = run.value(key, json()), b = given.value(key, json());
    if (a != b)
      fail("--resume: {} was trained with another model config: '{}' is {} there but {} in {}", run_path.string(), key,
           a.is_null() ? "absent" : a.dump(), b.is_null() ? "absent" : b.dump(), given_path.string());
  }
}

// A tokenizer and the bytes of its files, copied into every checkpoint.
struct TokenizerFiles {
  std::optional<Tokenizer> tokenizer;
  std::vector<std::pair<std::string, std::string>> files;  // (name, content)
  std::string digest;
};

TokenizerFiles load_tokenizer_files(const fs::path& path) {
  const fs::path dir = fs::is_directory(path) ? path : path.parent_path();
  const fs::path json_path = fs::is_directory(path) ? path / "tokenizer.json" : path;
  TokenizerFiles t;
  t.tokenizer = Tokenizer::load(path);
  t.files.emplace_back("tokenizer.json", read_text_file(json_path));
  if (fs::exists(dir / "tokenizer_config.json"))
    t.files.emplace_back("tokenizer_config.json", read_text_file(dir / "tokenizer_config.json"));
  std::string all;
  for (const auto& [name, content] : t.files) all += name + '\0' + content + '\0';
  t.digest = content_digest(all);
  return t;
}

// Trains a BPE tokenizer of the config's vocabulary size on the data, once per data and size:
// it is kept in <output>.data/tokenizer-<data digest>-<size>/.
TokenizerFiles train_tokenizer(std::span<const fs::path> files, const std::string& data_digest, int64_t vocab_size,
                               const fs::path& data_dir) {
  const fs::path dir = data_dir / fmt::format("tokenizer-{}-{}", data_digest, vocab_size);
  if (!fs::exists(dir / "tokenizer.json")) {
    BpeTrainingOptions options;
    const int64_t minimum = 256 + int64_t(options.added_tokens.size());
    if (vocab_size < minimum)
      fail(
          "'vocab_size': {} is too small to train a byte-level BPE tokenizer (at least {}: 256 bytes and {} special "
          "tokens); give --tokenizer or a larger vocab_size",
          vocab_size, minimum, options.added_tokens.size());
    options.vocab_size = int32_t(std::min<int64_t>(vocab_size, INT32_MAX));
    BpeTrainer trainer(options);
    std::fprintf(stderr, "megamoe: training a tokenizer of %lld tokens on %zu file(s)\n", (long long)vocab_size,
                 files.size());
    for (const fs::path& file : files) trainer.add_text(read_text_file(file), file.string());
    fs::create_directories(data_dir);
    save_tokenizer(trainer.train(), dir);
  }
  return load_tokenizer_files(dir);
}

// A resumed run's tokenizer (which --tokenizer may repeat), --tokenizer, or one trained on the data.
TokenizerFiles choose_tokenizer(const TrainOptions& o, const ModelConfig& config, std::span<const fs::path> files,
                                const std::string& data_digest, const fs::path& data_dir) {
  TokenizerFiles tokenizer;
  if (o.resume) {
    tokenizer = load_tokenizer_files(o.output);
    if (!o.tokenizer.empty() && load_tokenizer_files(o.tokenizer).digest != tokenizer.digest)
      fail("--resume: --tokenizer {} differs from the tokenizer of the run in {}", o.tokenizer.string(),
           o.output.string());
  } else if (!o.tokenizer.empty()) {
    tokenizer = load_tokenizer_files(o.tokenizer);
  } else {
    tokenizer = train_tokenizer(files, data_digest, config.vocab_size, data_dir);
  }
  if (tokenizer.tokenizer->vocab_size() > config.vocab_size)
    fail("'vocab_size' is {} in {} but the tokenizer has {} tokens", config.vocab_size, o.model_config.string(),
         tokenizer.tokenizer->vocab_size());
  return tokenizer;
}

// Metrics, one JSON object per line; flushed line by line so a killed run loses nothing written.
class MetricsFile {
 public:
  // A resumed run first drops the lines of steps after `resumed_step` (work the checkpoint lost).
  MetricsFile(const fs::path& path, std::optional<int64_t> resumed_step) : path_(path) {
    if (path.empty()) return;
    if (resumed_step && fs::exists(path)) {
      std::ifstream in(path);
      std::string line, kept;
      while (std::getline(in, line)) {
        const json j = json::parse(line, nullptr, false);
        if (j.is_object() && j.value("step", int64_t(0)) > *resumed_step) continue;
        kept += line + "\n";
      }
      write_file(path, kept);
    }
    file_ = std::fopen(path.c_str(), resumed_step ? "a" : "w");
    if (!file_) fail("--metrics {}: cannot open for writing: {}", path.string(), std::strerror(errno));
  }
  ~MetricsFile() {
    if (file_) std::fclose(file_);
  }
  void write(const json& line) {
    if (!file_) return;
    const std::string text = line.dump() + "\n";
    if (std::fputs(text.c_str(), file_) < 0 || std::fflush(file_) != 0)
      fail("--metrics {}: write failed: {}", path_.string(), std::strerror(errno));
  }

 private:
  fs::path path_;
  std::FILE* file_ = nullptr;
};

// Where a run stands: what --resume restores besides the weights and moments.
struct RunState {
  int64_t step = 0;          // optimizer steps done
  int64_t windows_read = 0;  // training windows consumed (the data position)
  uint64_t rng_state = 0;    // the run's random stream (initialization, then the sampled lines)
};

struct Run {
  const TrainOptions& options;
  Hyperparameters hyper;
  json config_json;  // as written to config.json
  TokenizerFiles tokenizer;
  std::string data_digest;
  TrainableModel& model;
  AdamW& optimizer;
};

void save_checkpoint(const Run& run, const RunState& state) {
  const TrainOptions& o = run.options;
  const ParameterLayout& layout = run.model.layout();
  const float* params = run.model.parameters().data();
  try {
    AtomicDirectory dir(o.output);
    write_file(dir.path() / "config.json", run.config_json.dump(2) + "\n");
    for (const auto& [name, content] : run.tokenizer.files) write_file(dir.path() / name, content);
    write_safetensors(dir.path() / "model.safetensors", parameter_tensors(params, layout, o.save_dtype),
                      {{"format", "pt"}});
    fs::create_directory(dir.path() / kTrainingDir);
    // AdamW's moments, and the fp32 master weights when the model is saved in BF16.
    std::vector<TensorToWrite> optimizer =
        parameter_tensors(run.optimizer.first_moments().data(), layout, SavedDType::F32, ".exp_avg");
    for (TensorToWrite& t :
         parameter_tensors(run.optimizer.second_moments().data(), layout, SavedDType::F32, ".exp_avg_sq"))
      optimizer.push_back(std::move(t));
    if (o.save_dtype != SavedDType::F32)
      for (TensorToWrite& t : parameter_tensors(params, layout, SavedDType::F32, ".master"))
        optimizer.push_back(std::move(t));
    write_safetensors(dir.path() / kOptimizerFile, optimizer);
    const json state_json = {{"format", kStateFormat},
                             {"step", state.step},
                             {"windows_read", state.windows_read},
                             {"rng_state", state.rng_state},
                             {"data", run.data_digest},
                             {"tokenizer", run.tokenizer.digest},
                             {"hyperparameters", run.hyper.to_json()}};
    write_file(dir.path() / kStateFile, state_json.dump(2) + "\n");
    dir.commit();
  } catch (const std::exception& e) {
    rethrow_with_context(fmt::format("saving the checkpoint of step {} to {}", state.step, o.output.string()), e);
  }
}

RunState load_checkpoint(const Run& run, const json& state_json, const fs::path& state_path) {
  const fs::path& dir = run.options.output;
  if (state_json.value("format", 0) != kStateFormat)
    fail("{}: unknown format {} (expected {})", state_path.string(), state_json.value("format", json()).dump(),
         kStateFormat);
  if (state_json.value("tokenizer", "") != run.tokenizer.digest)
    fail("--resume: the tokenizer differs from the one the run in {} was trained with", dir.string());
  if (state_json.value("data", "") != run.data_digest)
    fail("--resume: the text of --data {} differs from the text the run in {} was trained on",
         run.options.data.string(), dir.string());
  RunState state;
  try {
    state.step = state_json.at("step").get<int64_t>();
    state.windows_read = state_json.at("windows_read").get<int64_t>();
    state.rng_state = state_json.at("rng_state").get<uint64_t>();
  } catch (const json::exception& e) {
    fail("{}: {}", state_path.string(), e.what());
  }
  const ParameterLayout& layout = run.model.layout();
  const auto optimizer = SafetensorsFile::open(dir / kOptimizerFile);
  float* params = run.model.parameters().data();
  if (optimizer->find(layout.tensors.front().name + ".master")) {
    read_parameter_tensors(params, layout, *optimizer, ".master");
  } else {
    const auto model = SafetensorsFile::open(dir / "model.safetensors");
    read_parameter_tensors(params, layout, *model);
  }
  read_parameter_tensors(run.optimizer.first_moments().data(), layout, *optimizer, ".exp_avg");
  read_parameter_tensors(run.optimizer.second_moments().data(), layout, *optimizer, ".exp_avg_sq");
  return state;
}

// Mean loss over the validation windows (at most eval_batches global batches), read in order and
// split between the ranks; `loads` [MoE layer][expert] receives the tokens each routed expert got.
double validation_loss(TrainableModel& model, const WindowReader& windows, int64_t max_batches,
                       std::vector<int32_t>& rows, std::vector<std::vector<int64_t>>* loads) {
  const int64_t B = model.max_sequences(), count = std::min(windows.windows(), max_batches * B * dist::size());
  const int64_t begin = count * dist::rank() / dist::size(), end = count * (dist::rank() + 1) / dist::size();
  const std::vector<int64_t>& moe_layers = model.moe_layers();
  loads->assign(moe_layers.size(), std::vector<int64_t>(model.config().n_routed_experts, 0));
  double total = 0;
  for (int64_t first = begin; first < end; first += B) {
    const int64_t n = std::min(B, end - first);
    windows.read(rows.data(), first, n);
    total += model.forward(rows.data(), n, /*for_backward=*/false) * double(n);
    for (size_t i = 0; i < moe_layers.size(); ++i) {
      const std::vector<int64_t> counts = model.expert_counts(moe_layers[i]);
      for (size_t e = 0; e < counts.size(); ++e) (*loads)[i][e] += counts[e];
    }
  }
  sum_over_ranks(std::span<double>(&total, 1));
  sum_over_ranks(loads);
  return total / double(count);
}

// A few lines from the saved model, each from BOS alone, to see what it learned.
void print_samples(const fs::path& dir, int64_t lines, int64_t tokens, Random& random) {
  if (lines <= 0 || tokens <= 0) return;
  const std::unique_ptr<Model> model = load_model(dir);
  const Tokenizer tokenizer = Tokenizer::load(dir);
  std::vector<int32_t> prompt;
  std::optional<int32_t> eos;
  try {
    prompt.push_back(tokenizer.bos_id());
    eos = tokenizer.eos_id();
  } catch (const Error&) {
    prompt.push_back(0);
  }
  std::vector<std::unique_ptr<Sequence>> sequences;
  std::vector<Sequence*> batch;
  for (int64_t i = 0; i < lines; ++i) {
    GenerationParams params;
    params.sampling.temperature = 0.8f;
    params.sampling.top_k = 40;
    params.sampling.seed = random.next();
    params.max_tokens = tokens;
    sequences.push_back(std::make_unique<Sequence>(*model, prompt, params, &tokenizer, eos, tokens + 1));
    batch.push_back(sequences.back().get());
  }
  while (std::any_of(batch.begin(), batch.end(), [](Sequence* s) { return !s->finished(); }))
    step_batch(*model, batch);  // steps the unfinished ones
  for (int64_t i = 0; i < lines; ++i) {
    std::string text = sequences[i]->text();
    for (char& ch : text)
      if (ch == '\n' || ch == '\r') ch = ' ';
    std::printf("sample %lld: %s\n", (long long)(i + 1), text.c_str());
  }
  std::fflush(stdout);
}

// Removes what saves killed midway left beside `output` (AtomicDirectory's "<output>.tmp.<pid>"),
// unless that process still runs.
void remove_abandoned_saves(const fs::path& output) {
  const fs::path parent = output.parent_path().empty() ? fs::path(".") : output.parent_path();
  const std::string prefix = output.filename().string() + ".tmp.";
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(parent, ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(prefix)) continue;
    const std::string pid = name.substr(prefix.size());
    if (pid.empty() || !std::all_of(pid.begin(), pid.end(), ::isdigit)) continue;
    if (::kill(pid_t(std::stol(pid)), 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to judge
    fs::remove_all(entry.path(), ec);
  }
}

// Steps from state.step to --steps (or --stop-at), with validation, metrics and checkpoints.
void train_steps(const Run& run, RunState& state, const WindowReader& train_windows,
                 const WindowReader& validation_windows, MetricsFile& metrics) {
  using Clock = std::chrono::steady_clock;
  const TrainOptions& o = run.options;
  TrainableModel& model = run.model;
  const int64_t B = run.hyper.batch_size, T = run.hyper.seq_len;  // B: the global batch
  const int64_t rank_B = model.max_sequences();                   // this rank's share of it
  const LearningRateSchedule schedule{run.hyper.lr, run.hyper.min_lr_ratio, run.hyper.warmup_steps, o.steps};
  std::vector<int32_t> rows(size_t(rank_B * (T + 1)));  // [rank_B, T+1]
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> no_output(leader() ? nullptr : std::fopen("/dev/null", "w"),
                                                                  &std::fclose);
  Progress progress("train", o.steps, "steps", state.step, leader() ? stderr : no_output.get());
  std::string last_validation;
  while (state.step < o.steps) {
    const auto start = Clock::now();
    train_windows.read(rows.data(), state.windows_read + dist::rank() * rank_B, rank_B);
    // The gradients are zero here: from the start, and AdamW::update consumes them.
    double loss = model.forward(rows.data(), rank_B);  // cross-entropy; the auxiliary loss apart
    model.backward();
    std::vector<std::vector<int64_t>> batch_loads;  // [MoE layer][expert] of the global batch
    for (int64_t L : model.moe_layers()) batch_loads.push_back(model.expert_counts(L));
    if (dist::distributed()) {  // the global batch's mean loss and its gradient
      sum_over_ranks(std::span<double>(&loss, 1));
      loss /= double(dist::size());
      dist::all_reduce_sum(model.gradients());
      for (float& g : model.gradients()) g /= float(dist::size());
      sum_over_ranks(&batch_loads);
    }
    const double grad_norm = clip_gradient_norm(model.gradients(), run.hyper.grad_clip);
    const double lr = schedule.at(state.step);
    run.optimizer.update(model.parameters(), model.gradients(), lr, state.step + 1);
    if (run.hyper.balance.strategy == BalanceStrategy::Bias)
      model.update_router_biases(run.hyper.bias_update_rate, batch_loads);
    state.windows_read += B;
    ++state.step;
    const double tokens_per_s = double(B * T) / std::chrono::duration<double>(Clock::now() - start).count();
    json line = {{"step", state.step},
                 {"loss", loss},
                 {"lr", lr},
                 {"grad_norm", grad_norm},
                 {"tokens_per_s", tokens_per_s},
                 {"epoch", double(state.windows_read) / double(train_windows.windows())}};
    if (run.hyper.balance.on()) line["aux_loss"] = model.aux_loss();
    if (!batch_loads.empty()) {
      const json stats = load_stats_json(batch_loads, "maxvio_batch", /*with_loads=*/false);
      line["maxvio_batch"] = stats["maxvio_batch"];
      line["maxvio_batch_per_layer"] = stats["maxvio_batch_per_layer"];
    }
    metrics.write(line);

    const bool last = state.step == o.steps, stopping = state.step == o.stop_at;
    if (validation_windows.windows() > 0 && ((o.eval_every > 0 && state.step % o.eval_every == 0) || last)) {
      std::vector<std::vector<int64_t>> loads;  // [MoE layer][expert]
      const double val_loss = validation_loss(model, validation_windows, o.eval_batches, rows, &loads);
      json line = {{"step", state.step}, {"val_loss", val_loss}};
      std::vector<int64_t> pool_of;  // [MoE layer]
      for (int64_t L : model.moe_layers()) pool_of.push_back(model.config().expert_pool_of_layer(L));
      if (!loads.empty()) line.update(load_stats_json(loads, "maxvio_global", /*with_loads=*/true, pool_of));
      metrics.write(line);
      last_validation = fmt::format(" | val {:.4f}", val_loss);
      progress.message(fmt::format("step {}: validation loss {:.4f}", state.step, val_loss));
    }
    progress.update(state.step,
                    fmt::format("loss {:.4f}{} | {} tok/s", loss, last_validation, format_si(tokens_per_s)));
    if (((o.save_every > 0 && state.step % o.save_every == 0) || last || stopping) && leader())
      save_checkpoint(run, state);
    if (stopping) break;
  }
  progress.finish();
}

}  // namespace

void run_training(const TrainOptions& o) {
  if (o.steps < 0) fail("--steps must not be negative");
  if (o.eval_every < 0 || o.save_every < 0 || o.sample_lines < 0 || o.sample_tokens < 0)
    fail("--eval-every, --save-every, --sample-lines and --sample-tokens must not be negative");
  if (o.eval_batches < 1) fail("--eval-batches must be at least 1");
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const fs::path data_dir = fs::path(o.output.string() + ".data");  // token file and trained tokenizers
  const fs::path state_path = o.output / kStateFile;
  if (leader()) remove_abandoned_saves(o.output);

  // The run's settings: from the flags, or checked against the run being resumed.
  json state_json;
  if (o.resume) {
    if (!fs::exists(state_path))
      fail("--resume: {} holds no {} (it is not the output of megamoe train)", o.output.string(), kStateFile);
    state_json = read_json_file(state_path);
    if (!state_json.contains("hyperparameters") || !state_json["hyperparameters"].is_object())
      fail("{}: missing 'hyperparameters'", state_path.string());
  } else if (fs::exists(o.output) && !(fs::is_directory(o.output) && fs::is_empty(o.output))) {
    fail("--output {} already exists{}; choose another directory", o.output.string(),
         fs::exists(state_path) ? " and holds a training run (continue it with --resume)" : "");
  }
  const Hyperparameters hyper =
      resolve_hyperparameters(o, o.resume ? &state_json["hyperparameters"] : nullptr, state_path);
  json config_json = read_json_file(o.model_config);
  const ModelConfig config = parse_model_config(config_json, o.model_config.string());
  if (o.resume)
    check_same_config(read_json_file(o.output / "config.json"), config_json, o.output / "config.json", o.model_config);
  if (hyper.seq_len > config.max_position_embeddings)
    fail("--seq-len {} is longer than the model's context: 'max_position_embeddings' is {} in {}", hyper.seq_len,
         config.max_position_embeddings, o.model_config.string());
  check_trainable(config);  // before any work
  check_balance(hyper, config, o.model_config);

  // Tokenizer and tokens.
  const std::vector<fs::path> files = list_data_files(o.data);
  const std::string data_digest = data_fingerprint(o.data, files);
  // Rank 0 trains the tokenizer and tokenizes the text; then the other ranks read what it wrote.
  if (dist::distributed() && !leader()) dist::barrier();
  const TokenizerFiles tokenizer = choose_tokenizer(o, config, files, data_digest, data_dir);
  const TokenFile token_file =
      TokenFile::prepare(data_dir / "tokens.safetensors", files, data_digest, *tokenizer.tokenizer, tokenizer.digest);
  if (dist::distributed()) {
    if (leader()) dist::barrier();
    dist::check_same(data_digest + " " + tokenizer.digest, "the training data or tokenizer");
  }
  const DataSplit split =
      split_tokens(token_file.tokens(), hyper.val_fraction, hyper.seq_len, "--data " + o.data.string());
  const WindowReader train_windows(split.train, hyper.seq_len), validation_windows(split.validation, hyper.seq_len);

  // config.json of the checkpoint: the training config with the tokenizer's special tokens.
  for (const char* key : {"bos_token_id", "eos_token_id"}) config_json.erase(key);
  try {
    config_json["bos_token_id"] = tokenizer.tokenizer->bos_id();
    config_json["eos_token_id"] = tokenizer.tokenizer->eos_id();
  } catch (const Error&) {  // a tokenizer without them
  }
  config_json["torch_dtype"] = o.save_dtype == SavedDType::F32 ? "float32" : "bfloat16";

  TrainableModel model(config, hyper.batch_size / dist::size(), hyper.seq_len);
  BalanceLoss balance = hyper.balance;
  if (dist::distributed()) balance.sum_over_ranks = [](std::span<double> sums) { dist::all_reduce_sum(sums); };
  model.set_balance_loss(balance);
  AdamW optimizer(model.layout(), hyper.adamw);
  const Run run{o, hyper, config_json, tokenizer, data_digest, model, optimizer};
  RunState state;
  if (o.resume) {
    state = load_checkpoint(run, state_json, state_path);
  } else {
    Random random(hyper.seed);
    const double init_std = config_json.value("initializer_range", 0.02);
    initialize_parameters(model.parameters().data(), model.layout(), random.next(), init_std);
    state.rng_state = random.state();
  }
  MetricsFile metrics(leader() ? o.metrics : fs::path(), o.resume ? std::optional<int64_t>(state.step) : std::nullopt);

  const int64_t B = hyper.batch_size, T = hyper.seq_len;
  if (leader())
    std::fprintf(stderr,
                 "megamoe: %s parameters, %s activations | data: %s training tokens (%lld windows of %lld), %s "
                 "validation tokens%s | %lld x %lld tokens per step, %d threads%s\n",
                 format_si(double(model.layout().size)).c_str(),
                 (format_si(double(model.activation_bytes())) + "B").c_str(),
                 format_si(double(split.train.size())).c_str(), (long long)train_windows.windows(), (long long)T,
                 format_si(double(split.validation.size())).c_str(), token_file.reused() ? " (token file reused)" : "",
                 (long long)B, (long long)T, omp_get_max_threads(),
                 dist::distributed() ? fmt::format(" on each of {} data-parallel ranks", dist::size()).c_str() : "");
  if (o.resume && leader())
    std::fprintf(stderr, "megamoe: resuming %s at step %lld\n", o.output.string().c_str(), (long long)state.step);
  if (state.step >= o.steps) {
    if (!o.resume && leader()) save_checkpoint(run, state);
    if (leader()) std::fprintf(stderr, "megamoe: %lld steps done; nothing to train\n", (long long)state.step);
    return;
  }

  train_steps(run, state, train_windows, validation_windows, metrics);
  if (!leader()) return;
  if (state.step < o.steps) {
    std::fprintf(stderr, "megamoe: stopped at step %lld as asked; continue with --resume\n", (long long)state.step);
    return;
  }
  std::fprintf(stderr, "megamoe: saved %s\n", o.output.string().c_str());
  Random random(state.rng_state);
  print_samples(o.output, o.sample_lines, o.sample_tokens, random);
}

std::string_view to_string(BalanceStrategy strategy) {
  for (const auto& [value, name] : kBalanceNames)
    if (value == strategy) return name;
  return "?";
}

BalanceStrategy parse_balance_strategy(std::string_view name, const std::string& what) {
  for (const auto& [value, known] : kBalanceNames)
    if (known == name) return value;
  fail("{}: unknown balancing strategy '{}' (none, aux-loss, seq-aux-loss or bias)", what, name);
}

void write_gradients(const fs::path& model_dir, std::span<const int32_t> tokens, int64_t sequences,
                     const fs::path& output, const BalanceLoss& balance) {
  if (sequences < 1) fail("--sequences must be at least 1");
  if (tokens.size() % size_t(sequences) || int64_t(tokens.size()) / sequences < 2)
    fail("--tokens: {} ids do not make {} rows of T + 1 >= 2 tokens", tokens.size(), sequences);
  const int64_t T = int64_t(tokens.size()) / sequences - 1;
  const ModelConfig config =
      parse_model_config(read_json_file(model_dir / "config.json"), (model_dir / "config.json").string());
  if (balance.strategy == BalanceStrategy::Bias) fail("--balance bias has no loss, hence no gradient to check");
  if (balance.on() && !(balance.alpha > 0 && std::isfinite(balance.alpha)))
    fail("--balance-alpha must be a positive number");
  TrainableModel model(config, sequences, T);
  load_parameters(model.parameters().data(), model.layout(), model_dir);
  model.set_balance_loss(balance);
  model.zero_gradients();
  const double loss = model.forward(tokens.data(), sequences) + model.aux_loss();
  model.backward();
  write_safetensors(output, parameter_tensors(model.gradients().data(), model.layout(), SavedDType::F32),
                    {{"loss", fmt::format("{:.17g}", loss)}, {"aux_loss", fmt::format("{:.17g}", model.aux_loss())}});
}

}  // namespace megamoe::train
