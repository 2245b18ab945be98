#include "model/deepseek_v4.h"

#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "model/hyper_connection.h"
#include "moe/router.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/round_trip.h"
#include "util/arena.h"
#include "util/error.h"
#include "util/parallel.h"

namespace megamoe {
// ---- the cache ----

namespace {

int64_t window_ring(const ModelConfig& c, int64_t capacity) {
  return std::min(c.v4.sliding_window + V4Cache::kRewindSlack, capacity);
}

// The sizes of one compressor's cache: rows kept, and values of rows and of entries.
struct CompressorSizes {
  int64_t overlap, ring, row_values, entry_values;
};

CompressorSizes compressor_sizes(int64_t ratio, int64_t width, int64_t capacity) {
  const int64_t overlap = ratio == 4 ? 2 : 1, ring = std::min(overlap * ratio + V4Cache::kRewindSlack, capacity);
  return {overlap, ring, ring * 2 * overlap * width, capacity / ratio * width};
}

CompressorCache make_compressor_cache(int64_t ratio, int64_t width, int64_t capacity) {
  const CompressorSizes sizes = compressor_sizes(ratio, width, capacity);
  CompressorCache s;
  s.ratio = ratio;
  s.width = width;
  s.overlap = sizes.overlap;
  s.ring = sizes.ring;
  s.rows.resize(size_t(sizes.row_values));
  s.entries.resize(size_t(sizes.entry_values));
  return s;
}

int64_t compressor_values(const CompressorSizes& s) { return s.row_values + s.entry_values; }
int64_t compressor_values(const CompressorCache& s) { return int64_t(s.rows.size() + s.entries.size()); }

}  // namespace

V4Cache::V4Cache(const ModelConfig& c, int64_t capacity) : RingCache(capacity) {
  const V4Config& v = c.v4;
  layers_.resize(c.num_hidden_layers);
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    V4LayerCache& layer = layers_[L];
    layer.window_ring = window_ring(c, capacity);
    layer.window.resize(size_t(layer.window_ring * v.head_dim));
    const int64_t ratio = v.compress_ratio(L);
    if (ratio) layer.compressor = make_compressor_cache(ratio, v.head_dim, capacity);
    if (ratio == 4) layer.indexer = make_compressor_cache(4, v.index_head_dim, capacity);
  }
}

int64_t V4Cache::values(const ModelConfig& c, int64_t capacity) {
  const V4Config& v = c.v4;
  int64_t n = 0;
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    n += window_ring(c, capacity) * v.head_dim;
    const int64_t ratio = v.compress_ratio(L);
    if (ratio) n += compressor_values(compressor_sizes(ratio, v.head_dim, capacity));
    if (ratio == 4) n += compressor_values(compressor_sizes(4, v.index_head_dim, capacity));
  }
  return n;
}

int64_t V4Cache::bytes() const {
  int64_t n = 0;
  for (const V4LayerCache& layer : layers_)
    n += int64_t(layer.window.size()) + compressor_values(layer.compressor) + compressor_values(layer.indexer);
  return n * int64_t(sizeof(float));
}

// ---- loading ----

DeepseekV4Model::DeepseekV4Model(std::unique_ptr<Checkpoint> checkpoint, ModelConfig config)
    : DeepseekModel(std::move(checkpoint), std::move(config)), activations_(std::make_unique<V4Activations>()) {
  const Checkpoint& ckpt = *checkpoint_;
  const ModelConfig& c = config_;
  for_each_tensor(c, &weights_, [&]<class Slot>(const TensorSpec& spec, Slot* slot) {
    if constexpr (std::is_same_v<Slot, WeightView>)
      *slot = ckpt.weight(spec.name, spec.shape[0], spec.shape[1], ScaleLayout::DotScaleE8M0,
                          block_format(spec, c.weight_format));
    else if constexpr (std::is_same_v<Slot, std::vector<float>>) *slot = ckpt.values_f32(spec.name, spec.shape);
    else *slot = ckpt.indices(spec.name, spec.shape, c.n_routed_experts);
  });

  std::vector<std::span<const MlpWeights>> experts;
  for (const V4BlockWeights& layer : weights_.layers) experts.emplace_back(layer.ffn.experts);
  serve_experts(std::move(experts));

  ropes_ = V4Ropes::make(c);
}

DeepseekV4Model::~DeepseekV4Model() = default;

std::unique_ptr<SequenceCache> DeepseekV4Model::new_cache(int64_t capacity) const {
  return std::make_unique<V4Cache>(config_, capacity);
}

int64_t DeepseekV4Model::cache_bytes(int64_t capacity) const {
  return V4Cache::values(config_, capacity) * int64_t(sizeof(float));
}

int64_t DeepseekV4Model::cache_bytes_per_token() const {
  // The entries grow by hd/r (+ dI/4 in CSA layers) values per token and layer; the rings are fixed.
  const V4Config& v = config_.v4;
  double values = 0;
  for (int64_t L = 0; L < config_.num_hidden_layers; ++L) {
    const int64_t ratio = v.compress_ratio(L);
    if (ratio) values += double(v.head_dim) / double(ratio);
    if (ratio == 4) values += double(v.index_head_dim) / 4;
  }
  return int64_t(std::ceil(values * sizeof(float)));
}

// ---- the forward pass ----

// The working memory of a forward pass (gemma.cpp's Activations), carved from one block the model
// keeps from call to call: a decode step runs every layer hundreds of times a second, and fresh
// buffers would cost page faults, zeroing and heap trimming each time.
struct V4Activations : StreamActivations {
  float* compressed;                   // [N, c*d] a compressor's kv projections (c*d at most 2*max(hd, dI))
  float* gates;                        // [N, c*d] its gate scores
  float* qr;                           // [N, q_lora_rank]
  float* q;                            // [N, H, hd]
  float* kv;                           // [N, hd] raw keys (= values)
  float* o;                            // [N, H, hd] attention output
  float* index_q;                      // [N, index_n_heads, dI] CSA layers
  float* index_w;                      // [N, index_n_heads]
  float* group_in;                     // [N, H*hd/G]
  float* group_out;                    // [N, o_lora_rank]
  float* low_rank;                     // [N, G, o_lora_rank]
  float* router_logits;                // [N, E]
  float* next_normed;                  // [N, D] the next layer's router input, for prefetching
  float* final_mix;                    // [R, M]
  std::vector<int32_t> table_experts;  // [N, k] a hash layer's choices
  Routing routing;
  struct Window {
    const TokenBatch::Sequence* sequence;
    int64_t index;  // n: tokens n*r .. n*r + r - 1
  };
  std::vector<Window> windows;  // the compressor windows a batch completes
  // Each thread's lists inside the parallel loops over windows and queries.
  struct ThreadLists {
    std::vector<const float*> rows, gate_rows;  // a window's pool, or a query's keys (rows)
    std::vector<float> entry, scores, index_scores;
    std::vector<int32_t> chosen;
  };
  std::vector<ThreadLists> threads;  // [omp_get_max_threads()]
  FloatArena arena;

  void place(const ModelConfig& c, const TokenBatch& batch) {
    const V4Config& v = c.v4;
    const int64_t N = batch.size(), R = int64_t(batch.logit_rows.size()), D = c.hidden_size, M = v.hc_mult;
    const int64_t H = c.num_attention_heads, hd = v.head_dim, nh = v.index_n_heads, dI = v.index_head_dim;
    const int64_t G = v.o_groups, lr = v.o_lora_rank;
    arena.count();
    for (int pass = 0; pass < 2; ++pass) {
      place_streams(arena, c, N, R);
      compressed = arena.take(N * 2 * std::max(hd, dI));
      gates = arena.take(N * 2 * std::max(hd, dI));
      qr = arena.take(N * c.q_lora_rank.value_or(0));
      q = arena.take(N * H * hd);
      kv = arena.take(N * hd);
      o = arena.take(N * H * hd);
      index_q = arena.take(N * nh * dI);
      index_w = arena.take(N * nh);
      group_in = arena.take(N * H * hd / G);
      group_out = arena.take(N * lr);
      low_rank = arena.take(N * G * lr);
      router_logits = arena.take(N * c.n_routed_experts);
      next_normed = arena.take(N * D);
      final_mix = arena.take(R * M);
      if (pass == 0) arena.allocate();
    }
    threads.resize(size_t(omp_get_max_threads()));
  }
  ThreadLists& mine() { return threads[size_t(omp_get_thread_num())]; }
};

namespace {

V4LayerCache& layer_cache(const TokenBatch::Sequence& s, int64_t layer) {
  return static_cast<V4Cache*>(s.cache)->layer(layer);
}

// Before a sublayer: its input h [N, D] collapsed from the streams X [N, M, D] by this sublayer's
// own pre, and the weights that write its output back: post [N, M] and comb [N, M, M].
void hc_pre(float* h, float* post, float* comb, const float* X, int64_t N, const HyperConnection& w,
            const ModelConfig& c, V4Activations& a) {
  hc_mix(a.mix, X, N, w.fn, c.rms_norm_eps);
  hc_weights(a.pre, post, comb, a.mix, N, w, c.v4, a.sinkhorn);
  combine_streams(h, a.pre, X, N, c.v4.hc_mult, c.hidden_size);
}

// x [n] / sqrt(mean(x^2) + eps), in place (the per-head query normalization: no weight).
void normalize(float* x, int64_t n, double eps) {
  double sum_squares = 0;
  for (int64_t i = 0; i < n; ++i) sum_squares += double(x[i]) * x[i];
  const float inverse = float(1 / std::sqrt(sum_squares / double(n) + eps));
  for (int64_t i = 0; i < n; ++i) x[i] *= inverse;
}

// Computes every entry that the batch's tokens complete for one compressor of `layer` (its own or
// its indexer's), then keeps the rows of the windows still open in the caches. Entries are rms-normed,
// roped at their window's first position, then FP8 round-tripped (attention) or Hadamard-rotated
// and FP4 round-tripped (indexer). x [N, D] is the attention input.
void compress(const float* x, const TokenBatch& batch, int64_t layer, bool indexer, const CompressorWeights& w,
              const Rope& rope, const ModelConfig& c, V4Activations& a) {
  const int64_t N = batch.size(), cd = w.wkv.rows, dr = c.qk_rope_head_dim;
  auto state_of = [&](const TokenBatch::Sequence& s) -> CompressorCache& {
    V4LayerCache& cache = layer_cache(s, layer);
    return indexer ? cache.indexer : cache.compressor;
  };
  const CompressorCache& shape = state_of(batch.sequences[0]);
  const int64_t r = shape.ratio, d = shape.width, overlap = shape.overlap;
  float* kv = a.compressed;  // [N, c*d] each
  float* gate = a.gates;
  matmul(kv, x, N, w.wkv);
  matmul(gate, x, N, w.wgate);
  for (int64_t n = 0; n < N; ++n) {
    const float* ape = w.ape.data() + batch.tokens[n].position % r * cd;
    for (int64_t i = 0; i < cd; ++i) gate[n * cd + i] += ape[i];
  }

  std::vector<V4Activations::Window>& windows = a.windows;
  windows.clear();
  for (const TokenBatch::Sequence& s : batch.sequences)
    for (int64_t p = s.start; p < s.end(); ++p)
      if ((p + 1) % r == 0) windows.push_back({&s, p / r});

  parallel_for<Schedule::Dynamic>(int64_t(windows.size()), windows.size() > 1, [&](int64_t k) {
    V4Activations::ThreadLists& lists = a.mine();
    std::vector<const float*>&kv_rows = lists.rows, &gate_rows = lists.gate_rows;  // the pool: c*r tokens' rows
    std::vector<float>& entry = lists.entry;
    entry.resize(size_t(d));
    const TokenBatch::Sequence& s = *windows[k].sequence;
    CompressorCache& state = state_of(s);
    const int64_t n = windows[k].index;
    // Rows of position p: this batch's, or kept in the cache from an earlier one.
    auto rows_of = [&](int64_t p, int64_t feature_offset) {
      if (p >= s.start) {
        kv_rows.push_back(kv + s.row(p) * cd + feature_offset);
        gate_rows.push_back(gate + s.row(p) * cd + feature_offset);
      } else {
        const float* kept = state.rows.data() + p % state.ring * 2 * cd;
        kv_rows.push_back(kept + feature_offset);
        gate_rows.push_back(kept + cd + feature_offset);
      }
    };
    kv_rows.clear();
    gate_rows.clear();
    // Ratio 4 overlaps: the previous window's first-half features, then this one's second half.
    if (overlap == 2 && n > 0)
      for (int64_t p = (n - 1) * r; p < n * r; ++p) rows_of(p, 0);
    for (int64_t p = n * r; p < (n + 1) * r; ++p) rows_of(p, overlap == 2 ? d : 0);
    const size_t pool = kv_rows.size();
    for (int64_t j = 0; j < d; ++j) {  // softmax over the pool, per feature
      float top = -INFINITY;
      for (size_t e = 0; e < pool; ++e) top = std::max(top, gate_rows[e][j]);
      double sum = 0, weighted = 0;
      for (size_t e = 0; e < pool; ++e) {
        const double weight = std::exp(double(gate_rows[e][j]) - top);
        sum += weight;
        weighted += weight * kv_rows[e][j];
      }
      entry[j] = float(weighted / sum);
    }
    rms_norm(entry.data(), entry.data(), w.norm.data(), 1, d, float(c.rms_norm_eps));
    rope.apply(entry.data() + d - dr, n * r);
    if (indexer) {
      hadamard_rotate(entry.data(), d);
      fp4_round_trip(entry.data(), d);
    } else {
      fp8_round_trip(entry.data(), d - dr);
    }
    std::copy(entry.begin(), entry.end(), state.entries.begin() + n * d);
  });

  for (const TokenBatch::Sequence& s : batch.sequences) {  // keep the latest rows for windows to come
    CompressorCache& state = state_of(s);
    for (int64_t p = std::max(s.start, s.end() - state.ring); p < s.end(); ++p) {
      float* kept = state.rows.data() + p % state.ring * 2 * cd;
      std::copy_n(kv + s.row(p) * cd, cd, kept);
      std::copy_n(gate + s.row(p) * cd, cd, kept + cd);
    }
  }
}

// The shared-KV attention (docs/models.md#shared-kv-attention): out [N, D] = attention(x [N, D]) for the tokens of
// `batch`, which also extends their caches.
void attention_forward(float* out, const float* x, const TokenBatch& batch, int64_t layer, const ModelConfig& c,
                       const V4AttentionWeights& w, const Rope& rope, V4Activations& a) {
  const V4Config& v = c.v4;
  const int64_t N = batch.size(), H = c.num_attention_heads, hd = v.head_dim, dr = c.qk_rope_head_dim;
  const int64_t q_rank = *c.q_lora_rank, W = v.sliding_window, ratio = v.compress_ratio(layer);
  const float eps = float(c.rms_norm_eps);

  // Queries [N, H, hd]: from the normalized low-rank qr [N, q_rank], each head normalized, roped.
  float* qr = a.qr;  // [N, q_rank]
  float* q = a.q;    // [N, H, hd]
  matmul(qr, x, N, w.wq_a);
  rms_norm(qr, qr, w.q_norm.data(), N, q_rank, eps);
  matmul(q, qr, N, w.wq_b);
  // Raw keys (= values) [N, hd]: normalized, roped, the non-rope dims FP8 round-tripped.
  float* kv = a.kv;  // [N, hd]
  matmul(kv, x, N, w.wkv);
  rms_norm(kv, kv, w.kv_norm.data(), N, hd, eps);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t pos = batch.tokens[n].position;
    for (int64_t h = 0; h < H; ++h) {
      float* qh = q + (n * H + h) * hd;
      normalize(qh, hd, c.rms_norm_eps);
      rope.apply(qh + hd - dr, pos);
    }
    rope.apply(kv + n * hd + hd - dr, pos);
    fp8_round_trip(kv + n * hd, hd - dr);
  }

  // Compressed entries, and for CSA the indexer's queries [N, nh, dI] and head weights [N, nh].
  const int64_t nh = v.index_n_heads, dI = v.index_head_dim;
  float *iq = a.index_q, *iw = a.index_w;
  if (ratio) compress(x, batch, layer, false, w.compressor, rope, c, a);
  if (ratio == 4) {
    compress(x, batch, layer, true, w.index_compressor, rope, c, a);
    matmul(iq, qr, N, w.index_wq_b);
    matmul(iw, x, N, w.index_weights_proj);
    const float head_scale = float(1 / std::sqrt(double(dI) * double(nh)));
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t h = 0; h < nh; ++h) {
        float* query = iq + (n * nh + h) * dI;
        rope.apply(query + dI - dr, batch.tokens[n].position);
        hadamard_rotate(query, dI);
        fp4_round_trip(query, dI);
      }
      for (int64_t h = 0; h < nh; ++h) iw[n * nh + h] *= head_scale;
    }
  }

  // Each query sees the raw keys of its window and the compressed entries of complete windows
  // (CSA: the indexer's top index_topk); the head's sink adds exp(sink) to the denominator only.
  float* o = a.o;  // [N, H, hd]
  const float softmax_scale = float(1 / std::sqrt(double(hd)));
  parallel_for<Schedule::Dynamic>(N, N > 1, [&](int64_t n) {
    V4Activations::ThreadLists& lists = a.mine();
    std::vector<const float*>& keys = lists.rows;
    std::vector<float>&scores = lists.scores, &index_scores = lists.index_scores;
    std::vector<int32_t>& chosen = lists.chosen;
    const TokenBatch::Sequence& s = batch.sequences[batch.tokens[n].sequence];
    const int64_t t = batch.tokens[n].position;
    const V4LayerCache& cache = layer_cache(s, layer);
    keys.clear();
    for (int64_t p = std::max<int64_t>(0, t - W + 1); p <= t; ++p)
      keys.push_back(p >= s.start ? kv + s.row(p) * hd : cache.window.data() + p % cache.window_ring * hd);
    if (ratio) {
      const int64_t complete = (t + 1) / ratio;
      const float* entries = cache.compressor.entries.data();
      if (ratio == 4 && complete > v.index_topk) {
        index_scores.resize(complete);  // I[t, s] = sum_h relu(iq_h . ik_s) * w_h
        for (int64_t e = 0; e < complete; ++e) {
          const float* key = cache.indexer.entries.data() + e * dI;
          float score = 0;
          for (int64_t h = 0; h < nh; ++h)
            score += std::max(0.f, dot(iq + (n * nh + h) * dI, key, dI)) * iw[n * nh + h];
          index_scores[e] = score;
        }
        top_k_indices(&chosen, index_scores.data(), complete, v.index_topk);
        std::sort(chosen.begin(), chosen.end());
        for (int32_t e : chosen) keys.push_back(entries + e * hd);
      } else {
        for (int64_t e = 0; e < complete; ++e) keys.push_back(entries + e * hd);
      }
    }
    const size_t K = keys.size();
    scores.resize(K);
    for (int64_t h = 0; h < H; ++h) {
      const float* qh = q + (n * H + h) * hd;
      const float sink = w.sink[h];
      float top = sink;
      for (size_t k = 0; k < K; ++k) top = std::max(top, scores[k] = dot(qh, keys[k], hd) * softmax_scale);
      double denominator = std::exp(double(sink) - top);
      for (size_t k = 0; k < K; ++k) denominator += scores[k] = std::exp(scores[k] - top);
      float* oh = o + (n * H + h) * hd;
      std::fill_n(oh, hd, 0.f);
      for (size_t k = 0; k < K; ++k) {
        const float p = float(scores[k] / denominator);
        for (int64_t i = 0; i < hd; ++i) oh[i] += p * keys[k][i];
      }
      rope.apply(oh + hd - dr, t, /*inverse=*/true);
    }
  });

  // Keep the latest raw keys for the queries to come.
  for (const TokenBatch::Sequence& s : batch.sequences) {
    V4LayerCache& cache = layer_cache(s, layer);
    for (int64_t p = std::max(s.start, s.end() - cache.window_ring); p < s.end(); ++p)
      std::copy_n(kv + s.row(p) * hd, hd, cache.window.data() + p % cache.window_ring * hd);
  }

  // Grouped low-rank output: group g's heads [N, H*hd/G] -> [N, R] through its rows of wo_a, then wo_b.
  const int64_t G = v.o_groups, R = v.o_lora_rank, group_width = H * hd / G;
  float* group_in = a.group_in;    // [N, H*hd/G]
  float* group_out = a.group_out;  // [N, R]
  float* low_rank = a.low_rank;    // [N, G, R]
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t n = 0; n < N; ++n)
      std::copy_n(o + n * H * hd + g * group_width, group_width, group_in + n * group_width);
    matmul(group_out, group_in, N, G == 1 ? w.wo_a : w.wo_a.row_slice(g * R, R));
    for (int64_t n = 0; n < N; ++n) std::copy_n(group_out + n * R, R, low_rank + (n * G + g) * R);
  }
  matmul(out, low_rank, N, w.wo_b);
}

// out [N, D] = routed experts (sqrt-softplus scores; a hash table or biased top-k picks them)
// + shared experts of x [N, D], with V4's clamped SwiGLU.
void moe_forward(float* out, const float* x, std::span<const int32_t> ids, const ModelConfig& c, const V4MoeWeights& w,
                 const ExpertStore& experts, int64_t layer, ExpertLoad* load, const ExpertParallel* parallel,
                 V4Activations& a) {
  const int64_t N = int64_t(ids.size()), D = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok;
  const MlpOptions options{.swiglu_limit = float(c.v4.swiglu_limit)};
  matmul(a.router_logits, x, N, w.gate);
  Routing& routing = a.routing;
  if (!w.tid2eid.empty()) {
    a.table_experts.resize(size_t(N * k));  // [N, k]
    for (int64_t n = 0; n < N; ++n) std::copy_n(w.tid2eid.data() + ids[n] * k, k, a.table_experts.data() + n * k);
    route_to(&routing, a.router_logits, N, a.table_experts.data(), router_spec(c));
  } else {
    route(&routing, a.router_logits, N, w.bias.data(), router_spec(c));
  }
  if (w.shared.gate.data) mlp_forward(out, x, N, w.shared, options);
  else std::fill_n(out, N * D, 0.f);
  dispatch_routed_experts(parallel, out, x, D, routing, E, experts, layer, load, options);
}

// The experts layer `next` will probably want, read ahead while this layer computes: a hash layer's
// table names them exactly; otherwise its router applied to the current stream mix h [N, D] (the
// streams change little from one layer to the next).
std::span<const int32_t> predict_experts(const float* h, std::span<const int32_t> ids, const ModelConfig& c,
                                         const V4BlockWeights& next, V4Activations& a) {
  const int64_t N = int64_t(ids.size()), D = c.hidden_size, k = c.num_experts_per_tok;
  const V4MoeWeights& w = next.ffn;
  if (!w.tid2eid.empty()) {
    a.table_experts.resize(size_t(N * k));  // [N, k]
    for (int64_t n = 0; n < N; ++n) std::copy_n(w.tid2eid.data() + ids[n] * k, k, a.table_experts.data() + n * k);
    return a.table_experts;
  }
  rms_norm(a.next_normed, h, next.ffn_norm.data(), N, D, float(c.rms_norm_eps));
  matmul(a.router_logits, a.next_normed, N, w.gate);
  route(&a.routing, a.router_logits, N, w.bias.data(), router_spec(c));
  return a.routing.experts;
}

}  // namespace

void DeepseekV4Model::forward(float* logits, std::span<const SequenceStep> steps) const {
  const ForwardPass pass(*this);
  const TokenBatch& batch = flatten<V4Cache>(steps);
  const ModelConfig& c = config_;
  const int64_t N = batch.size(), D = c.hidden_size, M = c.v4.hc_mult;
  const float eps = float(c.rms_norm_eps);
  V4Activations& a = *activations_;
  a.place(c, batch);  // every element is written before it is read

  // Every stream starts as the embedding.
  float *streams = a.streams, *h = a.h, *x = a.x, *y = a.y, *post = a.post, *comb = a.comb;
  for (int64_t n = 0; n < N; ++n) {
    dequantize_row(x + n * D, weights_.embed, batch.ids[n]);
    for (int64_t i = 0; i < M; ++i) std::copy_n(x + n * D, D, streams + (n * M + i) * D);
  }
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    const V4BlockWeights& block = weights_.layers[L];
    const Rope& rope = ropes_.of_layer(c, L);
    hc_pre(h, post, comb, streams, N, block.hc_attn, c, a);
    tap("attn_in", L, h, N, D);
    rms_norm(x, h, block.attn_norm.data(), N, D, eps);
    attention_forward(y, x, batch, L, c, block.attn, rope, a);
    tap("attn_out", L, y, N, D);
    hc_post(streams, y, post, comb, N, M, D, a.old_streams);
    hc_pre(h, post, comb, streams, N, block.hc_ffn, c, a);
    tap("ffn_in", L, h, N, D);
    if (prefetching() && L + 1 < c.num_hidden_layers)
      prefetch(L + 1, predict_experts(h, batch.ids, c, weights_.layers[L + 1], a));
    rms_norm(x, h, block.ffn_norm.data(), N, D, eps);
    moe_forward(y, x, batch.ids, c, block.ffn, experts(), L, expert_load_, expert_parallel_, a);
    tap("ffn_out", L, y, N, D);
    hc_post(streams, y, post, comb, N, M, D, a.old_streams);
    tap("streams", L, streams, N, M * D);
  }
  for (const TokenBatch::Sequence& s : batch.sequences) s.cache->advance(s.count);

  // Head: the streams mixed by hc_head, normalized, projected.
  const int64_t R = int64_t(batch.logit_rows.size());
  for (int64_t r = 0; r < R; ++r)
    std::copy_n(streams + batch.logit_rows[r] * M * D, M * D, a.final_streams + r * M * D);
  hc_mix(a.final_mix, a.final_streams, R, weights_.hc_head.fn, c.rms_norm_eps);
  hc_head_weights(a.final_pre, a.final_mix, R, weights_.hc_head, c.v4);
  combine_streams(a.final_rows, a.final_pre, a.final_streams, R, M, D);
  rms_norm(a.final_rows, a.final_rows, weights_.norm.data(), R, D, eps);
  tap("final_norm", -1, a.final_rows, R, D);
  matmul(logits, a.final_rows, R, weights_.head);
}

}  // namespace megamoe
