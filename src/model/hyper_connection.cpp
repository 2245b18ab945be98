#include "model/hyper_connection.h"

#include <algorithm>
#include <cmath>

#include "ops/matmul.h"

namespace megamoe {
namespace {

double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

}  // namespace

void StreamActivations::place_streams(FloatArena& arena, const ModelConfig& c, int64_t N, int64_t R) {
  const int64_t D = c.hidden_size, M = c.v4.hc_mult;
  streams = arena.take(N * M * D);
  h = arena.take(N * D);
  x = arena.take(N * D);
  y = arena.take(N * D);
  pre = arena.take(N * M);
  post = arena.take(N * M);
  comb = arena.take(N * M * M);
  mix = arena.take(N * (2 + M) * M);
  old_streams = arena.take(M * D);
  final_streams = arena.take(R * M * D);
  final_pre = arena.take(R * M);
  final_rows = arena.take(R * D);
  sinkhorn.resize(size_t(M * M));
}

// mix [N, rows] = (X @ fn^T) / rms(X) for the flattened streams X [N, M*D].
void hc_mix(float* mix, const float* X, int64_t N, const WeightView& fn, double eps) {
  const int64_t rows = fn.rows, width = fn.cols;
  matmul(mix, X, N, fn);
  for (int64_t n = 0; n < N; ++n) {
    double sum_squares = 0;
    for (int64_t i = 0; i < width; ++i) sum_squares += double(X[n * width + i]) * X[n * width + i];
    const double inverse_rms = 1 / std::sqrt(sum_squares / double(width) + eps);
    for (int64_t r = 0; r < rows; ++r) mix[n * rows + r] = float(mix[n * rows + r] * inverse_rms);
  }
}

// h [N, D] = sum_i pre[n, i] X[n, i] over the M streams of X [N, M, D].
void combine_streams(float* h, const float* pre, const float* X, int64_t N, int64_t M, int64_t D) {
  std::fill_n(h, N * D, 0.f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < M; ++i) {
      const float p = pre[n * M + i];
      const float* x = X + (n * M + i) * D;
      for (int64_t d = 0; d < D; ++d) h[n * D + d] += p * x[d];
    }
}

void hc_weights(float* pre, float* post, float* comb, const float* mix, int64_t N, const HyperConnection& w,
                const V4Config& v, std::vector<double>& a) {
  const int64_t M = v.hc_mult, rows = (2 + M) * M;
  const double eps = v.hc_eps;
  a.resize(size_t(M * M));  // one token's comb
  for (int64_t n = 0; n < N; ++n) {
    const float* m = mix + n * rows;
    for (int64_t i = 0; i < M; ++i) {
      pre[n * M + i] = float(sigmoid(double(m[i]) * w.scale[0] + w.base[i]) + eps);
      post[n * M + i] = float(2 * sigmoid(double(m[M + i]) * w.scale[1] + w.base[M + i]));
    }
    for (int64_t i = 0; i < M; ++i) {  // softmax of each row, + eps
      double* row = a.data() + i * M;
      double top = -INFINITY, sum = 0;
      for (int64_t j = 0; j < M; ++j) {
        row[j] = double(m[2 * M + i * M + j]) * w.scale[2] + w.base[2 * M + i * M + j];
        top = std::max(top, row[j]);
      }
      for (int64_t j = 0; j < M; ++j) sum += row[j] = std::exp(row[j] - top);
      for (int64_t j = 0; j < M; ++j) row[j] = row[j] / sum + eps;
    }
    auto normalize_columns = [&] {
      for (int64_t j = 0; j < M; ++j) {
        double sum = 0;
        for (int64_t i = 0; i < M; ++i) sum += a[i * M + j];
        for (int64_t i = 0; i < M; ++i) a[i * M + j] /= sum + eps;
      }
    };
    normalize_columns();
    for (int64_t iter = 1; iter < v.hc_sinkhorn_iters; ++iter) {
      for (int64_t i = 0; i < M; ++i) {
        double sum = 0;
        for (int64_t j = 0; j < M; ++j) sum += a[i * M + j];
        for (int64_t j = 0; j < M; ++j) a[i * M + j] /= sum + eps;
      }
      normalize_columns();
    }
    for (int64_t k = 0; k < M * M; ++k) comb[n * M * M + k] = float(a[k]);
  }
}

void hc_head_weights(float* pre, const float* mix, int64_t R, const HyperConnection& w, const V4Config& v) {
  const int64_t M = v.hc_mult;
  for (int64_t i = 0; i < R * M; ++i) pre[i] = float(sigmoid(double(mix[i]) * w.scale[0] + w.base[i % M]) + v.hc_eps);
}

// After a sublayer with output y [N, D]: X_j <- post_j * y + sum_i comb[i, j] X_i. old [M, D]: working memory.
void hc_post(float* X, const float* y, const float* post, const float* comb, int64_t N, int64_t M, int64_t D,
             float* old) {
  for (int64_t n = 0; n < N; ++n) {
    float* streams = X + n * M * D;
    std::copy_n(streams, M * D, old);
    for (int64_t j = 0; j < M; ++j) {
      float* out = streams + j * D;
      const float p = post[n * M + j];
      for (int64_t d = 0; d < D; ++d) out[d] = p * y[n * D + d];
      for (int64_t i = 0; i < M; ++i) {
        const float weight = comb[(n * M + i) * M + j];
        for (int64_t d = 0; d < D; ++d) out[d] += weight * old[i * D + d];
      }
    }
  }
}

}  // namespace megamoe
