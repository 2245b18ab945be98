#include "runtime/generation.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>

#include "util/byte_size.h"
#include "util/error.h"

namespace megamoe {

std::string_view to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::Running:
      return "running";
    case FinishReason::Length:
      return "length";
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Eos:
      return "stop";  // OpenAI reports an end-of-sequence token as "stop"
    case FinishReason::Cancelled:
      return "cancelled";
  }
  return "?";
}

namespace {

std::string gib(int64_t bytes) { return fmt::format("{:.2f} GiB", double(bytes) / double(1ll << 30)); }

// Length of the longest suffix of `text` that is a proper prefix of some stop string.
size_t stop_prefix_at_end(const std::string& text, const std::vector<std::string>& stops) {
  size_t longest = 0;
  for (const std::string& stop : stops)
    for (size_t n = std::min(stop.size() - 1, text.size()); n > longest; --n)
      if (text.compare(text.size() - n, n, stop, 0, n) == 0) {
        longest = n;
        break;
      }
  return longest;
}

}  // namespace

int64_t plan_generation(const Model& model, std::span<const int32_t> prompt, const GenerationParams& params,
                        int64_t max_context) {
  validate(params.sampling);
  if (prompt.empty()) fail("the prompt is empty");
  if (params.max_tokens < 1) fail("max_tokens must be at least 1, got {}", params.max_tokens);
  for (const std::string& stop : params.stop)
    if (stop.empty()) fail("stop strings must not be empty");
  const int64_t V = model.vocab_size();
  for (size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] < 0 || prompt[i] >= V)
      fail("prompt token {} (id {}) is outside the vocabulary [0, {})", i, prompt[i], V);
  const int64_t P = int64_t(prompt.size());
  if (P >= max_context) fail("the prompt has {} tokens, more than the context of {} leaves room for", P, max_context);
  const int64_t capacity = std::min(max_context, P + params.max_tokens);
  const int64_t bytes = model.cache_bytes(capacity);
  if (const auto available = available_memory(); available && bytes > *available)
    fail("a KV cache for {} tokens needs {}, but only {} of memory is available; lower the token limit or context",
         capacity, gib(bytes), gib(*available));
  return capacity;
}

Sequence::Sequence(const Model& model, std::vector<int32_t> prompt, GenerationParams params, const Tokenizer* tokenizer,
                   std::optional<int32_t> eos_id, int64_t max_context, std::unique_ptr<SequenceCache> reuse,
                   int64_t reuse_tokens)
    : prompt_(std::move(prompt)),
      params_(std::move(params)),
      tokenizer_(tokenizer),
      eos_id_(eos_id),
      sampler_(params_.sampling) {
  const int64_t capacity = plan_generation(model, prompt_, params_, max_context);
  if (!params_.stop.empty() && !tokenizer_) fail("stop strings need a tokenizer");
  if (tokenizer_) decoder_ = std::make_unique<StreamingDecoder>(*tokenizer_);
  // Keep the reused cache's prefix, but always run the prompt's last token for its logits.
  reuse_tokens = std::min(reuse_tokens, int64_t(prompt_.size()) - 1);
  if (reuse && reuse->capacity() >= capacity && reuse->can_truncate(reuse_tokens)) {
    cache_ = std::move(reuse);
    cache_->truncate(reuse_tokens);
  } else {
    cache_ = model.new_cache(capacity);
  }
  context_ = prompt_;
  pending_.assign(prompt_.begin() + cache_->length(), prompt_.end());
}

std::string Sequence::take_new_text() { return std::exchange(unsent_, {}); }

SequenceStep Sequence::next_step() { return {cache_.get(), pending_, false}; }

void Sequence::append_text(const std::string& piece) {
  held_ += piece;
  if (!params_.stop.empty()) {
    size_t first_stop = std::string::npos;
    for (const std::string& stop : params_.stop) first_stop = std::min(first_stop, held_.find(stop));
    if (first_stop != std::string::npos) {
      held_.resize(first_stop);
      text_ += held_;
      unsent_ += held_;
      held_.clear();
      finish_ = FinishReason::Stop;
      return;
    }
  }
  const size_t keep = stop_prefix_at_end(held_, params_.stop);
  const std::string ready = held_.substr(0, held_.size() - keep);
  text_ += ready;
  unsent_ += ready;
  held_.erase(0, held_.size() - keep);
}

void Sequence::finish(FinishReason reason) {
  finish_ = reason;
  if (decoder_) {
    std::string rest = held_ + decoder_->finish();  // at the end nothing can become a stop string
    held_.clear();
    text_ += rest;
    unsent_ += rest;
  }
}

void Sequence::accept_logits(std::span<float> logits) {
  // A model's vocabulary may be padded past its tokenizer's (DeepSeek-V3: 129280 vs 128815 ids);
  // ids the tokenizer cannot print are never chosen.
  if (tokenizer_) logits = logits.first(std::min<size_t>(logits.size(), size_t(tokenizer_->vocab_size())));
  const int32_t token = sampler_.sample(logits, context_);
  pending_.clear();
  if (eos_id_ && token == *eos_id_ && !params_.ignore_eos) {
    finish(FinishReason::Eos);
    return;
  }
  generated_.push_back(token);
  context_.push_back(token);
  if (decoder_) append_text(decoder_->push(token));
  if (finished()) return;  // a stop string
  if (int64_t(generated_.size()) >= params_.max_tokens || cache_->length() >= cache_->capacity()) {
    finish(FinishReason::Length);
    return;
  }
  pending_.push_back(token);
}

void step_batch(const Model& model, std::span<Sequence* const> batch) {
  std::vector<Sequence*> running;
  std::vector<SequenceStep> steps;
  for (Sequence* s : batch)
    if (!s->finished()) {
      running.push_back(s);
      steps.push_back(s->next_step());
    }
  if (running.empty()) return;
  const int64_t V = model.vocab_size();
  std::vector<float> logits(running.size() * V);  // [B, V]: each sequence's last token
  model.forward(logits.data(), steps);
  for (size_t i = 0; i < running.size(); ++i) running[i]->accept_logits(std::span(logits).subspan(i * V, V));
}

std::vector<int32_t> encode_prompt(const GenerationSetup& setup, std::string_view text) {
  if (!setup.tokenizer) fail("this model has no tokenizer.json: give the prompt as token ids");
  std::vector<int32_t> ids;
  if (setup.bos_id) ids.push_back(*setup.bos_id);
  setup.tokenizer->encode(text, ids);
  return ids;
}

}  // namespace megamoe
