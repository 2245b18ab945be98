// Cross-layer expert pools (docs/models.md#expert-pools): which layers form a pool, where its tensors are
// listed, the config errors, and that a pool's layers share one parameter tensor in training.
// (Logits, gradients and inspect totals of pooled models: tests/model, against the references.)
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/tensor_spec.h"
#include "train/parameters.h"
#include "util/error.h"

namespace megamoe {
namespace {

using namespace train;

// 7 layers: 0 dense (first_k_dense_replace), then MoE layers 1..6 unless `moe_layer_freq` skips some.
nlohmann::json pooled_json(int64_t group_size, bool share_shared, int64_t moe_layer_freq = 1) {
  return {{"architectures", {"DeepseekV3ForCausalLM"}},
          {"vocab_size", 64},
          {"hidden_size", 16},
          {"num_hidden_layers", 7},
          {"first_k_dense_replace", 1},
          {"moe_layer_freq", moe_layer_freq},
          {"intermediate_size", 32},
          {"moe_intermediate_size", 8},
          {"num_attention_heads", 2},
          {"kv_lora_rank", 8},
          {"qk_nope_head_dim", 4},
          {"qk_rope_head_dim", 4},
          {"v_head_dim", 4},
          {"n_routed_experts", 4},
          {"n_shared_experts", 1},
          {"num_experts_per_tok", 2},
          {"expert_sharing_group_size", group_size},
          {"share_shared_experts", share_shared}};
}

TEST(ExpertPools, GroupsConsecutiveMoeLayersWithAShorterLastGroup) {
  const ModelConfig c = parse_model_config(pooled_json(4, false), "pools");
  EXPECT_EQ(c.expert_pool_of_layer(0), -1);  // dense
  for (int64_t L : {1, 2, 3, 4}) EXPECT_EQ(c.expert_pool_of_layer(L), 0) << L;
  for (int64_t L : {5, 6}) EXPECT_EQ(c.expert_pool_of_layer(L), 1) << L;
  EXPECT_EQ(c.expert_pool_count(), 2);
  EXPECT_EQ(c.expert_pool_layers(1), (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(c.routed_experts_layer(3), 1);
  EXPECT_EQ(c.routed_experts_layer(6), 5);
  EXPECT_EQ(c.shared_experts_layer(3), 3);  // not shared
}

TEST(ExpertPools, CountsOnlyMoeLayersUnderMoeLayerFreq) {
  // moe_layer_freq 2: MoE layers 2, 4, 6 (layer 1 is past first_k_dense_replace but odd).
  const ModelConfig c = parse_model_config(pooled_json(2, true, 2), "pools");
  EXPECT_EQ(c.expert_pool_of_layer(1), -1);
  EXPECT_EQ(c.expert_pool_layers(0), (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(c.expert_pool_layers(1), (std::vector<int64_t>{6}));
  EXPECT_EQ(c.shared_experts_layer(4), 2);
}

TEST(ExpertPools, DefaultIsOnePoolPerMoeLayer) {
  nlohmann::json j = pooled_json(1, false);
  j.erase("expert_sharing_group_size");
  j.erase("share_shared_experts");
  const ModelConfig c = parse_model_config(j, "pools");
  EXPECT_EQ(c.expert_pool_count(), 6);
  for (int64_t L = 1; L < 7; ++L) EXPECT_EQ(c.routed_experts_layer(L), L);
}

TEST(ExpertPools, PooledTensorsAreListedOnceUnderTheFirstLayer) {
  const ModelConfig c = parse_model_config(pooled_json(4, true), "pools");
  std::map<std::string, TensorSpec> listed;
  for_each_tensor(c, [&](const TensorSpec& spec) { EXPECT_TRUE(listed.emplace(spec.name, spec).second) << spec.name; });
  for (int64_t L = 1; L < 7; ++L) {
    const bool first = L == 1 || L == 5;
    const std::string p = "model.layers." + std::to_string(L) + ".mlp.";
    EXPECT_TRUE(listed.count(p + "gate.weight")) << L;  // every layer keeps its router
    EXPECT_EQ(listed.count(p + "experts.3.down_proj.weight"), first ? 1u : 0u) << L;
    EXPECT_EQ(listed.count(p + "shared_experts.up_proj.weight"), first ? 1u : 0u) << L;
  }
  EXPECT_EQ(listed["model.layers.1.mlp.experts.0.gate_proj.weight"].uses, 4);
  EXPECT_EQ(listed["model.layers.5.mlp.shared_experts.gate_proj.weight"].uses, 2);
  EXPECT_EQ(listed["model.layers.2.mlp.gate.weight"].uses, 1);
}

TEST(ExpertPools, TrainingLayersOfAPoolShareOneParameterTensor) {
  const ModelConfig c = parse_model_config(pooled_json(4, false), "pools");
  const ParameterLayout layout = ParameterLayout::make(c);
  const MoeParams &first = layout.layers[1].moe, &third = layout.layers[3].moe, &next_pool = layout.layers[5].moe;
  ASSERT_EQ(third.experts.size(), 4u);
  EXPECT_EQ(third.experts[2].down.offset, first.experts[2].down.offset);
  EXPECT_NE(next_pool.experts[2].down.offset, first.experts[2].down.offset);
  EXPECT_NE(third.gate.offset, first.gate.offset);                // routers stay per layer
  EXPECT_NE(third.shared.gate.offset, first.shared.gate.offset);  // shared experts too, unless shared
  EXPECT_TRUE(third.shared.gate.present());
}

TEST(ExpertPools, ConfigErrorsNameTheKey) {
  auto error_of = [](nlohmann::json j) -> std::string {
    try {
      parse_model_config(j, "cfg.json");
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error_of(pooled_json(0, false)).find("invalid 'expert_sharing_group_size': must be positive"),
            std::string::npos);
  nlohmann::json j = pooled_json(2, false);
  j["expert_sharing_group_size"] = "two";
  EXPECT_NE(error_of(j).find("'expert_sharing_group_size' must be an integer"), std::string::npos);
  j = pooled_json(2, false);
  j["share_shared_experts"] = 1;
  EXPECT_NE(error_of(j).find("'share_shared_experts' must be true or false"), std::string::npos);
}

}  // namespace
}  // namespace megamoe
