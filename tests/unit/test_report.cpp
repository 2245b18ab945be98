// src/report: PNG plots (valid files of the set size, written atomically, bad input refused before
// any file appears) and reading a run's metrics back (curves, balance table, training plots).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "report/plot.h"
#include "report/run_metrics.h"
#include "test_support.h"

namespace megamoe {
namespace {
namespace fs = std::filesystem;
using testing::expect_error;
using testing::TempDir;
using testing::write_file;

// The width and height of a PNG's IHDR chunk, after checking the signature.
std::pair<uint32_t, uint32_t> png_size(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string head(24, '\0');
  in.read(head.data(), 24);
  EXPECT_EQ(head.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << path;
  EXPECT_EQ(head.substr(12, 4), "IHDR") << path;
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = v << 8 | uint8_t(head[at + i]);
    return v;
  };
  return {be32(16), be32(20)};
}

size_t entries(const fs::path& dir) { return size_t(std::distance(fs::directory_iterator(dir), {})); }

TEST(Plot, LinesWriteAPngAndNoTemporary) {
  TempDir dir;
  LinePlot plot{"loss", "step", "loss", {{"a", {1, 2, 3}, {3, 2, 1}}, {"b", {1, 2, 3}, {2, NAN, 0.5}}}, false};
  plot_lines(dir / "lines.png", plot);
  EXPECT_EQ(png_size(dir / "lines.png"), std::make_pair(1000u, 600u));
  plot.log_y = true;  // a zero and a NaN are left out on a log scale
  plot.series[1].y[2] = 0;
  plot_lines(dir / "log.png", plot);
  EXPECT_EQ(png_size(dir / "log.png").first, 1000u);
  EXPECT_EQ(entries(dir.path()), 2u);
}

TEST(Plot, HeatmapWritesAPng) {
  TempDir dir;
  Heatmap map{"loads", "expert", "layer", "load / mean", {}};
  for (int layer = 0; layer < 3; ++layer) {
    map.values.emplace_back();
    for (int e = 0; e < 1024; ++e) map.values.back().push_back(std::sin(e * 0.1 + layer) + 1);
  }
  plot_heatmap(dir / "map.png", map);
  EXPECT_EQ(png_size(dir / "map.png"), std::make_pair(1000u, 600u));
  map.values = {{1, 1}, {1, 1}};  // constant values still plot
  plot_heatmap(dir / "flat.png", map);
  EXPECT_EQ(entries(dir.path()), 2u);
}

TEST(Plot, BadInputLeavesNoFile) {
  TempDir dir;
  write_file(dir / "old.png", "old");
  expect_error([&] { plot_lines(dir / "old.png", {"empty", "x", "y", {}, false}); }, {"old.png", "nothing to plot"});
  expect_error([&] { plot_lines(dir / "old.png", {"t", "x", "y", {{"s", {1, 2}, {1}}}, false}); }, {"old.png", "'s'"});
  expect_error([&] { plot_lines(dir / "old.png", {"t", "x", "y", {{"s", {1}, {-1}}}, true}); }, {"nothing to plot"});
  expect_error([&] { plot_heatmap(dir / "old.png", {"t", "x", "y", "v", {{1, 2}, {3}}}); }, {"old.png", "row 1"});
  expect_error([&] { plot_heatmap(dir / "old.png", {"t", "x", "y", "v", {{1, NAN}}}); }, {"non-finite"});
  expect_error([&] { plot_heatmap(dir / "no" / "such" / "dir.png", {"t", "x", "y", "v", {{1}}}); }, {"dir.png"});
  std::ifstream in(dir / "old.png");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "old");
  EXPECT_EQ(entries(dir.path()), 1u);
}

TEST(RunMetrics, MovingAverage) {
  EXPECT_EQ(moving_average({1, 3, 5, 7}, 2), (std::vector<double>{1, 2, 4, 6}));
  EXPECT_EQ(moving_average({1, 3}, 1), (std::vector<double>{1, 3}));
}

TEST(RunMetrics, CurvesTableAndPlots) {
  TempDir dir;
  write_file(dir / "run.jsonl",
             "{\"step\":1,\"loss\":5.0,\"maxvio_batch\":2.0}\n"
             "{\"step\":2,\"loss\":4.0,\"maxvio_batch\":1.0}\n"
             "{\"step\":2,\"val_loss\":4.5,\"maxvio_global\":0.5,\"maxvio_global_per_layer\":[0.25,0.75],"
             "\"load_cv\":0.1,\"load_cv_per_layer\":[0.1,0.1],\"dead_expert_share\":0.25,"
             "\"dead_expert_share_per_layer\":[0.5,0],\"routing_entropy\":0.9,"
             "\"expert_loads\":[[0,2,2,4],[2,2,2,2]]}\n");
  const RunMetrics metrics = read_run_metrics(dir / "run.jsonl");
  ASSERT_EQ(metrics.steps.size(), 2u);
  ASSERT_EQ(metrics.validations.size(), 1u);
  std::vector<double> steps, values;
  metric_curve(&steps, &values, metrics.steps, "maxvio_batch");
  EXPECT_EQ(values, (std::vector<double>{2, 1}));
  EXPECT_EQ(last_validation(metrics, "maxvio_global"), 0.5);
  EXPECT_TRUE(std::isnan(last_validation(metrics, "missing")));
  EXPECT_EQ(relative_expert_loads(metrics), (std::vector<std::vector<double>>{{0, 1, 1, 2}, {1, 1, 1, 1}}));
  const std::string table = balance_table(metrics);
  EXPECT_NE(table.find("| 0 | 0.250 | 0.100 | 50.0% | – |"), std::string::npos) << table;
  EXPECT_NE(table.find("| **mean** | 0.500 | 0.100 | 25.0% | 0.900 |"), std::string::npos) << table;

  const std::vector<fs::path> plots = plot_training_metrics(dir / "run.jsonl", dir.path());
  ASSERT_EQ(plots.size(), 3u);
  for (const char* name : {"run-loss.png", "run-maxvio.png", "run-expert-load.png"})
    EXPECT_EQ(png_size(dir / name).first, 1000u) << name;

  // A run without balance metrics: the loss plot only, no table.
  write_file(dir / "plain.jsonl", "{\"step\":1,\"loss\":5.0}\n{\"step\":1,\"val_loss\":5.5}\n");
  EXPECT_EQ(plot_training_metrics(dir / "plain.jsonl", dir.path()).size(), 1u);
  EXPECT_EQ(balance_table(read_run_metrics(dir / "plain.jsonl")), "");
  write_file(dir / "bad.jsonl", "{\"step\":1,\"loss\":5.0}\nnot json\n");
  expect_error([&] { read_run_metrics(dir / "bad.jsonl"); }, {"bad.jsonl", "line 2"});
}

}  // namespace
}  // namespace megamoe
