#include "train/optimizer.h"

#include <cmath>
#include <numbers>

#include "train/train_ops.h"
#include "util/parallel.h"

namespace megamoe::train {

double LearningRateSchedule::at(int64_t step) const {
  if (step < warmup) return peak * double(step + 1) / double(warmup);
  const int64_t decay_steps = total - warmup;
  if (decay_steps <= 1) return peak;
  const double progress = std::min(1.0, double(step - warmup) / double(decay_steps - 1));
  const double cosine = 0.5 * (1 + std::cos(std::numbers::pi * progress));
  return peak * (min_ratio + (1 - min_ratio) * cosine);
}

AdamW::AdamW(const ParameterLayout& layout, AdamWSettings settings)
    : settings_(settings), m_(size_t(layout.size)), v_(size_t(layout.size)) {
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const TensorSpec& spec = layout.tensors[i];
    if (spec.role == TensorRole::RouterBias) continue;
    segments_.push_back({layout.places[i].offset, layout.places[i].size(), spec.shape.size() == 2});
  }
}

void AdamW::update(std::span<float> params, std::span<float> grads, double lr, int64_t step) {
  const AdamWSettings& s = settings_;
  const double bias1 = 1 - std::pow(s.beta1, double(step)), bias2 = 1 - std::pow(s.beta2, double(step));
  const float step_size = float(lr / bias1), inv_sqrt_bias2 = float(1 / std::sqrt(bias2));
  const float b1 = float(s.beta1), b2 = float(s.beta2), eps = float(s.eps);
  for (const Segment& seg : segments_) {
    const float shrink = seg.decay ? float(1 - lr * s.weight_decay) : 1.f;
    float* p = params.data() + seg.offset;
    float* g = grads.data() + seg.offset;
    float* m = m_.data() + seg.offset;
    float* v = v_.data() + seg.offset;
    parallel_for(seg.size, seg.size >= kParallelGrain, [&](int64_t i) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      p[i] = p[i] * shrink - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bias2 + eps);
      g[i] = 0;
    });
  }
}

double clip_gradient_norm(std::span<float> grads, double max_norm) {
  // Eight interleaved partial sums (they vectorize), added in a fixed order: the same norm every run.
  constexpr size_t kLanes = 8;
  double partial[kLanes] = {};
  const size_t n = grads.size(), whole = n / kLanes * kLanes;
  for (size_t i = 0; i < whole; i += kLanes)
    for (size_t lane = 0; lane < kLanes; ++lane) partial[lane] += double(grads[i + lane]) * grads[i + lane];
  for (size_t i = whole; i < n; ++i) partial[i - whole] += double(grads[i]) * grads[i];
  double sum_squares = 0;
  for (double p : partial) sum_squares += p;
  const double norm = std::sqrt(sum_squares);
  if (max_norm > 0 && norm > max_norm) {
    const float scale = float(max_norm / (norm + 1e-6));
    for (float& g : grads) g *= scale;
  }
  return norm;
}

}  // namespace megamoe::train
