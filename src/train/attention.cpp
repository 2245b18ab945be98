// MLA attention for training (naive form), forward and backward.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "model/deepseek_v3.h"
#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "train/layers.h"
#include "train/train_ops.h"
#include "util/parallel.h"

namespace megamoe::train {

AttentionSetup AttentionSetup::make(const ModelConfig& c, int64_t seq_len) {
  // The same rope and softmax scale as inference; the table holds what Rope::apply computes per call.
  const auto [rope, softmax_scale] = mla_rope(c);
  AttentionSetup setup;
  setup.softmax_scale = softmax_scale;
  const int64_t half = setup.rope_pairs = c.qk_rope_head_dim / 2;
  setup.rope_table.resize(seq_len * half * 2);
  for (int64_t pos = 0; pos < seq_len; ++pos)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(pos) * rope.frequencies[i];
      setup.rope_table[(pos * half + i) * 2] = float(std::cos(angle) * rope.magnitude);
      setup.rope_table[(pos * half + i) * 2 + 1] = float(std::sin(angle) * rope.magnitude);
    }
  return setup;
}

void AttentionSetup::rotate(float* x, int64_t pos, bool inverse) const {
  const float* cos_sin = rope_table.data() + pos * rope_pairs * 2;
  for (int64_t i = 0; i < rope_pairs; ++i) {
    const float c = cos_sin[2 * i], s = inverse ? -cos_sin[2 * i + 1] : cos_sin[2 * i + 1];
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * c - b * s;
    x[2 * i + 1] = a * s + b * c;
  }
}

namespace {

// Rows per block of queries in the causal products: four blocks.
int64_t causal_block(int64_t T) { return std::max<int64_t>(1, (T + 3) / 4); }

}  // namespace

void AttentionActivations::place(FloatArena& arena, const ModelConfig& c, const BatchShape& shape) {
  const int64_t N = shape.tokens(), H = c.num_attention_heads, R = c.q_lora_rank.value_or(0);
  const int64_t C = c.kv_lora_rank, dr = c.qk_rope_head_dim, T = shape.seq_len;
  q_a = arena.take(N * R);
  q_latent = arena.take(N * R);
  q = arena.take(N * H * c.qk_head_dim());
  kv_a = arena.take(N * (C + dr));
  latent = arena.take(N * C);
  kv = arena.take(N * H * (c.qk_nope_head_dim + c.v_head_dim));
  k = arena.take(N * H * c.qk_head_dim());
  probs = arena.take(shape.sequences * H * T * T);
  heads = arena.take(N * H * c.v_head_dim);
}

void AttentionScratch::place(FloatArena& arena, const ModelConfig& c, const BatchShape& shape, int64_t threads) {
  const int64_t N = shape.tokens(), H = c.num_attention_heads, R = c.q_lora_rank.value_or(0);
  const int64_t C = c.kv_lora_rank, dr = c.qk_rope_head_dim, T = shape.seq_len;
  dheads = arena.take(N * H * c.v_head_dim);
  dq = arena.take(N * H * c.qk_head_dim());
  dkv = arena.take(N * H * (c.qk_nope_head_dim + c.v_head_dim));
  dkv_a = arena.take(N * (C + dr));
  dlatent = arena.take(N * C);
  dq_latent = arena.take(N * R);
  dk = arena.take(N * H * c.qk_head_dim());
  dprobs = arena.take(threads * T * T);
}

void attention_forward(float* out, AttentionActivations& a, const float* x, const AttentionParams& p,
                       const ParamBlocks& params, const ModelConfig& c, const AttentionSetup& setup,
                       const BatchShape& shape) {
  const int64_t B = shape.sequences, T = shape.seq_len, N = shape.tokens();
  const int64_t D = c.hidden_size, H = c.num_attention_heads, C = c.kv_lora_rank;
  const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim, dq = dn + dr;
  const int64_t kv_width = dn + dv;  // per head in kv
  const float eps = float(c.rms_norm_eps), scale = setup.softmax_scale;

  if (c.q_lora_rank) {
    const int64_t R = *c.q_lora_rank;
    linear_forward(a.q_a, x, params.value(p.q_a_proj), N, R, D);
    rms_norm(a.q_latent, a.q_a, params.value(p.q_a_norm), N, R, eps);
    linear_forward(a.q, a.q_latent, params.value(p.q_b_proj), N, H * dq, R);
  } else {
    linear_forward(a.q, x, params.value(p.q_proj), N, H * dq, D);
  }
  linear_forward(a.kv_a, x, params.value(p.kv_a_proj), N, C + dr, D);
  rms_norm(a.latent, a.kv_a, params.value(p.kv_a_norm), N, C, eps, C + dr);
  parallel_for(N, N * H * dr >= kParallelGrain, [&](int64_t n) {
    const int64_t pos = n % T;
    setup.rotate(a.kv_a + n * (C + dr) + C, pos);
    for (int64_t h = 0; h < H; ++h) setup.rotate(a.q + (n * H + h) * dq + dn, pos);
  });
  linear_forward(a.kv, a.latent, params.value(p.kv_b_proj), N, H * kv_width, C);
  parallel_for(N, N * H * dq >= kParallelGrain, [&](int64_t n) {
    for (int64_t h = 0; h < H; ++h) {
      float* key = a.k + (n * H + h) * dq;
      std::copy_n(a.kv + (n * H + h) * kv_width, dn, key);
      std::copy_n(a.kv_a + n * (C + dr) + C, dr, key + dn);
    }
  });

  // Per (sequence, head): scores = scale * q k^T, causal softmax, probs @ v. The queries go in
  // blocks of rows, each multiplied only with the keys it sees (5/8 of the square for 4 blocks).
  const int64_t block = causal_block(T);
  parallel_for(B * H, B * H * T * T * (dq + dv) >= kParallelGrain, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H, first = b * T;
    float* probs = a.probs + bh * T * T;  // [T, T]
    const int64_t head = first * H + h;   // row `first`, head h of [N, H, ...] arrays
    const float* q = a.q + head * dq;
    const float* v = a.kv + head * kv_width + dn;
    for (int64_t r0 = 0; r0 < T; r0 += block) {
      const int64_t r1 = std::min(T, r0 + block);  // rows [r0, r1) see keys [0, r1)
      gemm(probs + r0 * T, T, {q + r0 * H * dq, H * dq}, {a.k + head * dq, H * dq, true}, r1 - r0, r1, dq, scale);
      for (int64_t t = r0; t < r1; ++t) {
        softmax(probs + t * T, t + 1);
        std::fill(probs + t * T + t + 1, probs + (t + 1) * T, 0.f);
      }
      gemm(a.heads + (head + r0 * H) * dv, H * dv, {probs + r0 * T, T}, {v, H * kv_width}, r1 - r0, dv, r1);
    }
  });
  linear_forward(out, a.heads, params.value(p.o_proj), N, D, H * dv);
}

void attention_backward(float* dx, AttentionScratch& s, const float* dout, const AttentionActivations& a,
                        const float* x, const AttentionParams& p, const ParamBlocks& params, const ModelConfig& c,
                        const AttentionSetup& setup, const BatchShape& shape) {
  const int64_t B = shape.sequences, T = shape.seq_len, N = shape.tokens();
  const int64_t D = c.hidden_size, H = c.num_attention_heads, C = c.kv_lora_rank;
  const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim, dq = dn + dr;
  const int64_t kv_width = dn + dv;
  const float eps = float(c.rms_norm_eps), scale = setup.softmax_scale;

  linear_backward(s.dheads, params.grad(p.o_proj), dout, a.heads, params.value(p.o_proj), N, D, H * dv);

  const int64_t block = causal_block(T);
  parallel_for(B * H, B * H * T * T * (dq + dv) >= kParallelGrain, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H, first = b * T, head = first * H + h;
    const float* probs = a.probs + bh * T * T;                // [T, T]
    float* dprobs = s.dprobs + omp_get_thread_num() * T * T;  // [T, T]
    const float* v = a.kv + head * kv_width + dn;
    const float* dheads = s.dheads + head * dv;
    const float* q = a.q + head * dq;
    const float* k = a.k + head * dq;
    float* dv_head = s.dkv + head * kv_width + dn;
    float* dk_head = s.dk + head * dq;
    // Row blocks as in the forward pass, the last first: it reaches every key, so it writes all of
    // dV and dK and the earlier blocks add to their first rows.
    for (int64_t r0 = (T - 1) / block * block; r0 >= 0; r0 -= block) {
      const int64_t r1 = std::min(T, r0 + block), rows = r1 - r0;  // rows [r0, r1) saw keys [0, r1)
      const float beta = r1 == T ? 0.f : 1.f;
      const float* do_rows = dheads + r0 * H * dv;
      float* ds = dprobs + r0 * T;                                                                       // [rows, T]
      gemm(ds, T, {do_rows, H * dv}, {v, H * kv_width, true}, rows, r1, dv);                             // dP = dO V^T
      gemm(dv_head, H * kv_width, {probs + r0 * T, T, true}, {do_rows, H * dv}, r1, dv, rows, 1, beta);  // dV += P^T dO
      for (int64_t t = r0; t < r1; ++t) {  // dS: softmax backward, zero above the diagonal
        softmax_backward(dprobs + t * T, probs + t * T, t + 1);
        std::fill(dprobs + t * T + t + 1, dprobs + t * T + r1, 0.f);
      }
      gemm(s.dq + (head + r0 * H) * dq, H * dq, {ds, T}, {k, H * dq}, rows, dq, r1, scale);        // dQ = s dS K
      gemm(dk_head, H * dq, {ds, T, true}, {q + r0 * H * dq, H * dq}, r1, dq, rows, scale, beta);  // dK += s dS^T Q
    }
  });

  // Keys back to their sources: k_nope per head into kv's gradient; the shared rope key sums its
  // heads' parts in head order, then the rotations are undone (a rotation's transpose is the
  // opposite rotation), as for the queries' rope parts.
  parallel_for(N, N * H * dq >= kParallelGrain, [&](int64_t n) {
    float* dk_pe = s.dkv_a + n * (C + dr) + C;
    std::fill_n(dk_pe, dr, 0.f);
    for (int64_t h = 0; h < H; ++h) {
      const float* dkey = s.dk + (n * H + h) * dq;
      std::copy_n(dkey, dn, s.dkv + (n * H + h) * kv_width);
      for (int64_t i = 0; i < dr; ++i) dk_pe[i] += dkey[dn + i];
    }
    const int64_t pos = n % T;
    setup.rotate(dk_pe, pos, /*inverse=*/true);
    for (int64_t h = 0; h < H; ++h) setup.rotate(s.dq + (n * H + h) * dq + dn, pos, true);
  });

  linear_backward(s.dlatent, params.grad(p.kv_b_proj), s.dkv, a.latent, params.value(p.kv_b_proj), N, H * kv_width, C);
  rms_norm_backward(s.dkv_a, params.grad(p.kv_a_norm), s.dlatent, a.kv_a, params.value(p.kv_a_norm), N, C, eps, C + dr,
                    C + dr);
  if (c.q_lora_rank) {
    const int64_t R = *c.q_lora_rank;
    linear_backward(s.dq_latent, params.grad(p.q_b_proj), s.dq, a.q_latent, params.value(p.q_b_proj), N, H * dq, R);
    rms_norm_backward(s.dq_latent, params.grad(p.q_a_norm), s.dq_latent, a.q_a, params.value(p.q_a_norm), N, R, eps);
    linear_backward(dx, params.grad(p.q_a_proj), s.dq_latent, x, params.value(p.q_a_proj), N, R, D);
  } else {
    linear_backward(dx, params.grad(p.q_proj), s.dq, x, params.value(p.q_proj), N, H * dq, D);
  }
  linear_backward(dx, params.grad(p.kv_a_proj), s.dkv_a, x, params.value(p.kv_a_proj), N, C + dr, D,
                  /*add_dx=*/true);
}

}  // namespace megamoe::train
