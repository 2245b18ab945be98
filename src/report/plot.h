// PNG plots through PLplot's pngcairo driver (headless): line plots of several series with a
// legend, and heatmaps with a colour bar. Each PNG is written atomically (whole or absent).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace megamoe {

struct Series {
  std::string name;          // the legend's text
  std::vector<double> x, y;  // [points]; non-finite points (and y <= 0 on a log scale) are left out
};

struct LinePlot {
  std::string title, x_label, y_label;
  std::vector<Series> series;
  bool log_y = false;
};

struct Heatmap {
  std::string title, x_label, y_label, value_label;  // value_label: the colour bar's
  std::vector<std::vector<double>> values;           // [rows, columns], drawn with row 0 at the bottom
};

// Error naming `png` for an empty plot, ragged or non-finite heatmap values, a missing pngcairo
// driver (Debian package plplot-driver-cairo) or a file that cannot be written.
void plot_lines(const std::filesystem::path& png, const LinePlot& plot);
void plot_heatmap(const std::filesystem::path& png, const Heatmap& heatmap);

}  // namespace megamoe
