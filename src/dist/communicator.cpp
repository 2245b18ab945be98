#include "dist/communicator.h"

#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <numeric>

#include "util/error.h"

namespace megamoe::dist {
namespace {

bool started = false;  // init() called MPI_Init_thread
int world_rank = 0, world_size = 1;

// MPI counts are int: one message of 2 GiB or more is refused rather than truncated.
int count(int64_t bytes) {
  if (bytes < 0 || bytes > INT_MAX) fail("MPI exchange of {} bytes exceeds the 2 GiB an MPI count can carry", bytes);
  return int(bytes);
}

// Counts and prefix-sum displacements for the v-collectives.
void counts_and_offsets(std::span<const int64_t> bytes, std::vector<int>* counts, std::vector<int>* offsets) {
  counts->resize(bytes.size());
  offsets->resize(bytes.size());
  int64_t offset = 0;
  for (size_t r = 0; r < bytes.size(); ++r) {
    (*counts)[r] = count(bytes[r]);
    (*offsets)[r] = count(offset);
    offset += bytes[r];
  }
}

}  // namespace

bool launched_by_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK"); }

void init(int* argc, char*** argv) {
  if (started || !launched_by_mpirun()) return;
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
  started = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  if (provided < MPI_THREAD_SERIALIZED && world_size > 1) {
    // The server calls MPI from its scheduler thread; a library without thread support cannot do that.
    std::fprintf(stderr, "megamoe: error: this MPI library offers no MPI_THREAD_SERIALIZED support\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
}

void finalize() {
  if (!started) return;
  MPI_Finalize();
  started = false;
  world_rank = 0;
  world_size = 1;
}

void abort_all(int status) {
  if (started && world_size > 1) MPI_Abort(MPI_COMM_WORLD, status);
}

int rank() { return world_rank; }
int size() { return world_size; }

void barrier() { MPI_Barrier(MPI_COMM_WORLD); }

void broadcast(std::vector<int64_t>* values) {
  int64_t n = int64_t(values->size());
  MPI_Bcast(&n, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
  values->resize(size_t(n));
  MPI_Bcast(values->data(), count(n), MPI_INT64_T, 0, MPI_COMM_WORLD);
}

std::vector<int64_t> all_to_all(std::span<const int64_t> send) {
  std::vector<int64_t> received(send.size());
  MPI_Alltoall(send.data(), 1, MPI_INT64_T, received.data(), 1, MPI_INT64_T, MPI_COMM_WORLD);
  return received;
}

void all_to_all_bytes(void* recv, std::span<const int64_t> recv_bytes, const void* send,
                      std::span<const int64_t> send_bytes) {
  std::vector<int> send_counts, send_offsets, recv_counts, recv_offsets;
  counts_and_offsets(send_bytes, &send_counts, &send_offsets);
  counts_and_offsets(recv_bytes, &recv_counts, &recv_offsets);
  MPI_Alltoallv(send, send_counts.data(), send_offsets.data(), MPI_BYTE, recv, recv_counts.data(), recv_offsets.data(),
                MPI_BYTE, MPI_COMM_WORLD);
}

void all_gather_bytes(void* buffer, std::span<const int64_t> bytes_per_rank) {
  std::vector<int> counts, offsets;
  counts_and_offsets(bytes_per_rank, &counts, &offsets);
  MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buffer, counts.data(), offsets.data(), MPI_BYTE, MPI_COMM_WORLD);
}

void all_reduce_sum(std::span<float> values) {
  MPI_Allreduce(MPI_IN_PLACE, values.data(), count(int64_t(values.size())), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
}

void all_reduce_sum(std::span<double> values) {
  MPI_Allreduce(MPI_IN_PLACE, values.data(), count(int64_t(values.size())), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

void all_reduce_sum(std::span<int64_t> values) {
  MPI_Allreduce(MPI_IN_PLACE, values.data(), count(int64_t(values.size())), MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
}

std::vector<double> gather(double value) {
  std::vector<double> values(world_rank == 0 ? size_t(world_size) : 0);
  MPI_Gather(&value, 1, MPI_DOUBLE, values.data(), 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return values;
}

void check_same(const std::string& value, const std::string& what) {
  std::vector<int64_t> first(value.begin(), value.end());
  broadcast(&first);
  const int differs = first != std::vector<int64_t>(value.begin(), value.end()) ? world_rank : INT_MAX;
  int first_differing = INT_MAX;
  MPI_Allreduce(&differs, &first_differing, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (first_differing != INT_MAX) fail("{} differs between rank 0 and rank {}", what, first_differing);
}

}  // namespace megamoe::dist
