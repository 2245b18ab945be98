// AdamW with fp32 moments (PyTorch's torch.optim.AdamW update, decoupled weight decay), a learning
// rate with linear warmup and cosine decay, and gradient clipping by the global norm.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "train/parameters.h"

namespace megamoe::train {

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;  // on matrices (embedding, linear layers, gate, head), not on norms
};

// lr(step) for step = 0, 1, ...: peak * (step + 1) / warmup during the warmup steps, then a cosine
// from peak down to peak * min_ratio at the last step.
struct LearningRateSchedule {
  double peak = 1e-3;
  double min_ratio = 0.1;
  int64_t warmup = 0;
  int64_t total = 1;

  double at(int64_t step) const;
};

class AdamW {
 public:
  AdamW(const ParameterLayout& layout, AdamWSettings settings);

  // One update of every trainable tensor with `lr`; `step` counts updates from 1. Router biases
  // are not trained by gradient (they steer the top-k choice only) and stay as they are.
  // The gradients are consumed: each is set to zero as it is read, so the next batch's backward
  // pass starts from zero without another pass over the block (with thousands of experts the
  // gradient block is mostly experts no token reached, and zeroing it apart cost a tenth of a step).
  void update(std::span<float> params, std::span<float> grads, double lr, int64_t step);

  std::span<float> first_moments() { return m_; }
  std::span<float> second_moments() { return v_; }
  std::span<const float> first_moments() const { return m_; }
  std::span<const float> second_moments() const { return v_; }

 private:
  struct Segment {
    int64_t offset, size;
    bool decay;
  };
  std::vector<Segment> segments_;  // the trainable tensors
  AdamWSettings settings_;
  std::vector<float> m_, v_;  // [layout.size] each
};

// Scales grads so their global L2 norm is at most max_norm (as torch.nn.utils.clip_grad_norm_:
// by max_norm / (norm + 1e-6) when the norm exceeds max_norm; max_norm <= 0: no clipping).
// Returns the norm before clipping.
double clip_gradient_norm(std::span<float> grads, double max_norm);

}  // namespace megamoe::train
