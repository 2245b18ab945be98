// Rotary position embedding, interleaved: pairs (x[2i], x[2i+1]) rotate by pos * f_i.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

namespace megamoe {

// YaRN frequency interpolation (docs/models.md#rope-and-yarn).
struct YarnScaling {
  double factor;                 // s
  double original_max_position;  // L0
  double beta_fast, beta_slow;
};

struct Rope {
  std::vector<double> frequencies;  // [dim/2] f_i
  double magnitude = 1;             // cos and sin are multiplied by it (YaRN mscale ratio)

  // f_i = theta^(-2i/dim), interpolated by YaRN when given.
  static Rope make(int64_t dim, double theta, const std::optional<YarnScaling>& yarn, double magnitude = 1);
  int64_t dim() const { return int64_t(frequencies.size()) * 2; }

  // Rotates x [dim] for position `pos`; `inverse` rotates back (by -pos).
  void apply(float* x, int64_t pos, bool inverse = false) const;
};

// YaRN's attention magnitude: 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1).
double yarn_mscale(double factor, double mscale);

}  // namespace megamoe
