// DeepSeek-V4.1's config.json: the settings under text_config, the layer roles derived from the
// source lists, and errors that name the key of a config whose roles cannot run.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "model/config.h"
#include "util/error.h"
#include "util/json_file.h"

namespace megamoe {
namespace {

nlohmann::json released() {
  return read_json_file(std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "configs" /
                        "deepseek-v41-flash.json");
}

std::string error_of(const nlohmann::json& j) {
  try {
    parse_model_config(j, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(V41Config, ReleasedRoles) {
  const ModelConfig c = parse_model_config(released(), "config.json");
  EXPECT_EQ(c.family, ModelFamily::DeepseekV41);
  EXPECT_EQ(c.hidden_size, 5120);
  EXPECT_EQ(c.bos_token_id, 0);  // at the root
  EXPECT_TRUE(c.fp8_weights);
  EXPECT_TRUE(c.v4.fp4_experts);
  EXPECT_EQ(c.v4.compress_ratios.size(), 43u);
  for (int64_t l : {0, 1, 40, 42}) EXPECT_EQ(c.v41_role(l), V41Role::Window) << l;
  for (int64_t l : {2, 8, 14, 20}) EXPECT_EQ(c.v41_role(l), V41Role::Full) << l;
  for (int64_t l : {24, 28, 32, 36}) EXPECT_EQ(c.v41_role(l), V41Role::Reindex) << l;
  for (int64_t l : {3, 19, 21, 39}) EXPECT_EQ(c.v41_role(l), V41Role::Reuse) << l;
  EXPECT_EQ(c.v41.candidate_source_layer, 20);
  EXPECT_EQ(c.v41.engram_index(14), 1);
  EXPECT_EQ(c.v41.engram_index(2), -1);
  EXPECT_EQ(c.v41.engram_rows_per_token(), 24);
}

TEST(V41Config, ErrorsNameTheKey) {
  nlohmann::json j = released();
  j["text_config"]["kv_source_layer_ids"] = {1, 2, 8, 14, 20};
  EXPECT_EQ(error_of(j),
            "config.json: text_config: invalid 'kv_source_layer_ids': layer 1 is not a compressed layer "
            "(compress_ratios[1] is 0)");
  j = released();
  j["text_config"]["compress_ratios"][21] = 2;
  EXPECT_EQ(error_of(j),
            "config.json: text_config: invalid 'compress_ratios': layer 21 (ratio 2) reuses the entries of a layer "
            "of ratio 1");
  j = released();
  j["text_config"]["kv_source_layer_ids"] = {8, 14, 20};
  EXPECT_EQ(error_of(j),
            "config.json: text_config: invalid 'compress_ratios': layer 2 is compressed but no "
            "kv_source_layer_ids entry comes before it");
  j = released();
  j["text_config"]["candidate_source_layer_id"] = 21;
  EXPECT_EQ(error_of(j),
            "config.json: text_config: invalid 'candidate_source_layer_id': layer 21 is not an index source");
  j = released();
  j["quantization_config"]["weight_block_size"] = {128, 128};
  EXPECT_EQ(error_of(j),
            "config.json: quantization_config: weight_block_size [128,128] is not supported (expected [32, 32])");
  j = released();
  j.erase("text_config");
  EXPECT_EQ(error_of(j),
            "config.json: missing 'text_config' (DeepseekV41ForCausalLM keeps the model's settings there)");
}

}  // namespace
}  // namespace megamoe
