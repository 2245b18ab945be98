// RowCache (io/row_cache.h): rows of tables that stay on disk, read with pread into a few slots.
#include "io/row_cache.h"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "io/checkpoint_writer.h"

#include "test_support.h"

namespace megamoe {
namespace {

// Two tables in one checkpoint: "codes" [100, 16] U8 with "scales" [100, 2] beside it, and "plain" [50, 8].
class RowCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pattern = [](int64_t bytes, int seed) {
      return [bytes, seed](std::byte* out) {
        for (int64_t i = 0; i < bytes; ++i) out[i] = std::byte((i * 7 + seed * 31 + i / 13) & 0xff);
      };
    };
    write_checkpoint(dir_ / "model", nlohmann::json{{"architectures", {"Test"}}},
                     {{"codes", DType::U8, {100, 16}, pattern(1600, 1)},
                      {"scales", DType::U8, {100, 2}, pattern(200, 2)},
                      {"plain", DType::U8, {50, 8}, pattern(400, 3)}});
    checkpoint_ = Checkpoint::open(dir_ / "model");
    tables_ = {{{checkpoint_->find("codes")->data, 16}, {checkpoint_->find("scales")->data, 2}},
               {{checkpoint_->find("plain")->data, 8}}};
  }
  // What the row holds, read through the mapping: its parts one after the other.
  std::vector<std::byte> expected(int64_t table, int64_t row) const {
    std::vector<std::byte> bytes;
    for (const RowCache::Part& part : tables_[size_t(table)]) {
      const auto* start = static_cast<const std::byte*>(part.data) + row * part.row_bytes;
      bytes.insert(bytes.end(), start, start + part.row_bytes);
    }
    return bytes;
  }
  std::vector<std::byte> read(const RowCache& cache, int64_t table, int64_t row) const {
    std::vector<std::byte> out(size_t(cache.row_bytes()), std::byte(0xEE));
    cache.read(table, row, out.data());
    out.resize(expected(table, row).size());
    return out;
  }

  testing::TempDir dir_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::vector<RowCache::Table> tables_;
};

TEST_F(RowCacheTest, ReadsEveryRowOfEveryTableAsTheMappingHasIt) {
  const RowCache cache(*checkpoint_, tables_, 4 * RowCache::slot_cost(tables_));
  EXPECT_EQ(cache.slots(), 4);
  EXPECT_EQ(cache.row_bytes(), 18);
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t row = 0; row < 100; ++row) ASSERT_EQ(read(cache, 0, row), expected(0, row)) << row;
    for (int64_t row = 49; row >= 0; --row) ASSERT_EQ(read(cache, 1, row), expected(1, row)) << row;
  }
  const RowCacheStats stats = cache.stats();
  EXPECT_EQ(stats.lookups, 300);
  EXPECT_EQ(stats.hits, 0);  // every row was evicted before it came back
  EXPECT_EQ(stats.bytes_read, 2 * (100 * 18 + 50 * 8));
}

TEST_F(RowCacheTest, KeepsRowsInUseAndEvictsTheOthers) {
  const RowCache cache(*checkpoint_, tables_, 3 * RowCache::slot_cost(tables_));
  // Rows 1 and 2 are read again and again while others pass through the remaining slots.
  for (int64_t other = 10; other < 40; ++other) {
    ASSERT_EQ(read(cache, 0, 1), expected(0, 1));
    ASSERT_EQ(read(cache, 1, 2), expected(1, 2));
    ASSERT_EQ(read(cache, 0, other), expected(0, other));
  }
  const RowCacheStats stats = cache.stats();
  EXPECT_EQ(stats.lookups, 90);
  EXPECT_GE(stats.hits, 50);  // the two hot rows stay, nearly always
  cache.reset_stats();
  EXPECT_EQ(cache.stats().lookups, 0);
}

TEST_F(RowCacheTest, SameRowNumberInTwoTablesAreTwoRows) {
  const RowCache cache(*checkpoint_, tables_, 8 * RowCache::slot_cost(tables_));
  EXPECT_EQ(read(cache, 0, 7), expected(0, 7));
  EXPECT_EQ(read(cache, 1, 7), expected(1, 7));
  EXPECT_EQ(read(cache, 0, 7), expected(0, 7));
  EXPECT_EQ(cache.stats().hits, 1);
}

TEST_F(RowCacheTest, AtLeastOneSlotAndOnlyTablesInTheFiles) {
  EXPECT_EQ(RowCache(*checkpoint_, tables_, 1).slots(), 1);
  const std::byte elsewhere[16] = {};
  testing::expect_error([&] { RowCache(*checkpoint_, {{{elsewhere, 16}}}, 1 << 20); }, {"not in the checkpoint"});
}

}  // namespace
}  // namespace megamoe
