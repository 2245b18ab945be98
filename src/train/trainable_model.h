// A DeepSeek-V2/V3 model being trained: fp32 parameters and gradients (one block each, in the
// checkpoint's tensor order), the activations of one batch (one block) and the scratch of the
// backward pass (one block). forward() computes the mean next-token cross-entropy of a batch and
// keeps what backward() needs; backward() adds the exact gradient of that loss.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"
#include "train/layers.h"
#include "train/parameters.h"

namespace megamoe::train {

class TrainableModel {
 public:
  // Room for batches of up to `max_sequences` sequences of `seq_len` tokens. Parameters start at
  // zero: fill parameters() (initialize_parameters, load_parameters) before training.
  TrainableModel(const ModelConfig& config, int64_t max_sequences, int64_t seq_len);

  const ModelConfig& config() const { return config_; }
  const ParameterLayout& layout() const { return layout_; }
  int64_t max_sequences() const { return max_sequences_; }
  int64_t seq_len() const { return seq_len_; }
  std::span<float> parameters() { return params_; }
  std::span<const float> parameters() const { return params_; }
  std::span<float> gradients() { return grads_; }
  // Bytes of the activation and backward-scratch blocks.
  int64_t activation_bytes() const {
    return (activation_block_.size() + scratch_block_.size()) * int64_t(sizeof(float));
  }

  // tokens [sequences, seq_len + 1]: each row's first seq_len tokens are the input, its last
  // seq_len the targets. Returns the mean cross-entropy over the sequences * seq_len predictions.
  // `for_backward` = false (evaluation) skips computing the loss gradient of the logits.
  double forward(const int32_t* tokens, int64_t sequences, bool for_backward = true);
  // Adds the gradient of the last forward(..., true)'s loss, plus the auxiliary balancing loss,
  // to gradients().
  void backward();
  void zero_gradients();

  // Tokens each routed expert received in the last forward(): [E] for MoE layer `layer`.
  std::vector<int64_t> expert_counts(int64_t layer) const;
  // The MoE layers, in order.
  const std::vector<int64_t>& moe_layers() const { return moe_layers_; }

  // An auxiliary balancing loss (AuxLoss, SeqAuxLoss) that forward() computes besides the
  // cross-entropy and backward() adds the gradient of; None by default.
  void set_balance_loss(const BalanceLoss& balance) { balance_ = balance; }
  // The auxiliary loss of the last forward(), summed over the MoE layers (0 without one).
  double aux_loss() const;
  // Auxiliary-loss-free balancing: every MoE layer's router bias moves by `rate` towards even
  // loads, b_i += rate * sign(mean load - load_i), from `loads` [MoE layer][expert]: the
  // expert_counts() of the last forward(), or their sum over data-parallel ranks.
  void update_router_biases(double rate, const std::vector<std::vector<int64_t>>& loads);

 private:
  struct LayerActivations {
    float* input;    // [N, D] residual stream entering the layer
    float* attn_in;  // [N, D] rms(input)
    AttentionActivations attn;
    float* middle;  // [N, D] input + attention
    float* ffn_in;  // [N, D] rms(middle)
    MlpActivations dense;
    MoeActivations moe;
  };
  void place_activations(FloatArena& arena);
  void place_scratch(FloatArena& arena);

  ModelConfig config_;
  ParameterLayout layout_;
  AttentionSetup attention_;
  RouterSpec router_;
  BalanceLoss balance_;
  std::vector<int64_t> moe_layers_;
  int64_t max_sequences_, seq_len_;
  std::vector<float> params_, grads_;  // [layout.size] each

  // Activations of the last forward pass, sized for max_sequences.
  FloatArena activation_block_;
  std::vector<LayerActivations> layers_;
  float* output_;                          // [N, D] residual stream after the last layer
  float* final_in_;                        // [N, D] rms(output)
  float* logits_;                          // [N, V]; after forward(..., true) the loss gradient dloss/dlogits
  float* branch_;                          // [N, D] a sublayer's output before it joins the residual stream
  std::vector<int32_t> inputs_, targets_;  // [N] each
  int64_t sequences_ = 0;                  // of the last forward pass

  // Backward scratch.
  FloatArena scratch_block_;
  float* d_residual_;  // [N, D]
  float* d_branch_;    // [N, D] gradient at a sublayer's (normalized) input
  AttentionScratch attention_scratch_;
  MlpScratch dense_scratch_;
  MoeScratch moe_scratch_;
};

}  // namespace megamoe::train
