// SwiGLU MLPs and the MoE layer for training, forward and backward.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "ops/elementwise.h"
#include "train/layers.h"
#include "train/train_ops.h"
#include "util/parallel.h"

namespace megamoe::train {

void MlpActivations::place(FloatArena& arena, int64_t rows, int64_t width) {
  gate_up = arena.take(rows * 2 * width);
  act = arena.take(rows * width);
}

void MlpScratch::place(FloatArena& arena, int64_t rows, int64_t width) {
  dact = arena.take(rows * width);
  dgate_up = arena.take(rows * 2 * width);
}

void mlp_forward(float* y, const MlpActivations& a, const float* x, int64_t rows, const MlpParams& p,
                 const ParamBlocks& params, int64_t D) {
  const int64_t I = p.gate.rows;
  linear_forward(a.gate_up, x, params.value(p.gate), rows, 2 * I, D);  // [gate; up] as one matrix
  parallel_for(rows, rows * I >= kParallelGrain, [&](int64_t r) {
    float* act = a.act + r * I;
    std::copy_n(a.gate_up + r * 2 * I, I, act);
    swiglu(act, a.gate_up + r * 2 * I + I, I);
  });
  linear_forward(y, a.act, params.value(p.down), rows, D, I);
}

void mlp_backward(float* dx, const MlpScratch& s, const float* dy, const MlpActivations& a, const float* x,
                  int64_t rows, const MlpParams& p, const ParamBlocks& params, int64_t D, bool add_dx) {
  const int64_t I = p.gate.rows;
  linear_backward(s.dact, params.grad(p.down), dy, a.act, params.value(p.down), rows, D, I);
  parallel_for(rows, rows * I >= kParallelGrain, [&](int64_t r) {
    const float* gate_up = a.gate_up + r * 2 * I;
    float* d = s.dgate_up + r * 2 * I;
    swiglu_backward(d, d + I, s.dact + r * I, gate_up, gate_up + I, I);
  });
  linear_backward(dx, params.grad(p.gate), s.dgate_up, x, params.value(p.gate), rows, 2 * I, D, add_dx);
}

namespace {

// scores [E] = softmax or sigmoid of one token's router logits, as route() scores them.
void score(float* scores, const float* logits, int64_t E, ScoringFunc scoring) {
  std::copy_n(logits, E, scores);
  if (scoring == ScoringFunc::Softmax) softmax(scores, E);
  else
    for (int64_t e = 0; e < E; ++e) scores[e] = sigmoid(scores[e]);
}

// a.aux_loss = the layer's auxiliary balancing loss (BalanceLoss), and a.aux_grad its gradient
// with respect to each token's normalized scores (the same for all tokens of a group).
void balance_loss_forward(MoeActivations& a, const BalanceLoss& balance, int64_t E, int64_t k,
                          const BatchShape& shape) {
  a.aux_loss = 0;
  if (!balance.on()) return;
  const int64_t T = shape.seq_len, N = shape.tokens();
  const int64_t G = balance.strategy == BalanceStrategy::SeqAuxLoss ? T : N, groups = N / G;  // tokens per group
  std::vector<int64_t> counts(E);
  std::vector<double> probs(E);  // sum over the group of the normalized scores
  for (int64_t g = 0; g < groups; ++g) {
    std::fill(counts.begin(), counts.end(), 0);
    std::fill(probs.begin(), probs.end(), 0.0);
    for (int64_t n = g * G; n < (g + 1) * G; ++n) {
      for (int64_t j = 0; j < k; ++j) ++counts[a.routing.experts[n * k + j]];
      const float* scores = a.scores + n * E;
      double sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += scores[e];
      for (int64_t e = 0; e < E; ++e) probs[e] += scores[e] / sum;
    }
    double group_tokens = double(G);  // the global batch's under data parallelism
    if (balance.strategy == BalanceStrategy::AuxLoss && balance.sum_over_ranks) {
      std::vector<double> sums(counts.begin(), counts.end());  // [2E]: counts, then score sums
      sums.insert(sums.end(), probs.begin(), probs.end());
      balance.sum_over_ranks(sums);
      std::copy_n(sums.begin(), E, counts.begin());
      std::copy_n(sums.begin() + E, E, probs.begin());
      group_tokens = std::accumulate(sums.begin(), sums.begin() + E, 0.0) / double(k);
    }
    double loss = 0;
    for (int64_t e = 0; e < E; ++e) {
      const double f = double(E) * double(counts[e]) / (double(k) * group_tokens);
      loss += f * probs[e] / group_tokens;
      // d loss / d s'_{n,e} for each token n of the group, the mean over groups included. Over the
      // local G: data-parallel ranks average their gradients, which divides by the rank count.
      const float grad = float(balance.alpha * f / double(G * groups));
      for (int64_t b = g * G / T; b < (g + 1) * G / T; ++b) a.aux_grad[b * E + e] = grad;
    }
    a.aux_loss += balance.alpha * loss / double(groups);
  }
}

}  // namespace

void MoeActivations::place(FloatArena& arena, const ModelConfig& c, const BatchShape& shape) {
  const int64_t N = shape.tokens(), slots = N * c.num_experts_per_tok, D = c.hidden_size;
  scores = arena.take(N * c.n_routed_experts);
  grouped_x = arena.take(slots * D);
  experts.place(arena, slots, c.moe_intermediate_size);
  grouped_y = arena.take(slots * D);
  shared.place(arena, N, c.n_shared_experts * c.moe_intermediate_size);
  aux_grad = arena.take(shape.sequences * c.n_routed_experts);
}

void MoeScratch::place(FloatArena& arena, const ModelConfig& c, const BatchShape& shape) {
  const int64_t N = shape.tokens(), slots = N * c.num_experts_per_tok, D = c.hidden_size;
  dweights = arena.take(N * c.num_experts_per_tok);
  dscores = arena.take(N * c.n_routed_experts);
  dgrouped_y = arena.take(slots * D);
  dgrouped_x = arena.take(slots * D);
  experts.place(arena, slots, c.moe_intermediate_size);
  shared.place(arena, N, c.n_shared_experts * c.moe_intermediate_size);
}

void moe_forward(float* out, MoeActivations& a, const float* x, const MoeParams& p, const ParamBlocks& params,
                 const ModelConfig& c, const RouterSpec& router, const BatchShape& shape, const BalanceLoss& balance) {
  const int64_t N = shape.tokens(), D = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok;
  const int64_t I = c.moe_intermediate_size;
  // Router logits go into `scores`, which route() reads before they become scores in place.
  linear_forward(a.scores, x, params.value(p.gate), N, E, D);
  route(&a.routing, a.scores, N, p.bias.present() ? params.value(p.bias) : nullptr, router);
  parallel_for(N, N * E >= kParallelGrain,
               [&](int64_t n) { score(a.scores + n * E, a.scores + n * E, E, router.scoring); });
  balance_loss_forward(a, balance, E, k, shape);

  a.groups.build(a.routing, E);
  const int64_t slots = N * k;
  gather_routed_rows(a.grouped_x, x, D, k, a.groups.slot_of_row);
  // One expert per thread at a time; each runs its own rows with one-thread BLAS calls. Only the
  // active experts: with thousands of experts most receive no token in a batch.
  const int64_t active = int64_t(a.groups.active.size());
  parallel_for<Schedule::Dynamic>(active, slots * D * I >= kParallelGrain, [&](int64_t i) {
    const int32_t e = a.groups.active[i];
    const int64_t first = a.groups.start[e], count = a.groups.count(e);
    mlp_forward(a.grouped_y + first * D, a.experts.rows_from(first, I), a.grouped_x + first * D, count, p.experts[e],
                params, D);
  });

  if (p.shared.gate.present()) mlp_forward(out, a.shared, x, N, p.shared, params, D);
  else std::fill_n(out, N * D, 0.f);
  combine_routed_rows(out, a.routing.weights.data(), D, k, 0, N,
                      [&](int64_t slot) { return a.grouped_y + a.groups.row_of_slot[slot] * D; });
}

void moe_backward(float* dx, MoeScratch& s, const float* dout, const MoeActivations& a, const float* x,
                  const MoeParams& p, const ParamBlocks& params, const ModelConfig& c, const RouterSpec& router,
                  const BatchShape& shape, const BalanceLoss& balance) {
  const int64_t N = shape.tokens(), D = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok;
  const int64_t I = c.moe_intermediate_size;

  // Combine: out[n] += w[n,j] * y[slot]  =>  dw[n,j] = dout[n] . y[slot],  dy[slot] = w[n,j] * dout[n].
  parallel_for(N, N * k * D >= kParallelGrain, [&](int64_t n) {
    const float* d = dout + n * D;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t row = a.groups.row_of_slot[n * k + j];
      const float* y = a.grouped_y + row * D;
      float* dy = s.dgrouped_y + row * D;
      const float w = a.routing.weights[n * k + j];
      double dot = 0;
      for (int64_t i = 0; i < D; ++i) {
        dot += double(d[i]) * y[i];
        dy[i] = w * d[i];
      }
      s.dweights[n * k + j] = float(dot);
    }
  });
  const int64_t active = int64_t(a.groups.active.size());
  parallel_for<Schedule::Dynamic>(active, N * k * D * I >= kParallelGrain, [&](int64_t i) {
    const int32_t e = a.groups.active[i];
    const int64_t first = a.groups.start[e], count = a.groups.count(e);
    mlp_backward(s.dgrouped_x + first * D, s.experts.rows_from(first, I), s.dgrouped_y + first * D,
                 a.experts.rows_from(first, I), a.grouped_x + first * D, count, p.experts[e], params, D);
  });

  if (p.shared.gate.present()) mlp_backward(dx, s.shared, dout, a.shared, x, N, p.shared, params, D);
  else std::fill_n(dx, N * D, 0.f);
  // Each token sums its slots' input gradients, in slot order.
  combine_routed_rows(dx, nullptr, D, k, 0, N,
                      [&](int64_t slot) { return s.dgrouped_x + a.groups.row_of_slot[slot] * D; });

  // Combine weights -> scores: w_j = f * s_j (normalized: w_j = f * s_j / sum_chosen s), only the
  // chosen experts' scores receive gradient. Then scores -> router logits, in place.
  const double f = router.scaling;
  parallel_for(N, N * E >= kParallelGrain, [&](int64_t n) {
    const float* scores = a.scores + n * E;
    float* ds = s.dscores + n * E;
    std::fill_n(ds, E, 0.f);
    const int32_t* chosen = a.routing.experts.data() + n * k;
    const float* dw = s.dweights + n * k;
    if (router.normalize) {
      double sum = 0, weighted = 0;  // sum of chosen scores, sum of dw_j * s_j
      for (int64_t j = 0; j < k; ++j) {
        sum += scores[chosen[j]];
        weighted += double(dw[j]) * scores[chosen[j]];
      }
      for (int64_t j = 0; j < k; ++j) ds[chosen[j]] += float(f * (dw[j] / sum - weighted / (sum * sum)));
    } else {
      for (int64_t j = 0; j < k; ++j) ds[chosen[j]] += float(f * dw[j]);
    }
  });
  // The auxiliary loss: s' = s / S with S = sum_j s_j, so ds_j += (g_j - sum_i g_i s'_i) / S for
  // g = d loss / d s' of the token's group.
  if (balance.on()) {
    const int64_t T = shape.seq_len;
    parallel_for(N, N * E >= kParallelGrain, [&](int64_t n) {
      const float* scores = a.scores + n * E;
      const float* g = a.aux_grad + n / T * E;
      float* ds = s.dscores + n * E;
      double sum = 0, dot = 0;
      for (int64_t e = 0; e < E; ++e) {
        sum += scores[e];
        dot += double(g[e]) * scores[e];
      }
      dot /= sum;
      for (int64_t e = 0; e < E; ++e) ds[e] += float((g[e] - dot) / sum);
    });
  }
  parallel_for(N, N * E >= kParallelGrain, [&](int64_t n) {
    const float* scores = a.scores + n * E;
    float* ds = s.dscores + n * E;
    if (router.scoring == ScoringFunc::Softmax) {
      softmax_backward(ds, scores, E);
    } else {
      for (int64_t e = 0; e < E; ++e) ds[e] *= scores[e] * (1.f - scores[e]);
    }
  });
  linear_backward(dx, params.grad(p.gate), s.dscores, x, params.value(p.gate), N, E, D, /*add_dx=*/true);
}

}  // namespace megamoe::train
