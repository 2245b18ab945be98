// The MPI calls megamoe makes, over MPI_COMM_WORLD, behind plain C++ types: only communicator.cpp
// includes <mpi.h>. MPI starts only in processes that mpirun launched, so a plain `megamoe ...`
// never initialises it.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace megamoe::dist {

// Whether mpirun started this process (Open MPI's environment; read without initialising MPI).
bool launched_by_mpirun();

// Initialises MPI (calls from any thread, one at a time) when launched_by_mpirun(); else nothing.
void init(int* argc, char*** argv);
// Finalises MPI if init() started it.
void finalize();
// Ends every rank with `status` (MPI_Abort) once MPI runs with more than one rank; returns otherwise.
void abort_all(int status);

int rank();  // 0 without MPI
int size();  // 1 without MPI
// More than one rank: the model runs expert-parallel.
inline bool distributed() { return size() > 1; }

// Returns once every rank has called it.
void barrier();
// Rank 0's `values` on every rank (resized there).
void broadcast(std::vector<int64_t>* values);
// received[r] = what rank r put in send[this rank]; one value per rank each way.
std::vector<int64_t> all_to_all(std::span<const int64_t> send);
// Rank r's send bytes [send_offsets of r's share) arrive on every rank; byte counts per rank, packed
// in rank order (displacements are prefix sums).
void all_to_all_bytes(void* recv, std::span<const int64_t> recv_bytes, const void* send,
                      std::span<const int64_t> send_bytes);
// buffer holds every rank's share in rank order; each rank fills its own and receives the others'.
void all_gather_bytes(void* buffer, std::span<const int64_t> bytes_per_rank);
// Element-wise sums over every rank, in place.
void all_reduce_sum(std::span<float> values);
void all_reduce_sum(std::span<double> values);
void all_reduce_sum(std::span<int64_t> values);
// Every rank's `value` on rank 0 (empty elsewhere).
std::vector<double> gather(double value);
// The same string on every rank, or an Error naming `what` and the first rank that differs.
void check_same(const std::string& value, const std::string& what);

}  // namespace megamoe::dist
