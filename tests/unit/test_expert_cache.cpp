#include "moe/expert_cache.h"

#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "io/checkpoint.h"
#include "model/model.h"
#include "model/synth.h"
#include "ops/matmul.h"
#include "util/byte_size.h"

#include "test_support.h"

namespace megamoe {
namespace {
using testing::expect_error;

TEST(ParseByteSize, UnitsAndPlainBytes) {
  EXPECT_EQ(parse_byte_size("1GiB"), 1ll << 30);
  EXPECT_EQ(parse_byte_size("512MiB"), 512ll << 20);
  EXPECT_EQ(parse_byte_size("1.5KiB"), 1536);
  EXPECT_EQ(parse_byte_size("2GB"), 2000000000);
  EXPECT_EQ(parse_byte_size("1500000"), 1500000);
  EXPECT_EQ(parse_byte_size("7B"), 7);
}

TEST(ParseByteSize, RejectsWhatIsNotASize) {
  for (const char* text : {"", "abc", "-1MiB", "1XB", "1 MiB", "0", "MiB", "1e30TiB", "1gib"})
    expect_error([&] { parse_byte_size(text); }, {"is not a memory size"});
}

// ---- StreamingExpertStore: eviction order, the pin limit, prefetch accounting ----

// A synthesized V3 checkpoint with 8 routed experts per MoE layer (layer 1 is the first), loaded mapped.
class StreamingStore : public ::testing::Test {
 protected:
  static constexpr int64_t kLayer = 1;
  void SetUp() override {
    const nlohmann::json config = {{"architectures", {"DeepseekV3ForCausalLM"}},
                                   {"vocab_size", 64},
                                   {"hidden_size", 32},
                                   {"num_hidden_layers", 3},
                                   {"first_k_dense_replace", 1},
                                   {"intermediate_size", 64},
                                   {"moe_intermediate_size", 32},
                                   {"num_attention_heads", 2},
                                   {"kv_lora_rank", 16},
                                   {"qk_nope_head_dim", 8},
                                   {"qk_rope_head_dim", 8},
                                   {"v_head_dim", 8},
                                   {"n_routed_experts", 8},
                                   {"n_shared_experts", 1},
                                   {"num_experts_per_tok", 2}};
    synth_checkpoint(dir_ / "model", config, SynthOptions{SynthDType::BF16, 1, 1});
    model_ = load_model(dir_ / "model");
    checkpoint_ = Checkpoint::open(dir_ / "model");
    store_ = model_->stream_experts().first;
    ASSERT_NE(store_, nullptr);
  }
  // acquire + release of one expert, checking the cached copy against the file; whether it was a hit.
  bool use(int32_t expert) {
    const int64_t hits = store_->stats().hits;
    store_->acquire(kLayer, std::span(&expert, 1));
    const std::string name = fmt::format("model.layers.{}.mlp.experts.{}.down_proj.weight", kLayer, expert);
    const WeightView file = checkpoint_->weight(name, 32, 32, ScaleLayout::ScaleInvF32);
    const WeightView& cached = store_->expert(kLayer, expert).down;
    std::vector<float> got(32), want(32);
    for (int64_t r = 0; r < 32; r += 7) {
      dequantize_row(got.data(), cached, r);
      dequantize_row(want.data(), file, r);
      EXPECT_EQ(got, want) << "expert " << expert << " row " << r;
    }
    store_->release(kLayer, std::span(&expert, 1));
    return store_->stats().hits > hits;
  }

  testing::TempDir dir_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Checkpoint> checkpoint_;
  StreamingExpertStore* store_ = nullptr;
};

TEST_F(StreamingStore, EvictsTheLeastRecentlyUsedUnpinnedExpert) {
  store_->allocate(3, /*prefetch=*/false);
  EXPECT_FALSE(use(0));
  EXPECT_FALSE(use(1));
  EXPECT_FALSE(use(2));
  EXPECT_TRUE(use(0));   // 1 is now the least recently used
  EXPECT_FALSE(use(3));  // evicts 1
  EXPECT_TRUE(use(2));
  EXPECT_TRUE(use(0));
  EXPECT_FALSE(use(1));  // evicts 3, the least recent
  EXPECT_FALSE(use(3));
  const ExpertCacheStats s = store_->stats();
  EXPECT_EQ(s.lookups, 9);
  EXPECT_EQ(s.hits, 3);
  EXPECT_EQ(s.prefetched, 0);
  EXPECT_EQ(s.bytes_read, 6 * (3 * 32 * 32 * 2));  // 6 reads of an expert's three BF16 [32, 32] matrices
}

TEST_F(StreamingStore, FrequencyEvictionKeepsTheMostUsed) {
  store_->allocate(3, /*prefetch=*/false, /*frequency=*/true);
  for (int i = 0; i < 3; ++i) use(0);
  use(1);
  use(2);
  use(2);
  EXPECT_FALSE(use(3));  // evicts 1: used once (0 thrice, 2 twice), though 0 is older
  EXPECT_TRUE(use(0));
  EXPECT_TRUE(use(2));
  EXPECT_FALSE(use(1));
}

TEST_F(StreamingStore, PinnedExpertsStayAndTheLimitIsNamed) {
  store_->allocate(3, /*prefetch=*/false);
  const std::vector<int32_t> pinned = {0, 1};
  store_->acquire(kLayer, pinned);
  EXPECT_FALSE(use(2));
  EXPECT_FALSE(use(3));  // 0 and 1 are older but pinned: 2 goes
  EXPECT_FALSE(use(2));
  store_->release(kLayer, pinned);
  EXPECT_TRUE(use(0));
  EXPECT_TRUE(use(1));
  const std::vector<int32_t> too_many = {4, 5, 6, 7};
  testing::expect_error([&] { store_->acquire(kLayer, too_many); }, {"4 experts", "3 cache slots"});
  EXPECT_EQ(store_->max_pinned(), 3);
}

TEST_F(StreamingStore, PrefetchedExpertsCountAsPrefetchHits) {
  store_->allocate(4, /*prefetch=*/true);
  ASSERT_TRUE(store_->prefetching());
  const std::vector<int32_t> guess = {5, 6};
  store_->prefetch(kLayer, guess);  // started by the next acquire
  EXPECT_FALSE(use(0));
  for (int i = 0; i < 500 && store_->stats().prefetched < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_EQ(store_->stats().prefetched, 2);
  EXPECT_TRUE(use(5));
  EXPECT_TRUE(use(6));
  EXPECT_TRUE(use(5));  // a second use is a plain hit
  const ExpertCacheStats s = store_->stats();
  EXPECT_EQ(s.lookups, 4);
  EXPECT_EQ(s.hits, 3);
  EXPECT_EQ(s.prefetch_hits, 2);
  store_->reset_stats();
  EXPECT_EQ(store_->stats().lookups, 0);
}

}  // namespace
}  // namespace megamoe
