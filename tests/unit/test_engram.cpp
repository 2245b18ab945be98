// DeepSeek-V4.1's Engram addressing against the values of the released model (docs/deepseek-v41.md#engram):
// the primes reproduce both tables' row counts and the multipliers are those numpy drew.
#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

#include "model/config.h"
#include "model/engram.h"
#include "util/error.h"
#include "util/json_file.h"

namespace megamoe {
namespace {

const std::filesystem::path kReleased =
    std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "configs" / "deepseek-v41-flash.json";

TEST(Engram, ReleasedTablesAndMultipliers) {
  const ModelConfig c = load_model_config(kReleased.string());
  const EngramHashing hashing(c, 99092);  // throws unless the primes sum to engram_num_embeddings
  ASSERT_EQ(hashing.primes().size(), 2u);
  EXPECT_EQ(hashing.primes()[0].size(), 24u);
  EXPECT_GT(hashing.primes()[0][0], 16000000 - 1);
  // The multipliers 2u + 1 the released model uses (u: numpy's default_rng(10007 * layer) draws).
  EXPECT_EQ(hashing.multipliers()[0],
            (std::vector<int64_t>{76632096046245, 4839876093313, 35959672319349, 73987337458391}));
  EXPECT_EQ(hashing.multipliers()[1],
            (std::vector<int64_t>{67716810739261, 51510806800915, 30921347202721, 82619226485591}));
}

TEST(Engram, RowsHashEveryNgramIntoItsOwnPartOfTheTable) {
  const ModelConfig c = load_model_config(kReleased.string());
  const EngramHashing hashing(c, 99092);
  const std::vector<int64_t> classes = {17, 4, 99091, 2};  // this token, then 1, 2, 3 back
  std::vector<int64_t> rows(24);
  hashing.rows(1, classes, rows.data());
  const std::vector<int64_t>& p = hashing.primes()[1];
  const std::vector<int64_t>& m = hashing.multipliers()[1];
  int64_t offset = 0, hash = classes[0] * m[0];
  for (int64_t n = 2; n <= 4; ++n) {
    hash ^= classes[n - 1] * m[n - 1];
    for (int64_t h = 0; h < 8; ++h) {
      const int64_t column = (n - 2) * 8 + h;
      EXPECT_EQ(rows[column], offset + hash % p[column]) << column;
      EXPECT_GE(rows[column], offset);
      EXPECT_LT(rows[column], offset + p[column]);
      offset += p[column];
    }
  }
  EXPECT_EQ(offset, c.v41.engram_num_embeddings[1]);
}

TEST(Engram, ATableThePrimesDoNotFillIsNamed) {
  nlohmann::json j = read_json_file(kReleased);
  j["text_config"]["engram_num_embeddings"] = {384006168, 384016681};
  try {
    parse_model_config(j, "config.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json: text_config: invalid 'engram_num_embeddings': layer 14's table "
                                         "has 384016681 rows, but its 24 primes above engram_vocab_size 16000000 "
                                         "sum to 384016682"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace megamoe
