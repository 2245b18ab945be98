// Hyper-connections (docs/models.md#hyper-connections), shared by DeepSeek-V4 and V4.1: M residual
// streams, mixed around each sublayer by weights computed from the streams themselves.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/deepseek_v4.h"
#include "util/arena.h"

namespace megamoe {

// The hyper-connection arrays of a forward pass, which V4's and V4.1's Activations derive from.
struct StreamActivations {
  float* streams;                // [N, M, D] the residual streams
  float* h;                      // [N, D] a sublayer's input collapsed from the streams
  float* x;                      // [N, D] h normalized
  float* y;                      // [N, D] a sublayer's output
  float* pre;                    // [N, M] how the streams collapse
  float* post;                   // [N, M] how y joins each stream
  float* comb;                   // [N, M, M] how the streams mix
  float* mix;                    // [N, (2+M)*M] the weights' inputs
  float* old_streams;            // [M, D] one token's streams before hc_post
  float* final_streams;          // [R, M, D] the streams of the rows whose logits are wanted
  float* final_pre;              // [R, M]
  float* final_rows;             // [R, D]
  std::vector<double> sinkhorn;  // [M, M] one token's comb

  // Takes the arrays for N tokens, R of them with logits, in both passes of the family's place().
  void place_streams(FloatArena& arena, const ModelConfig& c, int64_t N, int64_t R);
};

// mix [N, rows] = (X @ fn^T) / rms(X) for the flattened streams X [N, M*D].
void hc_mix(float* mix, const float* X, int64_t N, const WeightView& fn, double eps);

// From mix [N, (2+M)*M]: pre [N, M] (how the streams collapse into a sublayer's input), post [N, M]
// (how its output joins each stream) and comb [N, M, M] (how the streams mix), comb made doubly
// stochastic by Sinkhorn. sinkhorn: working memory of M*M values.
void hc_weights(float* pre, float* post, float* comb, const float* mix, int64_t N, const HyperConnection& w,
                const V4Config& v, std::vector<double>& sinkhorn);

// The head's collapse weights pre [R, M] from mix [R, M]: sigmoid(mix * scale + base) + eps.
void hc_head_weights(float* pre, const float* mix, int64_t R, const HyperConnection& w, const V4Config& v);

// h [N, D] = sum_i pre[n, i] X[n, i] over the M streams of X [N, M, D].
void combine_streams(float* h, const float* pre, const float* X, int64_t N, int64_t M, int64_t D);

// After a sublayer with output y [N, D]: X_j <- post_j * y + sum_i comb[i, j] X_i. old [M, D]: working memory.
void hc_post(float* X, const float* y, const float* post, const float* comb, int64_t N, int64_t M, int64_t D,
             float* old);

}  // namespace megamoe
