// The forward/backward pairs of a DeepSeek-V2/V3 decoder layer for training (docs/models.md#2-deepseek-v2v3):
// MLA attention, the SwiGLU MLP, and the MoE layer (gate, routed and shared experts). Each forward
// pass keeps what its backward pass needs in an *Activations struct; each backward pass adds the
// weight gradients into the gradient block (same offsets as the parameter block) and writes the
// gradient of its input. All arrays live in blocks the caller allocates once (util/arena.h).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/config.h"
#include "moe/moe.h"
#include "moe/router.h"
#include "ops/rope.h"
#include "train/parameters.h"
#include "util/arena.h"

namespace megamoe::train {

// Sizes of one training batch: `sequences` rows of `seq_len` tokens.
struct BatchShape {
  int64_t sequences = 0, seq_len = 0;
  int64_t tokens() const { return sequences * seq_len; }
};

// The parameter block and the gradient block, read and added to through one layout.
struct ParamBlocks {
  const float* values;
  float* grads;
  const float* value(const ParamTensor& t) const { return values + t.offset; }
  float* grad(const ParamTensor& t) const { return grads + t.offset; }
};

// ---- MLA attention, naive (expanded) form ----
// Training runs whole sequences, where expanding k_nope and v per head costs less than the
// absorbed form inference caches (dn instead of C values per query-key product) and the backward
// pass is ordinary attention. Both forms compute the same function.

struct AttentionSetup {
  float softmax_scale = 1;  // (dn+dr)^-0.5, times mscale^2 under YaRN
  // [T, dr/2, 2]: cos and sin of every position's angles as Rope::apply computes them (with YaRN
  // when configured), made once instead of per token and head.
  std::vector<float> rope_table;
  int64_t rope_pairs = 0;  // dr/2

  static AttentionSetup make(const ModelConfig& c, int64_t seq_len);
  // Rotates x [dr] for position `pos`; `inverse` rotates back (the transpose, for gradients).
  void rotate(float* x, int64_t pos, bool inverse = false) const;
};

struct AttentionActivations {
  float* q_a;       // [N, R] x @ q_a^T (q LoRA only)
  float* q_latent;  // [N, R] rms(q_a)
  float* q;         // [N, H, dn+dr] rope applied to the last dr
  float* kv_a;      // [N, C+dr] latent before its norm | roped shared key
  float* latent;    // [N, C] rms(latent)
  float* kv;        // [N, H, dn+dv] k_nope | v per head
  float* k;         // [N, H, dn+dr] keys: k_nope | the shared roped key, per head (one product per head)
  float* probs;     // [B, H, T, T] causal softmax, zero above the diagonal
  float* heads;     // [N, H*dv] attention output before o_proj

  void place(FloatArena& arena, const ModelConfig& c, const BatchShape& shape);
};

struct AttentionScratch {
  float* dheads;     // [N, H*dv]
  float* dq;         // [N, H*(dn+dr)]
  float* dkv;        // [N, H*(dn+dv)]
  float* dkv_a;      // [N, C+dr]
  float* dlatent;    // [N, C]
  float* dq_latent;  // [N, R]
  float* dk;         // [N, H, dn+dr] gradient of the keys (the shared key's parts summed in head order)
  float* dprobs;     // [threads, T, T]

  void place(FloatArena& arena, const ModelConfig& c, const BatchShape& shape, int64_t threads);
};

// out [N, D] = attention(x [N, D]), x already normalized; positions restart at 0 in every sequence.
void attention_forward(float* out, AttentionActivations& a, const float* x, const AttentionParams& p,
                       const ParamBlocks& params, const ModelConfig& c, const AttentionSetup& setup,
                       const BatchShape& shape);
// dx [N, D] = d/dx given dout [N, D]; weight gradients added.
void attention_backward(float* dx, AttentionScratch& s, const float* dout, const AttentionActivations& a,
                        const float* x, const AttentionParams& p, const ParamBlocks& params, const ModelConfig& c,
                        const AttentionSetup& setup, const BatchShape& shape);

// ---- SwiGLU MLP: dense layers, routed and shared experts ----

// gate and up are adjacent in the parameter block (the tensor list names them one after the
// other), so [gate; up] is one [2I, D] matrix: one matrix product instead of two, on more rows.
struct MlpActivations {
  float* gate_up;  // [rows, 2I] x @ [gate; up]^T: gate(x) | up(x) per row
  float* act;      // [rows, I] silu(gate(x)) * up(x)

  void place(FloatArena& arena, int64_t rows, int64_t width);
  MlpActivations rows_from(int64_t first, int64_t width) const {
    return {gate_up + first * 2 * width, act + first * width};
  }
};

struct MlpScratch {
  float* dact;      // [rows, I]
  float* dgate_up;  // [rows, 2I]

  void place(FloatArena& arena, int64_t rows, int64_t width);
  MlpScratch rows_from(int64_t first, int64_t width) const {
    return {dact + first * width, dgate_up + first * 2 * width};
  }
};

// y [rows, D] = down(silu(x @ gate^T) * (x @ up^T)).
void mlp_forward(float* y, const MlpActivations& a, const float* x, int64_t rows, const MlpParams& p,
                 const ParamBlocks& params, int64_t D);
// dx [rows, D] = d/dx (+= with add_dx) given dy [rows, D]; weight gradients added.
void mlp_backward(float* dx, const MlpScratch& s, const float* dy, const MlpActivations& a, const float* x,
                  int64_t rows, const MlpParams& p, const ParamBlocks& params, int64_t D, bool add_dx = false);

// ---- MoE: gate, routed experts, shared experts ----

// How training keeps the routed experts' loads even (docs/models.md#load-balancing, docs/training.md).
enum class BalanceStrategy {
  None,        // no balancing
  AuxLoss,     // Switch auxiliary loss alpha * E * sum_i f_i P_i over the batch
  SeqAuxLoss,  // DeepSeek-V3 sequence-wise auxiliary loss: the same per sequence, averaged
  Bias,        // auxiliary-loss-free: after each step b_i += u * sign(mean load - load_i)
};

// The auxiliary balancing loss of each MoE layer, added to the training loss. Over a group of G
// tokens (the batch for AuxLoss, each sequence for SeqAuxLoss): f_i = E / (k G) * count_i (count_i:
// slots routed to expert i), P_i = mean over the group of s'_i = s_i / sum_j s_j (the normalized
// scores; the softmax itself for softmax gates); loss = alpha * sum_i f_i P_i, averaged over the
// groups. f has no gradient (the top-k choice has none); P carries it to the scores and the gate.
struct BalanceLoss {
  BalanceStrategy strategy = BalanceStrategy::None;
  double alpha = 0;
  // Data-parallel training (docs/distributed.md): AuxLoss's batch is the global one, so its
  // per-expert counts and score sums [2E] are summed over every rank's batch by this call; only
  // training forwards use it. Empty in one process.
  std::function<void(std::span<double>)> sum_over_ranks;
  bool on() const { return strategy == BalanceStrategy::AuxLoss || strategy == BalanceStrategy::SeqAuxLoss; }
};

struct MoeActivations {
  float* scores;    // [N, E] softmax or sigmoid of the router logits
  Routing routing;  // experts and weights [N, k], chosen as inference chooses (moe/router.h)
  ExpertGroups groups;
  float* grouped_x;        // [N*k, D] each slot's token, in expert order
  MlpActivations experts;  // [N*k, I_moe]
  float* grouped_y;        // [N*k, D] each slot's expert output, before weighting
  MlpActivations shared;   // [N, n_shared*I_moe]
  float* aux_grad;         // [B, E] d(auxiliary loss)/d(normalized score) of each sequence's tokens
  double aux_loss = 0;     // the layer's auxiliary balancing loss (0 without one)

  void place(FloatArena& arena, const ModelConfig& c, const BatchShape& shape);
};

struct MoeScratch {
  float* dweights;     // [N, k] gradient of the combine weights
  float* dscores;      // [N, E] gradient of the scores (the combine weights' and the auxiliary loss's)
  float* dgrouped_y;   // [N*k, D]
  float* dgrouped_x;   // [N*k, D]
  MlpScratch experts;  // [N*k, I_moe]
  MlpScratch shared;   // [N, n_shared*I_moe]

  void place(FloatArena& arena, const ModelConfig& c, const BatchShape& shape);
};

// out [N, D] = shared(x) + sum_j weight[t,j] * expert_{e[t,j]}(x) for x [N, D].
// The top-k choice itself has no gradient: gradients reach the chosen experts' weights and,
// through the combine weights, the scores and the gate, exactly as the forward pass uses them.
// With `balance` on, a.aux_loss is the layer's auxiliary loss and backward adds its gradient.
void moe_forward(float* out, MoeActivations& a, const float* x, const MoeParams& p, const ParamBlocks& params,
                 const ModelConfig& c, const RouterSpec& router, const BatchShape& shape,
                 const BalanceLoss& balance = {});
void moe_backward(float* dx, MoeScratch& s, const float* dout, const MoeActivations& a, const float* x,
                  const MoeParams& p, const ParamBlocks& params, const ModelConfig& c, const RouterSpec& router,
                  const BatchShape& shape, const BalanceLoss& balance = {});

}  // namespace megamoe::train
