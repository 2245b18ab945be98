// The seam between the MoE layer and experts spread over processes (src/dist implements it over
// MPI). The model knows nothing of MPI: it hands each MoE layer's routed experts to an
// ExpertParallel when one is set, and to dispatch_experts otherwise.
#pragma once
#include <cstdint>

#include "moe/moe.h"

namespace megamoe {

class ExpertParallel {
 public:
  virtual ~ExpertParallel() = default;
  // What dispatch_experts computes, out [T, D] += sum_j weight[t,j] * expert_{e[t,j]}(x[t]), with
  // the experts spread over processes. Every process calls it with the same x and routing (the
  // rest of the model is replicated) and ends with the same out.
  virtual void dispatch(float* out, const float* x, int64_t D, const Routing& routing, int64_t n_experts,
                        const ExpertStore& store, int64_t layer, ExpertLoad* load, const MlpOptions& options) const = 0;
};

// dispatch_experts in this process, or through `parallel` when it is set.
inline void dispatch_routed_experts(const ExpertParallel* parallel, float* out, const float* x, int64_t D,
                                    const Routing& routing, int64_t n_experts, const ExpertStore& store, int64_t layer,
                                    ExpertLoad* load, const MlpOptions& options = {}) {
  if (parallel) parallel->dispatch(out, x, D, routing, n_experts, store, layer, load, options);
  else dispatch_experts(out, x, D, routing, n_experts, store, layer, load, options);
}

}  // namespace megamoe
