#include "ops/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace megamoe {

double yarn_mscale(double factor, double mscale) { return factor <= 1 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0; }

Rope Rope::make(int64_t dim, double theta, const std::optional<YarnScaling>& yarn, double magnitude) {
  Rope rope;
  rope.magnitude = magnitude;
  const int64_t half = dim / 2;
  rope.frequencies.resize(half);
  for (int64_t i = 0; i < half; ++i) rope.frequencies[i] = std::pow(theta, -2.0 * double(i) / double(dim));
  if (!yarn) return rope;

  // The dimension whose wavelength fits `rotations` times into the original context.
  auto correction_dim = [&](double rotations) {
    return double(dim) * std::log(yarn->original_max_position / (2 * std::numbers::pi * rotations)) /
           (2 * std::log(theta));
  };
  const double low = std::max(std::floor(correction_dim(yarn->beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(yarn->beta_slow)), double(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    const double f = rope.frequencies[i];
    rope.frequencies[i] = f / yarn->factor * ramp + f * (1 - ramp);
  }
  return rope;
}

void Rope::apply(float* x, int64_t pos, bool inverse) const {
  for (size_t i = 0; i < frequencies.size(); ++i) {
    const double angle = double(inverse ? -pos : pos) * frequencies[i];
    const float c = float(std::cos(angle) * magnitude), s = float(std::sin(angle) * magnitude);
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * c - b * s;
    x[2 * i + 1] = a * s + b * c;
  }
}

}  // namespace megamoe
