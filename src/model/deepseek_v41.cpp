#include "model/deepseek_v41.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "model/hyper_connection.h"
#include "moe/router.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/quant.h"
#include "ops/round_trip.h"
#include "tokenizer/token_classes.h"
#include "util/arena.h"
#include "util/error.h"
#include "util/parallel.h"

namespace megamoe {
namespace {

// The last layer at or before `layer` for which `is` holds (-1: none): where a Reuse or Reindex
// layer finds what the Full and index layers published.
template <class Predicate>
int64_t last_layer(int64_t layer, const Predicate& is) {
  for (int64_t l = layer; l >= 0; --l)
    if (is(l)) return l;
  return -1;
}

}  // namespace

// The working memory of a forward pass, carved from one block the model keeps (as V3Activations):
// the streams' arrays (StreamActivations), then the attention's, Engram's and the MoE's.
struct V41Activations : StreamActivations {
  float* collapse;                      // [N, M] the previous sublayer's pre: the next collapse's weights
  float* xq;                            // [N, D] x Q8-rounded: the input of the FP8 products
  float *qr, *qrq;                      // [N, q_lora_rank] the query latent, and Q8-rounded
  float *q, *kv, *o;                    // [N, H, hd], [N, hd] window keys, [N, H, hd]
  float *compress_a, *compress_b;       // [N, hd] the compressor's rows (Wkv x, Wgate x)
  float *new_entries, *new_index_keys;  // [N, hd], [N, dI]: the groups the batch completes
  float *index_q, *index_w;             // [N, IH, dI], [N, IH]
  float *group_in, *group_out, *low_rank;
  float *engram_e, *engram_kv;  // [N, rows * ehd], [N, (M+1) * D]
  float* router_logits;         // [N, E]
  Routing routing;
  std::vector<std::vector<int32_t>> selection;   // [N] the entries the last index layer picked
  std::vector<std::vector<uint8_t>> candidates;  // [N] per entry block: kept by the candidate source
  struct Group {
    int64_t sequence, index;  // entries index*r .. index*r + r - 1 of batch.sequences[sequence]
  };
  std::vector<Group> groups;
  struct ThreadLists {
    std::vector<const float*> keys;
    std::vector<float> scores, block_scores;
    std::vector<int32_t> chosen;
    std::vector<int64_t> rows;
    std::vector<std::byte> table_row;  // an Engram row read through the row cache
  };
  std::vector<ThreadLists> threads;
  FloatArena arena;

  void place(const ModelConfig& c, const TokenBatch& batch) {
    const V4Config& v = c.v4;
    const V41Config& w = c.v41;
    const int64_t N = batch.size(), R = int64_t(batch.logit_rows.size()), D = c.hidden_size, M = v.hc_mult;
    const int64_t H = c.num_attention_heads, hd = v.head_dim, IH = v.index_n_heads, dI = v.index_head_dim;
    arena.count();
    for (int pass = 0; pass < 2; ++pass) {
      place_streams(arena, c, N, R);
      collapse = arena.take(N * M);
      xq = arena.take(N * D);
      qr = arena.take(N * *c.q_lora_rank);
      qrq = arena.take(N * *c.q_lora_rank);
      q = arena.take(N * H * hd);
      kv = arena.take(N * hd);
      o = arena.take(N * H * hd);
      compress_a = arena.take(N * hd);
      compress_b = arena.take(N * hd);
      new_entries = arena.take(N * hd);
      new_index_keys = arena.take(N * dI);
      index_q = arena.take(N * IH * dI);
      index_w = arena.take(N * IH);
      group_in = arena.take(N * H * hd / v.o_groups);
      group_out = arena.take(N * v.o_lora_rank);
      low_rank = arena.take(N * v.o_groups * v.o_lora_rank);
      engram_e = arena.take(N * w.engram_rows_per_token() * w.engram_head_dim);
      engram_kv = arena.take(N * (M + 1) * D);
      router_logits = arena.take(N * c.n_routed_experts);
      if (pass == 0) arena.allocate();
    }
    selection.resize(size_t(N));
    candidates.resize(size_t(N));
    threads.resize(size_t(omp_get_max_threads()));
  }
  ThreadLists& mine() { return threads[size_t(omp_get_thread_num())]; }
};

// ---- the cache ----

V41Cache::V41Cache(const ModelConfig& c, int64_t capacity) : RingCache(capacity) {
  const V4Config& v = c.v4;
  layers_.resize(c.num_hidden_layers);
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    Layer& layer = layers_[L];
    layer.window_ring = std::min(v.sliding_window + kRewindSlack, capacity);
    layer.window.resize(size_t(layer.window_ring * v.head_dim));
    if (!c.v41.is_kv_source(L)) continue;
    const int64_t r = v.compress_ratio(L);
    if (r > 1) {
      layer.group_ring = r + kRewindSlack;
      layer.group_rows.resize(size_t(layer.group_ring * 2 * v.head_dim));
    }
    layer.entries.resize(size_t(capacity / r * v.head_dim));
    layer.index_keys.resize(size_t(capacity / r * v.index_head_dim));
  }
  classes_.resize(size_t(capacity));
}

int64_t V41Cache::values(const ModelConfig& c, int64_t capacity) {
  const V4Config& v = c.v4;
  int64_t n = capacity;  // the Engram classes
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    n += std::min(v.sliding_window + kRewindSlack, capacity) * v.head_dim;
    if (!c.v41.is_kv_source(L)) continue;
    const int64_t r = v.compress_ratio(L);
    if (r > 1) n += (r + kRewindSlack) * 2 * v.head_dim;
    n += capacity / r * (v.head_dim + v.index_head_dim);
  }
  return n;
}

int64_t V41Cache::bytes() const {
  int64_t n = int64_t(classes_.size());
  for (const Layer& l : layers_)
    n += int64_t(l.window.size() + l.group_rows.size() + l.entries.size() + l.index_keys.size());
  return n * int64_t(sizeof(float));
}

// ---- loading ----

DeepseekV41Model::DeepseekV41Model(std::unique_ptr<Checkpoint> checkpoint, ModelConfig config)
    : DeepseekModel(std::move(checkpoint), std::move(config)), activations_(std::make_unique<V41Activations>()) {
  const Checkpoint& ckpt = *checkpoint_;
  const ModelConfig& c = config_;
  for_each_tensor(c, &weights_, [&]<class Slot>(const TensorSpec& spec, Slot* slot) {
    if constexpr (std::is_same_v<Slot, WeightView>) {
      if (spec.role == TensorRole::EngramTable) {
        // F8 rows with a ue8m0 scale per 32 columns (a BF16/F32 table in unquantized checkpoints).
        static constexpr DType kTable[] = {DType::F8_E4M3, DType::BF16, DType::F32}, kScale[] = {DType::F8_E8M0};
        const TensorInfo& table = ckpt.require(spec.name, kTable, spec.shape);
        *slot = WeightView{.dtype = table.dtype, .rows = spec.shape[0], .cols = spec.shape[1], .data = table.data};
        if (table.dtype == DType::F8_E4M3) {
          const int64_t scale_shape[] = {spec.shape[0], spec.shape[1] / kQuantBlock};
          slot->scale_e8m0 = reinterpret_cast<const uint8_t*>(
              ckpt.require(Checkpoint::scale_name(spec.name, ScaleLayout::DotScaleE8M0Small), kScale, scale_shape)
                  .data);
        }
      } else {
        *slot = ckpt.weight(spec.name, spec.shape[0], spec.shape[1], ScaleLayout::DotScaleE8M0Small,
                            block_format(spec, c.weight_format));
      }
    } else {
      *slot = ckpt.values_f32(spec.name, spec.shape);
    }
  });

  std::vector<std::span<const MlpWeights>> experts;
  for (const V41BlockTensors<WeightHandles>& layer : weights_.layers) experts.emplace_back(layer.ffn.experts);
  serve_experts(std::move(experts));

  ropes_ = V4Ropes::make(c);

  if (!c.v41.engram_layers.empty()) {
    const std::filesystem::path tokenizer_path = ckpt.dir() / "tokenizer.json";
    if (!std::filesystem::exists(tokenizer_path))
      fail("{}: missing; DeepSeek-V4.1's Engram layers take their token map from it", tokenizer_path.string());
    const TokenClasses classes = engram_token_classes(Tokenizer::load(tokenizer_path));
    if (c.v41.engram_compressed_vocab_size > 0 && classes.count != c.v41.engram_compressed_vocab_size)
      fail("{}: the Engram token map has {} classes, but 'engram_compressed_vocab_size' is {} (another tokenizer?)",
           tokenizer_path.string(), classes.count, c.v41.engram_compressed_vocab_size);
    if (c.v41.engram_pad_token_id >= int64_t(classes.of_token.size()))
      fail("{}: 'engram_pad_token_id' {} is not a token of the tokenizer ({} tokens)", tokenizer_path.string(),
           c.v41.engram_pad_token_id, classes.of_token.size());
    pad_class_ = classes.of_token[size_t(c.v41.engram_pad_token_id)];
    // Ids past the tokenizer (the embedding's padding rows) never occur in text; they get the pad
    // class, so that random-token benchmarks and greedy decoding over the whole vocabulary run.
    token_classes_ = classes.of_token;
    token_classes_.resize(size_t(std::max<int64_t>(c.vocab_size, int64_t(token_classes_.size()))), pad_class_);
    engram_ = std::make_unique<EngramHashing>(c, classes.count);
  }
}

DeepseekV41Model::~DeepseekV41Model() = default;

const RowCache* DeepseekV41Model::cache_table_rows(int64_t bytes) {
  std::vector<RowCache::Table> tables;
  for (int64_t L : config_.v41.engram_layers) {
    const WeightView& table = weights_.layers[L].engram.table;
    RowCache::Table& parts = tables.emplace_back();
    parts.push_back({table.data, table.cols * int64_t(dtype_size(table.dtype))});
    if (table.scale_e8m0) parts.push_back({table.scale_e8m0, table.cols / kQuantBlock});
  }
  if (tables.empty()) return nullptr;
  engram_rows_ = std::make_unique<RowCache>(*checkpoint_, std::move(tables), bytes);
  return engram_rows_.get();
}

std::unique_ptr<SequenceCache> DeepseekV41Model::new_cache(int64_t capacity) const {
  return std::make_unique<V41Cache>(config_, capacity);
}

int64_t DeepseekV41Model::cache_bytes(int64_t capacity) const {
  return V41Cache::values(config_, capacity) * int64_t(sizeof(float));
}

int64_t DeepseekV41Model::cache_bytes_per_token() const {
  // Entries and index keys grow by (hd + dI)/r per Full layer, the classes by one; the rings are fixed.
  const V4Config& v = config_.v4;
  double values = 1;
  for (int64_t L : config_.v41.kv_source_layers)
    values += double(v.head_dim + v.index_head_dim) / double(v.compress_ratio(L));
  return int64_t(std::ceil(values * sizeof(float)));
}

// ---- the forward pass ----

namespace {

V41Cache& cache_of(const TokenBatch& batch, int64_t sequence) { return batch.cache<V41Cache>(sequence); }

// Row `row` of Engram table `index` as fp32: F8 codes times 2^(e - 127) per 32 columns (or a float
// row), from the mapping or, when the tables stay on disk, through the row cache.
void engram_row(float* out, const WeightView& table, int64_t index, int64_t row, const RowCache* cache,
                std::vector<std::byte>& buffer) {
  const bool f8 = table.dtype == DType::F8_E4M3;
  const int64_t row_bytes = table.cols * int64_t(dtype_size(table.dtype));
  const auto* bytes = static_cast<const std::byte*>(table.data) + row * row_bytes;
  const uint8_t* scales = f8 ? table.scale_e8m0 + row * (table.cols / kQuantBlock) : nullptr;
  if (cache) {
    buffer.resize(size_t(cache->row_bytes()));
    cache->read(index, row, buffer.data());
    bytes = buffer.data();
    scales = reinterpret_cast<const uint8_t*>(buffer.data() + row_bytes);  // the scale part follows
  }
  if (!f8)
    return dequantize_row(out, WeightView{.dtype = table.dtype, .rows = 1, .cols = table.cols, .data = bytes}, 0);
  const auto* codes = reinterpret_cast<const uint8_t*>(bytes);
  for (int64_t j = 0; j < table.cols; ++j) out[j] = fp8_e4m3_to_f32(codes[j]) * e8m0_to_f32(scales[j / kQuantBlock]);
}

// Engram (docs/deepseek-v41.md#engram): each stream gains the table rows of the token's n-grams, projected
// to a value and gated by the stream's agreement with a projected key. X [N, M, D] in place.
void engram_forward(float* X, const TokenBatch& batch, int64_t index, const EngramTensors<WeightHandles>& w,
                    const ModelConfig& c, const EngramHashing& hashing, const RowCache* cache, int32_t pad_class,
                    V41Activations& a) {
  const V41Config& v = c.v41;
  const int64_t N = batch.size(), D = c.hidden_size, M = c.v4.hc_mult, n_gram = v.engram_max_ngram_size;
  const int64_t rows = v.engram_rows_per_token(), width = rows * v.engram_head_dim;
  const double eps = c.rms_norm_eps;
  parallel_for(N, N > 1, [&](int64_t n) {
    V41Activations::ThreadLists& lists = a.mine();
    const TokenBatch::Token& token = batch.tokens[n];
    const std::vector<int32_t>& classes = cache_of(batch, token.sequence).classes();
    std::vector<int64_t>& grams = lists.rows;  // this token's class, then 1, 2, ... back
    grams.resize(size_t(n_gram + rows));
    for (int64_t s = 0; s < n_gram; ++s) grams[s] = token.position - s >= 0 ? classes[token.position - s] : pad_class;
    hashing.rows(index, std::span(grams).first(size_t(n_gram)), grams.data() + n_gram);
    float* e = a.engram_e + n * width;
    for (int64_t r = 0; r < rows; ++r)
      engram_row(e + r * v.engram_head_dim, w.table, index, grams[n_gram + r], cache, lists.table_row);
    q8_round_trip(e, width);
  });
  matmul(a.engram_kv, a.engram_e, N, w.wkv);  // [N, (M+1)*D]: a key per stream | the value
  parallel_for(N, N > 1, [&](int64_t n) {
    const float* keys = a.engram_kv + n * (M + 1) * D;
    const float* value = keys + M * D;
    for (int64_t s = 0; s < M; ++s) {
      float* stream = X + (n * M + s) * D;
      const float* key = keys + s * D;
      double dot = 0, stream_squares = 0, key_squares = 0;
      for (int64_t d = 0; d < D; ++d) {
        dot += double(stream[d]) * w.q_weight[s * D + d] * w.k_weight[s * D + d] * key[d];
        stream_squares += double(stream[d]) * stream[d];
        key_squares += double(key[d]) * key[d];
      }
      dot /=
          std::sqrt(stream_squares / double(D) + eps) * std::sqrt(key_squares / double(D) + eps) * std::sqrt(double(D));
      const double gate = 1 / (1 + std::exp(-std::copysign(std::sqrt(std::max(std::fabs(dot), 1e-6)), dot)));
      for (int64_t d = 0; d < D; ++d) stream[d] += float(gate * value[d]);
    }
  });
}

// A Full layer's compressor: every group of r tokens the batch completes becomes a compressed entry
// and an index key in the caches; the rows of groups still open are kept. x [N, D] is the
// attention input.
void compress(const float* x, const TokenBatch& batch, int64_t layer, const V41AttentionTensors<WeightHandles>& w,
              const Rope& rope, const ModelConfig& c, V41Activations& a) {
  const V4Config& v = c.v4;
  const int64_t N = batch.size(), r = v.compress_ratio(layer), hd = v.head_dim, dI = v.index_head_dim;
  const int64_t dr = c.qk_rope_head_dim;
  const float eps = float(c.rms_norm_eps);
  matmul(a.compress_a, x, N, w.compressor_wkv);
  if (r > 1) matmul(a.compress_b, x, N, w.compressor_wgate);
  a.groups.clear();
  for (int64_t s = 0; s < int64_t(batch.sequences.size()); ++s)
    for (int64_t p = batch.sequences[s].start; p < batch.sequences[s].end(); ++p)
      if ((p + 1) % r == 0) a.groups.push_back({s, p / r});
  const int64_t G = int64_t(a.groups.size());
  parallel_for(G, G > 1, [&](int64_t g) {
    const TokenBatch::Sequence& s = batch.sequences[a.groups[g].sequence];
    const V41Cache::Layer& cache = cache_of(batch, a.groups[g].sequence).layer(layer);
    float* entry = a.new_entries + g * hd;
    // The group's rows: this batch's, or kept from an earlier one.
    const auto rows_of = [&](int64_t p) -> std::pair<const float*, const float*> {
      if (p >= s.start) return {a.compress_a + s.row(p) * hd, a.compress_b + s.row(p) * hd};
      const float* kept = cache.group_rows.data() + p % cache.group_ring * 2 * hd;
      return {kept, kept + hd};
    };
    const int64_t first = a.groups[g].index * r;
    if (r == 1) {
      std::copy_n(rows_of(first).first, hd, entry);
    } else {
      for (int64_t d = 0; d < hd; ++d) {  // softmax over the group's tokens, per channel
        double top = -INFINITY, sum = 0, weighted = 0;
        for (int64_t p = first; p < first + r; ++p) top = std::max(top, double(rows_of(p).second[d]));
        for (int64_t p = first; p < first + r; ++p) {
          const auto [kv, gate] = rows_of(p);
          const double weight = std::exp(double(gate[d]) - top);
          sum += weight;
          weighted += weight * kv[d];
        }
        entry[d] = float(weighted / sum);
      }
    }
    rms_norm(entry, entry, w.compressor_norm.data(), 1, hd, eps);
  });
  // Index keys from the un-roped entries, then each is roped at its group's first position.
  matmul(a.new_index_keys, a.new_entries, G, w.index_wk);
  parallel_for(G, G > 1, [&](int64_t g) {
    V41Cache::Layer& cache = cache_of(batch, a.groups[g].sequence).layer(layer);
    const int64_t index = a.groups[g].index, position = index * r;
    float* key = a.new_index_keys + g * dI;
    rms_norm(key, key, w.index_k_norm.data(), 1, dI, eps);
    rope.apply(key + dI - dr, position);
    q4_round_trip_e8(key, dI);
    std::copy_n(key, dI, cache.index_keys.data() + index * dI);
    float* entry = a.new_entries + g * hd;
    rope.apply(entry + hd - dr, position);
    q4_round_trip_e4(entry, hd);
    std::copy_n(entry, hd, cache.entries.data() + index * hd);
  });
  if (r == 1) return;
  for (int64_t s = 0; s < int64_t(batch.sequences.size()); ++s) {  // the rows of groups to come
    const TokenBatch::Sequence& seq = batch.sequences[s];
    V41Cache::Layer& cache = cache_of(batch, s).layer(layer);
    for (int64_t p = std::max(seq.start, seq.end() - cache.group_ring); p < seq.end(); ++p) {
      float* kept = cache.group_rows.data() + p % cache.group_ring * 2 * hd;
      std::copy_n(a.compress_a + seq.row(p) * hd, hd, kept);
      std::copy_n(a.compress_b + seq.row(p) * hd, hd, kept + hd);
    }
  }
}

// Where DeepSeek's published decode finds the index keys an index layer scores at position p
// (docs/deepseek-v41.md#v41-incremental-decode): the shared slot holds the keys of the last Full layer
// that emitted an entry, in this step (layers up to `layer`) or an earlier one. Returns that layer
// and how many of its entries existed then; {layer, 0} when none had emitted.
std::pair<int64_t, int64_t> published_keys_layer(const ModelConfig& c, int64_t layer, int64_t p) {
  for (int64_t step = p; step >= 0; --step)
    for (int64_t l = step == p ? layer : c.num_hidden_layers - 1; l >= 0; --l) {
      const int64_t r = c.v4.compress_ratio(l);
      if (c.v41.is_kv_source(l) && (step + 1) % r == 0) return {l, (step + 1) / r};
    }
  return {layer, 0};
}

// An index layer: each query scores the visible index keys of the last Full layer and picks the
// entries its attention (and the Reuse layers after it) will see, within the candidate source's
// blocks when one came before.
void index_entries(const float* x, const TokenBatch& batch, int64_t layer, int64_t keys_layer,
                   const V41AttentionTensors<WeightHandles>& w, const Rope& rope, const ModelConfig& c,
                   V41Activations& a) {
  const V4Config& v = c.v4;
  const V41Config& s41 = c.v41;
  const int64_t N = batch.size(), r = v.compress_ratio(layer), IH = v.index_n_heads, dI = v.index_head_dim;
  const int64_t dr = c.qk_rope_head_dim, B = s41.candidate_block_size;
  const bool candidate_source = layer == s41.candidate_source_layer;
  const bool masked = s41.candidate_source_layer >= 0 && layer > s41.candidate_source_layer;
  matmul(a.index_q, a.qrq, N, w.index_wq_b);
  matmul(a.index_w, x, N, w.index_weights_proj);
  const float head_scale = float(1 / std::sqrt(double(dI) * double(IH)));
  parallel_for<Schedule::Dynamic>(N, N > 1, [&](int64_t n) {
    V41Activations::ThreadLists& lists = a.mine();
    const int64_t p = batch.tokens[n].position, visible = (p + 1) / r;
    const V41Cache::Layer& source =
        cache_of(batch, batch.tokens[n].sequence)
            .layer(s41.published_index_keys ? published_keys_layer(c, layer, p).first : keys_layer);
    const int64_t available =  // published keys may cover fewer entries than this layer sees
        s41.published_index_keys ? published_keys_layer(c, layer, p).second : visible;
    const float* keys = source.index_keys.data();
    for (int64_t h = 0; h < IH; ++h) {
      float* query = a.index_q + (n * IH + h) * dI;
      rope.apply(query + dI - dr, p);
      q4_round_trip_e8(query, dI);
    }
    std::vector<float>& scores = lists.scores;  // I[p, t] = sum_h w_h relu(q_h . k_t)
    scores.assign(size_t(visible), 0.f);
    for (int64_t t = 0; t < visible; ++t) {
      if (t >= available) {
        scores[t] = -INFINITY;
        continue;
      }
      float score = 0;
      for (int64_t h = 0; h < IH; ++h)
        score +=
            a.index_w[n * IH + h] * head_scale * std::max(0.f, dot(a.index_q + (n * IH + h) * dI, keys + t * dI, dI));
      scores[t] = score;
    }
    std::vector<uint8_t>& kept_blocks = a.candidates[n];
    if (candidate_source) {  // blocks by their best entry; the block of the newest entry always
      const int64_t blocks = (visible + B - 1) / B;
      std::vector<float>& block_scores = lists.block_scores;
      block_scores.assign(size_t(blocks), -INFINITY);
      for (int64_t t = 0; t < visible; ++t) block_scores[t / B] = std::max(block_scores[t / B], scores[t]);
      if (blocks > 0) block_scores[blocks - 1] = INFINITY;
      top_k_indices(&lists.chosen, block_scores.data(), blocks, std::min(s41.candidate_topk_blocks, blocks));
      kept_blocks.assign(size_t(blocks), 0);
      for (int32_t b : lists.chosen) kept_blocks[b] = 1;
    }
    if (masked)
      for (int64_t t = 0; t < visible; ++t)
        if (size_t(t / B) >= kept_blocks.size() || !kept_blocks[t / B]) scores[t] = -INFINITY;
    int64_t finite = 0;
    for (float s : scores) finite += s > -INFINITY;
    top_k_indices(&a.selection[n], scores.data(), visible, std::min(v.index_topk, finite));
    std::sort(a.selection[n].begin(), a.selection[n].end());
  });
}

// The attention of `layer` (docs/deepseek-v41.md#v41-attention): out [N, D] = attention(x [N, D]), which
// also extends the caches.
void attention_forward(float* out, const float* x, const TokenBatch& batch, int64_t layer, const ModelConfig& c,
                       const V41AttentionTensors<WeightHandles>& w, const Rope& rope, V41Activations& a) {
  const V4Config& v = c.v4;
  const int64_t N = batch.size(), H = c.num_attention_heads, hd = v.head_dim, dr = c.qk_rope_head_dim;
  const int64_t q_rank = *c.q_lora_rank, W = v.sliding_window, r = v.compress_ratio(layer);
  const float eps = float(c.rms_norm_eps);
  std::copy_n(x, N * c.hidden_size, a.xq);
  for (int64_t n = 0; n < N; ++n) q8_round_trip(a.xq + n * c.hidden_size, c.hidden_size);
  matmul(a.qr, a.xq, N, w.wq_a);
  rms_norm(a.qr, a.qr, w.q_norm.data(), N, q_rank, eps);
  std::copy_n(a.qr, N * q_rank, a.qrq);
  for (int64_t n = 0; n < N; ++n) q8_round_trip(a.qrq + n * q_rank, q_rank);
  matmul(a.q, a.qrq, N, w.wq_b);
  matmul(a.kv, a.xq, N, w.wkv);
  rms_norm(a.kv, a.kv, w.kv_norm.data(), N, hd, eps);
  parallel_for(N, N > 1, [&](int64_t n) {
    const int64_t p = batch.tokens[n].position;
    for (int64_t h = 0; h < H; ++h) rope.apply(a.q + (n * H + h) * hd + hd - dr, p);
    rope.apply(a.kv + n * hd + hd - dr, p);
    q8_round_trip(a.kv + n * hd, hd);
  });

  // Compressed entries: this layer's own (Full), or the last Full layer's with the last selection.
  const V41Config& s41 = c.v41;
  const int64_t entries_layer = r ? last_layer(layer, [&](int64_t l) { return s41.is_kv_source(l); }) : -1;
  if (s41.is_kv_source(layer)) compress(x, batch, layer, w, rope, c, a);
  if (s41.is_index_source(layer)) index_entries(x, batch, layer, entries_layer, w, rope, c, a);

  const float softmax_scale = float(1 / std::sqrt(double(hd)));
  parallel_for<Schedule::Dynamic>(N, N > 1, [&](int64_t n) {
    V41Activations::ThreadLists& lists = a.mine();
    const TokenBatch::Sequence& s = batch.sequences[batch.tokens[n].sequence];
    const int64_t t = batch.tokens[n].position;
    V41Cache& cache = cache_of(batch, batch.tokens[n].sequence);
    const V41Cache::Layer& own = cache.layer(layer);
    std::vector<const float*>& keys = lists.keys;
    keys.clear();
    for (int64_t p = std::max<int64_t>(0, t - W + 1); p <= t; ++p) {
      if (p >= s.start) keys.push_back(a.kv + s.row(p) * hd);
      else if (p < s.cached) keys.push_back(own.window.data() + p % own.window_ring * hd);
      // else: dropped before this layer (narrow_to_reach); only rows whose output is unused see that
    }
    if (r) {
      const float* entries = cache.layer(entries_layer).entries.data();
      for (int32_t e : a.selection[n]) keys.push_back(entries + e * hd);
    }
    const size_t K = keys.size();
    std::vector<float>& scores = lists.scores;
    scores.resize(K);
    for (int64_t h = 0; h < H; ++h) {
      const float* qh = a.q + (n * H + h) * hd;
      const float sink = w.sink[h];
      float top = sink;
      for (size_t k = 0; k < K; ++k) top = std::max(top, scores[k] = dot(qh, keys[k], hd) * softmax_scale);
      double denominator = std::exp(double(sink) - top);
      for (size_t k = 0; k < K; ++k) denominator += scores[k] = std::exp(scores[k] - top);
      float* oh = a.o + (n * H + h) * hd;
      std::fill_n(oh, hd, 0.f);
      for (size_t k = 0; k < K; ++k) {
        const float weight = float(scores[k] / denominator);
        for (int64_t i = 0; i < hd; ++i) oh[i] += weight * keys[k][i];
      }
      rope.apply(oh + hd - dr, t, /*inverse=*/true);
    }
  });
  for (int64_t s = 0; s < int64_t(batch.sequences.size()); ++s) {  // the window keys for queries to come
    const TokenBatch::Sequence& seq = batch.sequences[s];
    V41Cache::Layer& cache = cache_of(batch, s).layer(layer);
    for (int64_t p = std::max(seq.start, seq.end() - cache.window_ring); p < seq.end(); ++p)
      std::copy_n(a.kv + seq.row(p) * hd, hd, cache.window.data() + p % cache.window_ring * hd);
  }

  // Grouped low-rank output: group g's heads through its rows of wo_a (unrounded input), then wo_b.
  const int64_t G = v.o_groups, R = v.o_lora_rank, group_width = H * hd / G;
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t n = 0; n < N; ++n)
      std::copy_n(a.o + n * H * hd + g * group_width, group_width, a.group_in + n * group_width);
    matmul(a.group_out, a.group_in, N, G == 1 ? w.wo_a : w.wo_a.row_slice(g * R, R));
    for (int64_t n = 0; n < N; ++n) std::copy_n(a.group_out + n * R, R, a.low_rank + (n * G + g) * R);
  }
  for (int64_t n = 0; n < N; ++n) q8_round_trip(a.low_rank + n * G * R, G * R);
  matmul(out, a.low_rank, N, w.wo_b);
}

// out [N, D] = routed experts + shared expert of x [N, D] (docs/deepseek-v41.md#v41-moe): sqrt-softplus
// scores, biased top-k, the routing weight applied before w2, the clamp on both, Q8 inputs.
void moe_forward(float* out, const float* x, int64_t N, const ModelConfig& c, const V41MoeTensors<WeightHandles>& w,
                 const ExpertStore& experts, int64_t layer, ExpertLoad* load, const ExpertParallel* parallel,
                 V41Activations& a) {
  const int64_t D = c.hidden_size;
  matmul(a.router_logits, x, N, w.gate);
  route(&a.routing, a.router_logits, N, w.bias.data(), router_spec(c));
  std::copy_n(x, N * D, a.xq);
  for (int64_t n = 0; n < N; ++n) q8_round_trip(a.xq + n * D, D);
  const MlpOptions shared{.swiglu_limit = float(c.v4.swiglu_limit), .round_hidden = true};
  if (w.shared.gate.data) mlp_forward(out, a.xq, N, w.shared, shared);
  else std::fill_n(out, N * D, 0.f);
  MlpOptions routed = shared;
  routed.weight_before_down = true;
  dispatch_routed_experts(parallel, out, a.xq, D, a.routing, c.n_routed_experts, experts, layer, load, routed);
}

// The encoder-decoder shortcut (docs/deepseek-v41.md#v41-prefill): a layer after the last kv source
// writes nothing other positions read but its window keys, so of a sequence that wants only its last
// logits, `layer` must compute just the positions the window rings keep for the next pass and,
// through the windows of the layers after it, the last position sees. Keeps those rows of `batch`
// and of the pass's arrays (moved down in place); the first W - 1 kept rows of each sequence attend
// a partial window, and their outputs are among the rows the next layer drops.
void narrow_to_reach(TokenBatch& batch, int64_t layer, const ModelConfig& c, V41Activations& a) {
  const int64_t W = c.v4.sliding_window, M = c.v4.hc_mult, D = c.hidden_size;
  const int64_t later_layers = c.num_hidden_layers - 1 - layer;
  const auto first_needed = [&](int64_t s) {
    const TokenBatch::Sequence& seq = batch.sequences[s];
    if (seq.all_logits) return seq.start;
    const int64_t reach = batch.cache<V41Cache>(s).layer(layer).window_ring + later_layers * (W - 1);
    return std::max(seq.start, seq.end() - reach);
  };
  bool drops = false;
  for (int64_t s = 0; s < int64_t(batch.sequences.size()); ++s) drops |= first_needed(s) > batch.sequences[s].start;
  if (!drops) return;
  int64_t kept = 0;
  batch.logit_rows.clear();
  for (int64_t s = 0; s < int64_t(batch.sequences.size()); ++s) {
    TokenBatch::Sequence& seq = batch.sequences[s];
    const int64_t from = first_needed(s), first = kept;
    for (int64_t p = from; p < seq.end(); ++p, ++kept) {
      const int64_t row = seq.row(p);
      if (row != kept) {  // row > kept: the rows stay in order
        std::copy_n(a.streams + row * M * D, M * D, a.streams + kept * M * D);
        std::copy_n(a.collapse + row * M, M, a.collapse + kept * M);
        std::swap(a.selection[row], a.selection[kept]);
        std::swap(a.candidates[row], a.candidates[kept]);
        batch.tokens[kept] = batch.tokens[row];
        batch.ids[kept] = batch.ids[row];
      }
      if (seq.all_logits || p == seq.end() - 1) batch.logit_rows.push_back(kept);
    }
    seq.count = seq.end() - from;
    seq.start = from;
    seq.first = first;
  }
  batch.tokens.resize(size_t(kept));
  batch.ids.resize(size_t(kept));
}

}  // namespace

void DeepseekV41Model::forward(float* logits, std::span<const SequenceStep> steps) const {
  const bool several =
      std::any_of(steps.begin(), steps.end(), [](const SequenceStep& s) { return s.tokens.size() > 1; });
  if (!config_.v41.published_index_keys || !several) return forward_batch(logits, steps);
  // The published decode can make an early layer score index keys a later layer wrote in the
  // previous step, which a multi-token pass has not computed yet: run it token by token.
  const int64_t V = config_.vocab_size;
  std::vector<int64_t> first_row;  // each step's first output row
  int64_t rows = 0, longest = 0;
  for (const SequenceStep& s : steps) {
    first_row.push_back(rows);
    rows += s.all_logits ? int64_t(s.tokens.size()) : 1;
    longest = std::max(longest, int64_t(s.tokens.size()));
  }
  std::vector<float> step_logits(steps.size() * size_t(V));
  for (int64_t t = 0; t < longest; ++t) {
    std::vector<SequenceStep> one;
    std::vector<size_t> of;  // which step each of `one` continues
    for (size_t b = 0; b < steps.size(); ++b)
      if (t < int64_t(steps[b].tokens.size())) {
        one.push_back({steps[b].cache, steps[b].tokens.subspan(size_t(t), 1), false});
        of.push_back(b);
      }
    forward_batch(step_logits.data(), one);
    for (size_t i = 0; i < one.size(); ++i) {
      const SequenceStep& s = steps[of[i]];
      const int64_t T = int64_t(s.tokens.size());
      if (s.all_logits || t == T - 1)
        std::copy_n(step_logits.data() + i * size_t(V), V, logits + (first_row[of[i]] + (s.all_logits ? t : 0)) * V);
    }
  }
}

void DeepseekV41Model::forward_batch(float* logits, std::span<const SequenceStep> steps) const {
  const ForwardPass pass(*this);
  const TokenBatch& batch = flatten<V41Cache>(steps);
  const ModelConfig& c = config_;
  const int64_t D = c.hidden_size, M = c.v4.hc_mult;
  int64_t N = batch.size();
  const float eps = float(c.rms_norm_eps);
  V41Activations& a = *activations_;
  a.place(c, batch);

  if (engram_)  // the classes of the new tokens, which the n-grams of this batch and later ones read
    for (int64_t n = 0; n < N; ++n)
      cache_of(batch, batch.tokens[n].sequence).classes()[size_t(batch.tokens[n].position)] =
          token_classes_[size_t(batch.ids[n])];
  for (int64_t n = 0; n < N; ++n) {  // every stream starts as the embedding; the first collapse takes stream 0
    dequantize_row(a.x + n * D, weights_.embed, batch.ids[n]);
    for (int64_t i = 0; i < M; ++i) std::copy_n(a.x + n * D, D, a.streams + (n * M + i) * D);
    std::fill_n(a.collapse + n * M, M, 0.f);
    a.collapse[n * M] = 1;
  }
  // A sublayer's input collapses the streams with the previous sublayer's pre (the lag).
  const auto sublayer_input = [&](const HyperConnection& hc, const float* norm) {
    hc_mix(a.mix, a.streams, N, hc.fn, c.rms_norm_eps);
    hc_weights(a.pre, a.post, a.comb, a.mix, N, hc, c.v4, a.sinkhorn);
    combine_streams(a.h, a.collapse, a.streams, N, M, D);
    std::copy_n(a.pre, N * M, a.collapse);
    rms_norm(a.x, a.h, norm, N, D, eps);
  };
  // The layers after the last kv source run on fewer rows: narrowed_ holds the batch they see
  // (not with taps, which record every position).
  const TokenBatch* rows = &batch;
  const std::vector<int64_t>& sources = c.v41.kv_source_layers;
  const int64_t decoder_from = sources.empty() ? 0 : *std::max_element(sources.begin(), sources.end()) + 1;
  for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
    const V41BlockTensors<WeightHandles>& block = weights_.layers[L];
    if (L >= decoder_from && !taps_) {
      if (rows == &batch) narrowed_ = batch;
      narrow_to_reach(narrowed_, L, c, a);
      rows = &narrowed_;
      N = rows->size();
    }
    const int64_t engram = c.v41.engram_index(L);
    if (engram >= 0) {
      engram_forward(a.streams, *rows, engram, block.engram, c, *engram_, engram_rows_.get(), pad_class_, a);
      tap("engram_out", L, a.streams, N, M * D);
    }
    const Rope& rope = ropes_.of_layer(c, L);
    sublayer_input(block.hc_attn, block.attn_norm.data());
    tap("attn_in", L, a.h, N, D);
    attention_forward(a.y, a.x, *rows, L, c, block.attn, rope, a);
    tap("attn_out", L, a.y, N, D);
    hc_post(a.streams, a.y, a.post, a.comb, N, M, D, a.old_streams);
    sublayer_input(block.hc_ffn, block.ffn_norm.data());
    tap("ffn_in", L, a.h, N, D);
    moe_forward(a.y, a.x, N, c, block.ffn, experts(), L, expert_load_, expert_parallel_, a);
    tap("ffn_out", L, a.y, N, D);
    hc_post(a.streams, a.y, a.post, a.comb, N, M, D, a.old_streams);
    tap("streams", L, a.streams, N, M * D);
  }
  for (const TokenBatch::Sequence& s : batch.sequences) s.cache->advance(s.count);

  // Head: the streams collapsed by the last FFN's pre, normalized, projected.
  const int64_t R = int64_t(rows->logit_rows.size());
  for (int64_t r = 0; r < R; ++r) {
    std::copy_n(a.streams + rows->logit_rows[r] * M * D, M * D, a.final_streams + r * M * D);
    std::copy_n(a.collapse + rows->logit_rows[r] * M, M, a.final_pre + r * M);
  }
  combine_streams(a.final_rows, a.final_pre, a.final_streams, R, M, D);
  rms_norm(a.final_rows, a.final_rows, weights_.norm.data(), R, D, eps);
  tap("final_norm", -1, a.final_rows, R, D);
  matmul(logits, a.final_rows, R, weights_.head);
}

}  // namespace megamoe
