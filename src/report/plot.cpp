#include "report/plot.h"

#include <plplot/plstream.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string_view>

#include "util/atomic_file.h"
#include "util/error.h"
#include "util/text_file.h"

namespace megamoe {
namespace fs = std::filesystem;
namespace {

constexpr int kWidth = 1000, kHeight = 600;  // pixels
// Colour map 0: 0 the background, 1 axes and text, 2.. the series (Tableau 10).
constexpr int kPalette[][3] = {{255, 255, 255}, {0, 0, 0},       {31, 119, 180},  {255, 127, 14},
                               {44, 160, 44},   {214, 39, 40},   {148, 103, 189}, {140, 86, 75},
                               {227, 119, 194}, {127, 127, 127}, {188, 189, 34},  {23, 190, 207}};
constexpr int kPaletteSize = int(std::size(kPalette)), kSeriesColours = kPaletteSize - 2;

void require_pngcairo(const fs::path& png) {
  const char* menus[256];
  const char* names[256];
  const char** menu_list = menus;
  const char** name_list = names;
  int count = int(std::size(names));
  plgFileDevs(&menu_list, &name_list, &count);
  for (int i = 0; i < count; ++i)
    if (std::string_view(names[i]) == "pngcairo") return;
  fail("{}: PLplot has no pngcairo driver (install Debian's plplot-driver-cairo)", png.string());
}

// Draws with `draw` into a temporary file beside `png`, then writes its bytes to `png` atomically.
// PLplot ends the process on errors it meets, so everything it could reject is checked first.
void render_png(const fs::path& png, const std::function<void(plstream&)>& draw) {
  require_pngcairo(png);
  const fs::path temp = png.string() + ".plot." + std::to_string(::getpid());
  std::FILE* probe = std::fopen(temp.c_str(), "wb");  // PLplot would prompt for another name
  if (!probe) fail("{}: cannot create {}", png.string(), temp.string());
  std::fclose(probe);
  struct RemoveTemp {
    const fs::path& path;
    ~RemoveTemp() {
      std::error_code ignored;
      fs::remove(path, ignored);
    }
  } remove_temp{temp};
  {
    int r[kPaletteSize], g[kPaletteSize], b[kPaletteSize];
    for (int i = 0; i < kPaletteSize; ++i) r[i] = kPalette[i][0], g[i] = kPalette[i][1], b[i] = kPalette[i][2];
    plstream pls;
    pls.sdev("pngcairo");
    pls.sfnam(temp.c_str());
    pls.spage(0, 0, kWidth, kHeight, 0, 0);
    pls.scmap0(r, g, b, kPaletteSize);
    pls.init();
    draw(pls);
  }  // the stream's end writes the PNG
  const std::string bytes = read_text_file(temp);
  if (bytes.size() < 8) fail("{}: PLplot wrote no image", png.string());
  AtomicFile out(png);
  out.write(bytes);
  out.commit();
}

// [lo, hi] widened when empty, plus a margin.
void pad_range(double* lo, double* hi, double margin) {
  if (*hi - *lo < 1e-12 * std::max(1.0, std::abs(*hi))) *lo -= 0.5, *hi += 0.5;
  const double pad = margin * (*hi - *lo);
  *lo -= pad, *hi += pad;
}

}  // namespace

void plot_lines(const fs::path& png, const LinePlot& plot) {
  // The points drawn, y as log10 on a log scale.
  std::vector<Series> drawn;
  double x_lo = INFINITY, x_hi = -INFINITY, y_lo = INFINITY, y_hi = -INFINITY;
  for (const Series& s : plot.series) {
    if (s.x.size() != s.y.size())
      fail("{}: series '{}' has {} x values and {} y values", png.string(), s.name, s.x.size(), s.y.size());
    Series d{s.name, {}, {}};
    for (size_t i = 0; i < s.x.size(); ++i) {
      const double y = plot.log_y ? (s.y[i] > 0 ? std::log10(s.y[i]) : NAN) : s.y[i];
      if (!std::isfinite(s.x[i]) || !std::isfinite(y)) continue;
      d.x.push_back(s.x[i]), d.y.push_back(y);
      x_lo = std::min(x_lo, s.x[i]), x_hi = std::max(x_hi, s.x[i]);
      y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
    }
    drawn.push_back(std::move(d));
  }
  if (!std::isfinite(x_lo)) fail("{}: nothing to plot ('{}' has no finite points)", png.string(), plot.title);
  pad_range(&x_lo, &x_hi, 0);
  pad_range(&y_lo, &y_hi, 0.05);
  render_png(png, [&](plstream& pls) {
    pls.col0(1);
    pls.env(x_lo, x_hi, y_lo, y_hi, 0, plot.log_y ? 20 : 0);
    pls.lab(plot.x_label.c_str(), plot.y_label.c_str(), plot.title.c_str());
    pls.width(2);
    for (size_t i = 0; i < drawn.size(); ++i) {
      pls.col0(2 + int(i) % kSeriesColours);
      if (drawn[i].x.size() == 1) pls.poin(1, drawn[i].x.data(), drawn[i].y.data(), 17);
      else pls.line(int(drawn[i].x.size()), drawn[i].x.data(), drawn[i].y.data());
    }
    const int n = int(drawn.size());
    std::vector<int> options(n, PL_LEGEND_LINE), text_colours(n, 1), colours(n), styles(n, 1);
    std::vector<double> widths(n, 2);
    std::vector<const char*> texts(n);
    for (int i = 0; i < n; ++i) colours[i] = 2 + i % kSeriesColours, texts[i] = drawn[i].name.c_str();
    double legend_width, legend_height;
    pls.legend(&legend_width, &legend_height, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX,
               PL_POSITION_TOP | PL_POSITION_RIGHT | PL_POSITION_INSIDE, 0.02, 0.02, 0.08, 0, 1, 1, 0, 0, n,
               options.data(), 1.0, 0.9, 2.0, 0.0, text_colours.data(), texts.data(), nullptr, nullptr, nullptr,
               nullptr, colours.data(), styles.data(), widths.data(), nullptr, nullptr, nullptr, nullptr);
  });
}

void plot_heatmap(const fs::path& png, const Heatmap& heatmap) {
  const int rows = int(heatmap.values.size()), columns = rows ? int(heatmap.values[0].size()) : 0;
  if (rows == 0 || columns == 0) fail("{}: nothing to plot ('{}' has no values)", png.string(), heatmap.title);
  double z_lo = INFINITY, z_hi = -INFINITY;
  for (int r = 0; r < rows; ++r) {
    if (int(heatmap.values[r].size()) != columns)
      fail("{}: row {} has {} values, row 0 has {}", png.string(), r, heatmap.values[r].size(), columns);
    for (double v : heatmap.values[r]) {
      if (!std::isfinite(v)) fail("{}: row {} holds a non-finite value", png.string(), r);
      z_lo = std::min(z_lo, v), z_hi = std::max(z_hi, v);
    }
  }
  pad_range(&z_lo, &z_hi, 0);
  // PLplot's image is indexed [x][y] and colours the n - 1 cells between n samples by the first
  // one's value: the values transposed, with the last column and row repeated once.
  std::vector<double> transposed(size_t(columns + 1) * (rows + 1));  // [columns + 1, rows + 1]
  std::vector<const double*> by_column(columns + 1);
  for (int c = 0; c <= columns; ++c) {
    for (int r = 0; r <= rows; ++r)
      transposed[size_t(c) * (rows + 1) + r] = heatmap.values[std::min(r, rows - 1)][std::min(c, columns - 1)];
    by_column[c] = &transposed[size_t(c) * (rows + 1)];
  }
  render_png(png, [&](plstream& pls) {
    // Colour map 1: viridis at five control points (perceptually even, readable in grey).
    const double at[] = {0, 0.25, 0.5, 0.75, 1};
    const double red[] = {0.267, 0.231, 0.129, 0.369, 0.992}, green[] = {0.005, 0.322, 0.569, 0.788, 0.906},
                 blue[] = {0.329, 0.545, 0.549, 0.384, 0.145};
    pls.scmap1l(true, 5, at, red, green, blue, nullptr);
    pls.adv(0);
    pls.vpor(0.1, 0.84, 0.12, 0.9);
    // Cells centred on whole numbers, so ticks name rows and columns.
    const double x_lo = -0.5, x_hi = columns - 0.5, y_lo = -0.5, y_hi = rows - 0.5;
    pls.wind(x_lo, x_hi, y_lo, y_hi);
    pls.image(by_column.data(), columns + 1, rows + 1, x_lo, x_hi, y_lo, y_hi, z_lo, z_hi, x_lo, x_hi, y_lo, y_hi);
    pls.col0(1);
    pls.box("bcnst", 0, 0, "bcnstv", rows <= 16 ? 1 : 0, 0);
    pls.lab(heatmap.x_label.c_str(), heatmap.y_label.c_str(), heatmap.title.c_str());
    int label_options[] = {PL_COLORBAR_LABEL_RIGHT}, sub_ticks[] = {0}, value_counts[] = {2};
    const char* labels[] = {heatmap.value_label.c_str()};
    const char* axis_options[] = {"bcvtm"};
    double ticks[] = {0}, range[] = {z_lo, z_hi}, colorbar_width, colorbar_height;
    const double* values[] = {range};
    pls.colorbar(&colorbar_width, &colorbar_height, PL_COLORBAR_IMAGE,
                 PL_POSITION_RIGHT | PL_POSITION_OUTSIDE | PL_POSITION_VIEWPORT, 0.02, 0, 0.03, 1.0, 0, 1, 1, 0, 0, 0,
                 0, 1, label_options, labels, 1, axis_options, ticks, sub_ticks, value_counts, values);
  });
}

}  // namespace megamoe
