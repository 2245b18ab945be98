// Generating text: sequences that prefill their prompt, then decode one token at a time, stepped
// together in batches so each expert's weights are read once per step for all of them (the basis
// of the server's continuous batching).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace megamoe {

struct GenerationParams {
  SamplingParams sampling;
  int64_t max_tokens = 256;       // generated tokens at most
  std::vector<std::string> stop;  // stop strings (need a tokenizer); not part of the output
  bool ignore_eos = false;
};

enum class FinishReason { Running, Length, Stop, Eos, Cancelled };
std::string_view to_string(FinishReason reason);  // "length", "stop", ... (OpenAI's words)

// Checks the request against the model and machine before any work: empty or over-long prompts,
// token ids, sampling values, a KV cache that would not fit in memory. Returns the cache capacity.
int64_t plan_generation(const Model& model, std::span<const int32_t> prompt, const GenerationParams& params,
                        int64_t max_context);

// One sequence being generated.
class Sequence {
 public:
  // `tokenizer` may be null (ids only; then no stop strings). `on_text` receives the output as it
  // becomes final (text held back while it could still turn into a stop string).
  // `reuse` (optional) is a cache from an earlier sequence whose tokens begin with the first
  // `reuse_tokens` tokens of `prompt`: those are not computed again (multi-turn chat).
  Sequence(const Model& model, std::vector<int32_t> prompt, GenerationParams params, const Tokenizer* tokenizer,
           std::optional<int32_t> eos_id, int64_t max_context, std::unique_ptr<SequenceCache> reuse = nullptr,
           int64_t reuse_tokens = 0);

  FinishReason finish_reason() const { return finish_; }
  bool finished() const { return finish_ != FinishReason::Running; }
  void cancel() { finish_ = FinishReason::Cancelled; }

  const std::vector<int32_t>& prompt() const { return prompt_; }
  const std::vector<int32_t>& generated() const { return generated_; }
  const std::string& text() const { return text_; }  // final output text so far
  // Text made final since the last call (for streaming).
  std::string take_new_text();
  int64_t cache_bytes() const { return cache_->bytes(); }
  // The cache, holding every token but the last generated one (which was never fed back).
  std::unique_ptr<SequenceCache> release_cache() { return std::move(cache_); }

  // The tokens this sequence feeds the next step: the prompt first, then its last sampled token.
  SequenceStep next_step();
  // Takes the logits [V] of the step's last token: samples, records and checks the stop conditions.
  void accept_logits(std::span<float> logits);

 private:
  void append_text(const std::string& piece);
  void finish(FinishReason reason);

  std::vector<int32_t> prompt_, generated_, context_;  // context_ = prompt + generated (for penalties)
  GenerationParams params_;
  const Tokenizer* tokenizer_;
  std::optional<int32_t> eos_id_;
  std::unique_ptr<SequenceCache> cache_;
  Sampler sampler_;
  std::unique_ptr<StreamingDecoder> decoder_;
  std::string text_, unsent_;  // text_: final text; unsent_: its part not yet taken
  std::string held_;           // decoded text that may be the start of a stop string
  std::vector<int32_t> pending_;
  FinishReason finish_ = FinishReason::Running;
};

// One forward pass for every running sequence in `batch`; each accepts its logits.
void step_batch(const Model& model, std::span<Sequence* const> batch);

// What a generating frontend (the generate and chat commands, the server) works with: the model,
// its tokenizer (if it has one), its special tokens and the context it may use.
struct GenerationSetup {
  std::unique_ptr<Model> model;
  std::optional<Tokenizer> tokenizer;
  std::optional<int32_t> bos_id, eos_id;
  int64_t max_context = 0;
};

// The prompt ids of plain text: BOS where the tokenizer defines one, then the encoded text.
// Needs a tokenizer (an Error otherwise).
std::vector<int32_t> encode_prompt(const GenerationSetup& setup, std::string_view text);

}  // namespace megamoe
