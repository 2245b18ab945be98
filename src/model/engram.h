// DeepSeek-V4.1's Engram addressing (docs/deepseek-v41.md#engram): which rows of a layer's table a token
// reads. Each n-gram (n = 2..N) of token classes ending at the token is hashed once per head with a
// multiplier per n-gram position and a prime per (n, head); the primes partition the table.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"

namespace megamoe {

class EngramHashing {
 public:
  // The primes, offsets and multipliers of every Engram layer of `c` for `n_classes` token classes.
  EngramHashing(const ModelConfig& c, int64_t n_classes);

  // rows [(N-1) * n_heads] of Engram layer `index` (its place in engram_layer_ids) for the token
  // whose n-gram classes are `classes` [N]: classes[s] is the class s positions back (the pad class
  // before the sequence's start).
  void rows(int64_t index, std::span<const int64_t> classes, int64_t* rows) const;

  // [layer][column]: column (n-2)*n_heads + h holds the prime of n-grams of n tokens and head h.
  const std::vector<std::vector<int64_t>>& primes() const { return primes_; }
  // [layer][s], s < N: the odd multiplier of the class s positions back.
  const std::vector<std::vector<int64_t>>& multipliers() const { return multipliers_; }

 private:
  int64_t heads_ = 0, max_ngram_ = 0;
  std::vector<std::vector<int64_t>> primes_, offsets_, multipliers_;
};

// The primes of every Engram layer, [layer][column], from engram_vocab_size alone (see EngramHashing).
std::vector<std::vector<int64_t>> engram_primes(const V41Config& c);

// numpy's default_rng(seed).integers(0, bound, count) (SeedSequence, PCG64, Lemire's bounded draw),
// reimplemented because the multipliers must be exactly those numpy drew for DeepSeek.
std::vector<uint64_t> numpy_default_rng_integers(uint64_t seed, uint64_t bound, int64_t count);

}  // namespace megamoe
