// Batched decoding: sequences of different lengths stepped together (joining at any step) give
// exactly what each gives alone.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "model/synth.h"
#include "runtime/generation.h"
#include "test_support.h"
#include "util/error.h"

namespace megamoe {
namespace {

nlohmann::json tiny_config() {
  return {{"architectures", {"DeepseekV3ForCausalLM"}},
          {"vocab_size", 97},
          {"hidden_size", 48},
          {"intermediate_size", 64},
          {"moe_intermediate_size", 16},
          {"num_hidden_layers", 2},
          {"first_k_dense_replace", 1},
          {"num_attention_heads", 3},
          {"q_lora_rank", 24},
          {"kv_lora_rank", 32},
          {"qk_nope_head_dim", 8},
          {"qk_rope_head_dim", 4},
          {"v_head_dim", 8},
          {"n_routed_experts", 8},
          {"n_shared_experts", 1},
          {"num_experts_per_tok", 2},
          {"n_group", 2},
          {"topk_group", 1},
          {"topk_method", "noaux_tc"},
          {"scoring_func", "sigmoid"},
          {"norm_topk_prob", true},
          {"routed_scaling_factor", 2.0},
          {"max_position_embeddings", 256}};
}

class BatchingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    synth_checkpoint(dir_.path() / "model", tiny_config(), {SynthDType::FP8, 11, 1});
    model_ = load_model(dir_.path() / "model");
  }

  std::unique_ptr<Sequence> sequence(std::vector<int32_t> prompt) const {
    GenerationParams params;
    params.max_tokens = 7;
    return std::make_unique<Sequence>(*model_, std::move(prompt), params, nullptr, std::nullopt, 256);
  }

  std::vector<int32_t> alone(const std::vector<int32_t>& prompt) const {
    auto s = sequence(prompt);
    Sequence* batch[] = {s.get()};
    while (!s->finished()) step_batch(*model_, batch);
    return s->generated();
  }

  testing::TempDir dir_;
  std::unique_ptr<Model> model_;
};

TEST_F(BatchingTest, BatchedEqualsOneAtATime) {
  const std::vector<std::vector<int32_t>> prompts{{5, 6, 7}, {1, 2, 3, 4, 5, 6, 7, 8, 9}, {42}};
  std::vector<std::unique_ptr<Sequence>> sequences;
  std::vector<Sequence*> batch;
  for (const auto& p : prompts) {
    sequences.push_back(sequence(p));
    batch.push_back(sequences.back().get());
  }
  while (!std::all_of(batch.begin(), batch.end(), [](Sequence* s) { return s->finished(); }))
    step_batch(*model_, batch);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(sequences[i]->generated().size(), 7u);
    EXPECT_EQ(sequences[i]->generated(), alone(prompts[i])) << "sequence " << i;
  }
}

TEST_F(BatchingTest, SequencesJoinAndLeaveAtTokenBoundaries) {
  auto first = sequence({3, 1, 4, 1, 5});
  auto second = sequence({9, 2, 6});
  std::vector<Sequence*> batch{first.get()};
  step_batch(*model_, batch);
  step_batch(*model_, batch);
  batch.push_back(second.get());  // joins while the first is decoding
  while (!first->finished() || !second->finished()) step_batch(*model_, batch);
  EXPECT_EQ(first->generated(), alone({3, 1, 4, 1, 5}));
  EXPECT_EQ(second->generated(), alone({9, 2, 6}));
}

TEST_F(BatchingTest, CacheHoldsLatentAndRopeKeyOnly) {
  // kv_lora_rank 32 + qk_rope_head_dim 4 values per token and layer, fp32.
  EXPECT_EQ(model_->cache_bytes_per_token(), 2 * (32 + 4) * 4);
}

// What forward() says of a batch it cannot run; empty when it runs.
std::string forward_error(const Model& model, std::span<const SequenceStep> steps) {
  std::vector<float> logits(steps.size() * size_t(model.vocab_size()));
  try {
    model.forward(logits.data(), steps);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST_F(BatchingTest, BadBatchesAreRefusedByName) {
  const auto cache = model_->new_cache(8), other = model_->new_cache(8);
  const std::vector<int32_t> one = {5}, nine(9, 5), outside = {97};
  EXPECT_EQ(forward_error(*model_, std::vector<SequenceStep>{{cache.get(), one}, {cache.get(), one}}),
            "sequences 0 and 1 extend the same cache");
  EXPECT_EQ(forward_error(*model_, std::vector<SequenceStep>{{cache.get(), {}}}), "sequence 0: no tokens to run");
  EXPECT_EQ(forward_error(*model_, std::vector<SequenceStep>{{other.get(), one}, {cache.get(), nine}}),
            "sequence 1: 9 tokens do not fit in a cache of 8 with 0 used");
  EXPECT_EQ(forward_error(*model_, std::vector<SequenceStep>{{cache.get(), outside}}),
            "token id 97 at position 0 is outside the vocabulary [0, 97)");
  EXPECT_EQ(cache->length(), 0);  // nothing ran
  EXPECT_EQ(forward_error(*model_, std::vector<SequenceStep>{{cache.get(), one}, {other.get(), one}}), "");
}

}  // namespace
}  // namespace megamoe
