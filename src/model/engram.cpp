#include "model/engram.h"

#include <fmt/format.h>

#include <array>
#include <limits>
#include <set>

#include "util/error.h"

namespace megamoe {
namespace {

bool is_prime(int64_t n) {
  if (n < 2) return false;
  for (int64_t d = 2; d * d <= n; ++d)
    if (n % d == 0) return false;
  return true;
}

// numpy's SeedSequence (bit_generator.pyx) for a non-negative integer entropy and no spawn key:
// the 4-word pool, then `words` output words.
std::vector<uint32_t> seed_sequence_words(uint64_t entropy, int64_t words) {
  constexpr uint32_t kInitA = 0x43B0D7E5, kMultA = 0x931E8875, kInitB = 0x8B51F9DD, kMultB = 0x58F38DED;
  constexpr uint32_t kMixL = 0xCA01F9DD, kMixR = 0x4973F715;
  std::vector<uint32_t> input;  // the integer as little-endian 32-bit words (0: one word)
  do {
    input.push_back(uint32_t(entropy));
    entropy >>= 32;
  } while (entropy);
  uint32_t hash_a = kInitA;
  const auto hashmix = [&](uint32_t v) {
    v ^= hash_a;
    hash_a *= kMultA;
    v *= hash_a;
    return v ^ (v >> 16);
  };
  const auto mix = [](uint32_t x, uint32_t y) {
    const uint32_t r = kMixL * x - kMixR * y;
    return r ^ (r >> 16);
  };
  std::array<uint32_t, 4> pool;
  for (size_t i = 0; i < pool.size(); ++i) pool[i] = hashmix(i < input.size() ? input[i] : 0);
  for (size_t src = 0; src < pool.size(); ++src)
    for (size_t dst = 0; dst < pool.size(); ++dst)
      if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
  for (size_t src = pool.size(); src < input.size(); ++src)
    for (size_t dst = 0; dst < pool.size(); ++dst) pool[dst] = mix(pool[dst], hashmix(input[src]));
  std::vector<uint32_t> out(static_cast<size_t>(words));
  uint32_t hash_b = kInitB;
  for (int64_t i = 0; i < words; ++i) {
    uint32_t v = pool[size_t(i) % pool.size()];
    v ^= hash_b;
    hash_b *= kMultB;
    v *= hash_b;
    out[size_t(i)] = v ^ (v >> 16);
  }
  return out;
}

// numpy's PCG64 (XSL-RR 128/64), seeded from a SeedSequence.
class Pcg64 {
 public:
  explicit Pcg64(uint64_t seed) {
    const std::vector<uint32_t> w = seed_sequence_words(seed, 8);
    const auto word64 = [&](int i) { return uint64_t(w[2 * i]) | uint64_t(w[2 * i + 1]) << 32; };
    const unsigned __int128 initial = (unsigned __int128)word64(0) << 64 | word64(1);
    increment_ = ((unsigned __int128)word64(2) << 64 | word64(3)) << 1 | 1;
    state_ = 0;
    step();
    state_ += initial;
    step();
  }
  uint64_t next() {
    step();
    const uint64_t x = uint64_t(state_ >> 64) ^ uint64_t(state_);
    const unsigned rotation = unsigned(state_ >> 122);
    return (x >> rotation) | (x << ((64 - rotation) & 63));
  }

 private:
  void step() {
    constexpr unsigned __int128 kMultiplier =
        (unsigned __int128)0x2360ED051FC65DA4ull << 64 | (unsigned __int128)0x4385DF649FCCF645ull;
    state_ = state_ * kMultiplier + increment_;
  }
  unsigned __int128 state_, increment_;
};

}  // namespace

std::vector<uint64_t> numpy_default_rng_integers(uint64_t seed, uint64_t bound, int64_t count) {
  // numpy draws ranges below 2^32 from 32-bit halves of its outputs; Engram's bounds never are.
  if (bound <= (uint64_t(1) << 32)) fail("internal error: numpy draws a range of {} by another method", bound);
  Pcg64 rng(seed);
  std::vector<uint64_t> out;
  for (int64_t i = 0; i < count; ++i) {  // Lemire's multiply-and-reject
    unsigned __int128 m = (unsigned __int128)rng.next() * bound;
    if (uint64_t(m) < bound) {
      const uint64_t threshold = (0 - bound) % bound;
      while (uint64_t(m) < threshold) m = (unsigned __int128)rng.next() * bound;
    }
    out.push_back(uint64_t(m >> 64));
  }
  return out;
}

std::vector<std::vector<int64_t>> engram_primes(const V41Config& c) {
  std::set<int64_t> used;  // across layers
  std::vector<std::vector<int64_t>> primes;
  for (size_t layer = 0; layer < c.engram_layers.size(); ++layer) {
    std::vector<int64_t>& columns = primes.emplace_back();
    for (int64_t n = 2; n <= c.engram_max_ngram_size; ++n) {
      int64_t candidate = c.engram_vocab_size - 1;  // each n starts over, skipping primes taken
      for (int64_t h = 0; h < c.engram_n_heads; ++h) {
        do ++candidate;
        while (!is_prime(candidate) || used.count(candidate));
        used.insert(candidate);
        columns.push_back(candidate);
      }
    }
  }
  return primes;
}

EngramHashing::EngramHashing(const ModelConfig& c, int64_t n_classes)
    : heads_(c.v41.engram_n_heads), max_ngram_(c.v41.engram_max_ngram_size), primes_(engram_primes(c.v41)) {
  const V41Config& v = c.v41;
  if (n_classes < 1) fail("Engram needs at least one token class");
  const uint64_t bound = std::max<uint64_t>(1, uint64_t(std::numeric_limits<int64_t>::max() / n_classes) / 2);
  for (size_t i = 0; i < v.engram_layers.size(); ++i) {
    int64_t sum = 0;  // parse_model_config checked that the primes add up to the table's rows
    std::vector<int64_t>& offsets = offsets_.emplace_back();
    for (int64_t p : primes_[i]) {
      offsets.push_back(sum);
      sum += p;
    }
    std::vector<int64_t>& multipliers = multipliers_.emplace_back();
    for (uint64_t u : numpy_default_rng_integers(uint64_t(10007 * v.engram_layers[i]), bound, max_ngram_))
      multipliers.push_back(int64_t(2 * u + 1));
  }
}

void EngramHashing::rows(int64_t index, std::span<const int64_t> classes, int64_t* rows) const {
  const std::vector<int64_t>& m = multipliers_[index];
  // Products stay below 2^63: classes < n_classes and multipliers <= (2^63 - 1) / n_classes.
  int64_t hash = classes[0] * m[0];
  for (int64_t i = 1; i < max_ngram_; ++i) {
    hash ^= classes[i] * m[i];  // the n-gram of i + 1 tokens
    for (int64_t h = 0; h < heads_; ++h) {
      const int64_t column = (i - 1) * heads_ + h;
      rows[column] = hash % primes_[index][column] + offsets_[index][column];
    }
  }
}

}  // namespace megamoe
