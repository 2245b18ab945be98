#include "dist/expert_exchange.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "dist/communicator.h"
#include "util/error.h"

namespace megamoe::dist {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Tokens [T*r/N, T*(r+1)/N) belong to rank r: it combines their results.
int64_t first_token(int64_t T, int64_t rank, int64_t ranks) { return T * rank / ranks; }
// The last rank r with first_token(T, r) <= token: T*r/N <= t exactly when r < (t+1)*N/T.
int64_t owner_of(int64_t token, int64_t T, int64_t ranks) { return ((token + 1) * ranks - 1) / T; }

// Ranks that disagree on routing can not finish the layer's collectives: end every rank now rather
// than let the others wait.
template <typename... Args>
[[noreturn]] void diverged(fmt::format_string<Args...> format, Args&&... args) {
  std::fprintf(stderr, "megamoe: error (rank %d of %d): %s\n", rank(), size(),
               fmt::format(format, std::forward<Args>(args)...).c_str());
  std::fflush(stderr);
  abort_all(1);
  std::abort();
}

}  // namespace

ExpertExchange::ExpertExchange(ExpertPlacement placement) : placement_(std::move(placement)) {
  stats_.rank_rows.assign(placement_.layers(), std::vector<int64_t>(placement_.ranks, 0));
}

bool ExpertExchange::holds(int64_t layer, int64_t expert) const {
  const std::vector<int32_t>& h = placement_.hosts[layer][expert];
  return std::find(h.begin(), h.end(), int32_t(rank())) != h.end();
}

void ExpertExchange::dispatch(float* out, const float* x, int64_t D, const Routing& routing, int64_t n_experts,
                              const ExpertStore& store, int64_t layer, ExpertLoad* load,
                              const MlpOptions& options) const {
  const int64_t T = routing.tokens, k = routing.top_k, N = placement_.ranks, me = rank();
  if (N != size()) fail("expert placement for {} ranks, but {} ranks run", N, size());
  if (layer >= placement_.layers() || n_experts != placement_.experts())
    fail("expert placement covers {} layers of {} experts, the model asks for layer {} of {}", placement_.layers(),
         placement_.experts(), layer, n_experts);
  ExchangeTiming& timing = T == 1 ? stats_.one_token : stats_.many_tokens;
  const auto expert_start = Clock::now();
  ExpertGroups groups;
  groups.build(routing, n_experts);
  if (load)
    for (int32_t e : groups.active) load->add(layer, e, groups.count(e));

  // This rank's rows, expert by expert (every rank counts every rank's rows for the statistics).
  struct Share {
    int32_t expert;
    int64_t first_row, rows;  // in grouped order
  };
  std::vector<Share> mine;
  int64_t my_rows = 0;
  for (int32_t e : groups.active) {
    const std::vector<int32_t>& h = placement_.hosts[layer][e];
    const int64_t n = int64_t(h.size()), count = groups.count(e);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t first = ExpertPlacement::share_start(count, i, n),
                    end = ExpertPlacement::share_start(count, i + 1, n);
      stats_.rank_rows[layer][h[i]] += end - first;
      if (h[i] == me && end > first) {
        mine.push_back({e, groups.start[e] + first, end - first});
        my_rows += end - first;
      }
    }
  }
  // Results travel as records: the slot (t*k + j) then D floats.
  const int64_t record = int64_t(sizeof(int64_t)) + D * int64_t(sizeof(float));
  std::vector<float> rows_x(my_rows * D), rows_y(my_rows * D);  // [my_rows, D]
  {
    int64_t m = 0;
    for (const Share& s : mine) {
      gather_routed_rows(rows_x.data() + m * D, x, D, k,
                         std::span(groups.slot_of_row).subspan(size_t(s.first_row), size_t(s.rows)));
      m += s.rows;
    }
    std::vector<MlpJob> jobs;  // all of this rank's experts in one pass of each kind
    // Every rank holds the whole routing, so each can weigh its own rows (weight_before_down).
    const std::vector<float> row_weights =
        options.weight_before_down ? grouped_row_weights(routing, groups) : std::vector<float>();
    m = 0;
    for (const Share& s : mine) {
      jobs.push_back({rows_y.data() + m * D, rows_x.data() + m * D, s.rows, &store.expert(layer, s.expert),
                      row_weights.empty() ? nullptr : row_weights.data() + s.first_row});
      m += s.rows;
    }
    mlp_forward(jobs, options);
  }
  // Pack the records by destination rank (a counting sort by owner of the token).
  std::vector<int64_t> send_count(N, 0), dest(my_rows);
  {
    int64_t m = 0;
    for (const Share& s : mine)
      for (int64_t row = s.first_row; row < s.first_row + s.rows; ++row, ++m)
        ++send_count[dest[m] = owner_of(groups.slot_of_row[row] / k, T, N)];
  }
  std::vector<int64_t> send_offset(N + 1, 0);
  for (int64_t r = 0; r < N; ++r) send_offset[r + 1] = send_offset[r] + send_count[r];
  std::vector<std::byte> send(my_rows * record);
  {
    std::vector<int64_t> next(send_offset.begin(), send_offset.end() - 1);
    int64_t m = 0;
    for (const Share& s : mine)
      for (int64_t row = s.first_row; row < s.first_row + s.rows; ++row, ++m) {
        std::byte* p = send.data() + next[dest[m]]++ * record;
        const int64_t slot = groups.slot_of_row[row];
        std::memcpy(p, &slot, sizeof slot);
        std::memcpy(p + sizeof slot, rows_y.data() + m * D, D * sizeof(float));
      }
  }
  timing.expert_seconds += seconds_since(expert_start);

  auto exchange_start = Clock::now();
  const std::vector<int64_t> recv_count = all_to_all(send_count);
  std::vector<int64_t> send_bytes(N), recv_bytes(N);
  int64_t received = 0;
  for (int64_t r = 0; r < N; ++r) {
    send_bytes[r] = send_count[r] * record;
    recv_bytes[r] = recv_count[r] * record;
    received += recv_count[r];
    if (r != me) timing.bytes_sent += send_bytes[r];
  }
  std::vector<std::byte> recv(received * record);
  all_to_all_bytes(recv.data(), recv_bytes, send.data(), send_bytes);
  timing.exchange_seconds += seconds_since(exchange_start);

  // Combine this rank's tokens in slot order, as dispatch_experts does (the same sums, bit for bit).
  const auto combine_start = Clock::now();
  const int64_t t0 = first_token(T, me, N), t1 = first_token(T, me + 1, N);
  std::vector<const float*> result((t1 - t0) * k, nullptr);  // [my tokens, k]
  for (int64_t i = 0; i < received; ++i) {
    const std::byte* p = recv.data() + i * record;
    int64_t slot;
    std::memcpy(&slot, p, sizeof slot);
    if (slot < t0 * k || slot >= t1 * k || result[slot - t0 * k])
      diverged(
          "expert exchange, layer {}: rank {} received a result for slot {} it does not own (ranks disagree on "
          "routing)",
          layer, me, slot);
    result[slot - t0 * k] = reinterpret_cast<const float*>(p + sizeof slot);
  }
  for (int64_t slot = t0 * k; slot < t1 * k; ++slot)
    if (!result[slot - t0 * k])
      diverged("expert exchange, layer {}: rank {} got no result for token {} choice {} (ranks disagree on routing)",
               layer, me, slot / k, slot % k);
  combine_routed_rows(out + t0 * D, options.weight_before_down ? nullptr : routing.weights.data(), D, k, t0, t1,
                      [&](int64_t slot) { return result[slot - t0 * k]; });
  timing.combine_seconds += seconds_since(combine_start);

  exchange_start = Clock::now();
  std::vector<int64_t> row_bytes(N);
  for (int64_t r = 0; r < N; ++r)
    row_bytes[r] = (first_token(T, r + 1, N) - first_token(T, r, N)) * D * int64_t(sizeof(float));
  all_gather_bytes(out, row_bytes);
  timing.bytes_sent += row_bytes[me] * (N - 1);
  timing.exchange_seconds += seconds_since(exchange_start);
  ++timing.layer_calls;
}

namespace {

// One timing of every rank, per layer call (rank 0 gets them).
std::vector<nlohmann::json> gather_timing(const ExchangeTiming& t) {
  const double calls = double(std::max<int64_t>(t.layer_calls, 1));
  const std::vector<double> expert = gather(t.expert_seconds), exchange = gather(t.exchange_seconds),
                            combine = gather(t.combine_seconds), sent = gather(double(t.bytes_sent));
  std::vector<nlohmann::json> out;
  for (size_t r = 0; r < expert.size(); ++r)
    out.push_back({{"layer_calls", t.layer_calls},
                   {"expert_ms_per_layer", 1e3 * expert[r] / calls},
                   {"exchange_ms_per_layer", 1e3 * exchange[r] / calls},
                   {"combine_ms_per_layer", 1e3 * combine[r] / calls},
                   {"bytes_sent_per_layer", sent[r] / calls}});
  return out;
}

}  // namespace

nlohmann::json gather_stats(const ExchangeStats& stats) {
  const std::vector<nlohmann::json> one = gather_timing(stats.one_token), many = gather_timing(stats.many_tokens);
  if (rank() != 0) return nullptr;
  nlohmann::json per_rank = nlohmann::json::array();
  for (size_t r = 0; r < one.size(); ++r) per_rank.push_back({{"one_token", one[r]}, {"many_tokens", many[r]}});
  double sum = 0;
  int64_t counted = 0;
  for (const std::vector<int64_t>& rows : stats.rank_rows) {
    const std::vector<double> loads(rows.begin(), rows.end());
    if (*std::max_element(loads.begin(), loads.end()) == 0) continue;
    sum += imbalance(loads);
    ++counted;
  }
  return {{"ranks", size()},
          {"per_rank", per_rank},
          {"rank_rows", stats.rank_rows},
          {"measured_imbalance", counted ? sum / double(counted) : 1.0}};
}

}  // namespace megamoe::dist
