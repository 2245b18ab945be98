// megamoe perplexity: the perplexity of a text, and with --kld-base / --kld the KL divergence of one
// run's next-token distributions from another's (runtime/perplexity.h, docs/quantization.md#fidelity-megamoe-perplexity).
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "distributed_options.h"
#include "generation_options.h"
#include "io/logprob_file.h"
#include "numerics_option.h"
#include "runtime/perplexity.h"
#include "util/error.h"
#include "util/progress.h"
#include "util/text_file.h"

namespace megamoe::cli {

namespace {

constexpr int64_t kDefaultContext = 512;

// Fails unless `base` was made over the same vocabulary, text and windows as this run.
void check_same_run(const LogProbReader& base, const LogProbHeader& run) {
  const LogProbHeader& b = base.header();
  const std::string file = base.path().string();
  if (b.vocab_size != run.vocab_size)
    fail("--kld {}: its log-probs cover a vocabulary of {} tokens, this model's has {} (another model's file)", file,
         b.vocab_size, run.vocab_size);
  if (b.text_tokens != run.text_tokens || b.tokens_digest != run.tokens_digest)
    fail("--kld {}: made from another text or tokenizer ({} tokens, digest {}; here {} tokens, digest {})", file,
         b.text_tokens, b.tokens_digest, run.text_tokens, run.tokens_digest);
  if (b.context != run.context || b.stride != run.stride)
    fail("--kld {}: made with --context {} --stride {}, this run has --context {} --stride {}", file, b.context,
         b.stride, run.context, run.stride);
  if (b.positions != run.positions)
    fail("--kld {}: {} scored positions, this run {}", file, b.positions, run.positions);
}

}  // namespace

void register_perplexity(CLI::App& app) {
  struct Options {
    GenerationOptions model;  // --model, --tokenizer, mpirun and memory options
    std::string text, kld_base, kld;
    int64_t context = 0, stride = 0;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a text; KL divergence against a stored run");
  cmd->add_option("--model", o->model.model, "Model directory (Hugging Face layout)")->required();
  cmd->add_option("--text", o->text, "Text file to score")->required();
  cmd->add_option("--tokenizer", o->model.tokenizer, "tokenizer.json or its directory (default: the model's)");
  cmd->add_option("--context", o->context, "Positions per window, BOS included (default: 512 or the model's context)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--stride", o->stride,
                  "Tokens each window moves; it scores only tokens no window before it did (default: half a window)")
      ->check(CLI::PositiveNumber);
  auto* base = cmd->add_option("--kld-base", o->kld_base, "Save this run's full-vocabulary log-probs to this file");
  auto* against = cmd->add_option("--kld", o->kld, "Compare this run with the log-probs of a --kld-base file");
  base->excludes(against);
  cmd->add_flag("--json", o->json, "Print one JSON object");
  add_distributed_options(cmd, &o->model.distributed);
  add_memory_options(cmd, &o->model.memory);
  add_numerics_option(cmd);
  cmd->callback([o] {
    // Every input is checked before the model runs: the text, the stored run.
    const std::string text = read_text_file(o->text);
    std::unique_ptr<LogProbReader> kld_base;
    if (!o->kld.empty()) kld_base = std::make_unique<LogProbReader>(o->kld);
    o->model.max_context = o->context > 0 ? o->context : kDefaultContext;
    const GenerationSetup setup = load_for_generation(o->model, /*tokenizer_required=*/true);
    const Model& model = *setup.model;
    if (o->context > model.max_context())
      fail("--context {} exceeds the model's context of {}", o->context, model.max_context());
    const int64_t context = setup.max_context;
    const std::optional<int32_t> bos = setup.bos_id ? setup.bos_id : model.info().bos_token_id;
    const std::vector<int32_t> tokens = setup.tokenizer->encode(text);
    const int64_t window_tokens = context - (bos ? 1 : 0);
    const int64_t stride = o->stride > 0 ? o->stride : std::max<int64_t>(1, window_tokens / 2);
    const std::vector<PerplexityWindow> windows =
        perplexity_windows(int64_t(tokens.size()), context, stride, bool(bos));
    const int64_t V = model.vocab_size();

    LogProbHeader header{.vocab_size = V,
                         .positions = scored_positions(windows),
                         .text_tokens = int64_t(tokens.size()),
                         .tokens_digest = token_digest(tokens),
                         .context = context,
                         .stride = stride,
                         .architecture = model.info().architecture,
                         .model = o->model.model,
                         .numerics = numerics_name(numerics())};
    if (kld_base) check_same_run(*kld_base, header);
    std::unique_ptr<LogProbWriter> writer;
    if (!o->kld_base.empty()) writer = std::make_unique<LogProbWriter>(o->kld_base, header);

    PerplexityStats run, base_run;
    KldStats kld;
    std::vector<float> base_logprobs(kld_base ? size_t(V) : 0);
    int64_t position = 0;
    Progress progress("perplexity", int64_t(windows.size()), "windows");
    score_windows(
        model, tokens, windows, bos,
        [&](int32_t target, std::span<const float> logprobs) {
          run.add(-double(logprobs[size_t(target)]));
          if (writer) writer->add(target, logprobs);
          if (kld_base) {
            if (kld_base->target(position) != target)
              fail("--kld {}: row {} predicts token {}, this run token {}", kld_base->path().string(), position,
                   kld_base->target(position), target);
            kld_base->next_row(base_logprobs);
            base_run.add(-double(base_logprobs[size_t(target)]));
            kld.add(base_logprobs, logprobs);
          }
          ++position;
        },
        [&](int64_t done) { progress.update(done, fmt::format("ppl {:.4f}", run.perplexity())); });
    progress.finish(fmt::format("ppl {:.4f}", run.perplexity()));
    if (writer) writer->commit();

    nlohmann::json result = {{"model", o->model.model},
                             {"text", o->text},
                             {"numerics", header.numerics},
                             {"text_tokens", header.text_tokens},
                             {"scored_tokens", run.count()},
                             {"context", context},
                             {"stride", stride},
                             {"windows", windows.size()},
                             {"perplexity", run.perplexity()},
                             {"perplexity_error", run.perplexity_error()},
                             {"mean_nll", run.mean_nll()}};
    if (kld_base)
      result["kld"] = {{"base", o->kld},
                       {"base_perplexity", base_run.perplexity()},
                       {"mean", kld.mean()},
                       {"mean_error", kld.mean_error()},
                       {"median", kld.quantile(0.5)},
                       {"p99", kld.quantile(0.99)},
                       {"max", kld.quantile(1)},
                       {"top1_agreement", kld.top1_agreement()}};
    if (!o->kld_base.empty()) result["kld_base"] = o->kld_base;
    if (o->json) {
      std::printf("%s\n", result.dump(2).c_str());
      return;
    }
    std::printf("perplexity %.4f +/- %.4f over %lld tokens (%lld windows of %lld, stride %lld; numerics %s)\n",
                run.perplexity(), run.perplexity_error(), (long long)run.count(), (long long)windows.size(),
                (long long)context, (long long)stride, header.numerics.c_str());
    if (writer) std::printf("log-probs of %lld positions saved to %s\n", (long long)run.count(), o->kld_base.c_str());
    if (kld_base) {
      std::printf("base perplexity %.4f (%s)\n", base_run.perplexity(), o->kld.c_str());
      std::printf("KL divergence mean %.6g +/- %.2g, median %.6g, 99th percentile %.6g, max %.6g\n", kld.mean(),
                  kld.mean_error(), kld.quantile(0.5), kld.quantile(0.99), kld.quantile(1));
      std::printf("top-1 agreement %.2f%%\n", 100 * kld.top1_agreement());
    }
  });
}

}  // namespace megamoe::cli
