// Training: each backward op and the whole model's gradient against finite differences, AdamW and
// the learning-rate schedule against their formulas, the data windows and the progress helpers.
// (The gradients of every tensor against PyTorch autograd: tests/model/test_train_gradients.py.)
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "model/config.h"
#include "ops/elementwise.h"
#include "train/data.h"
#include "train/optimizer.h"
#include "train/train_ops.h"
#include "train/trainable_model.h"
#include "util/error.h"
#include "util/progress.h"

namespace megamoe {
namespace {

using namespace train;

std::vector<float> random_normal(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}

// Checks analytic . direction against the central difference of `loss` along `direction`, where
// loss(x) reads `x` in place.
void expect_directional_derivative(std::vector<float>& x, const std::vector<float>& analytic,
                                   const std::function<double()>& loss, double tolerance, const char* what) {
  const std::vector<float> direction = random_normal(x.size(), 99);
  const std::vector<float> saved = x;
  const double h = 1e-3;
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(saved[i] + h * direction[i]);
  const double plus = loss();
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(saved[i] - h * direction[i]);
  const double minus = loss();
  x = saved;
  const double numeric = (plus - minus) / (2 * h), exact = dot(analytic, direction);
  EXPECT_NEAR(numeric, exact, tolerance * std::max(1.0, std::fabs(exact))) << what;
}

TEST(TrainOpsTest, LinearBackwardMatchesLoops) {
  const int64_t N = 5, out = 7, in = 9;
  const std::vector<float> x = random_normal(N * in, 1), w = random_normal(out * in, 2), dy = random_normal(N * out, 3);
  std::vector<float> y(N * out), dx(N * in, 1.f), dw(out * in, 0.5f);
  linear_forward(y.data(), x.data(), w.data(), N, out, in);
  linear_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), N, out, in, /*add_dx=*/true);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += double(x[n * in + i]) * w[o * in + i];
      EXPECT_NEAR(y[n * out + o], s, 1e-4);
    }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < in; ++i) {
      double s = 1;  // added to the 1 already there
      for (int64_t o = 0; o < out; ++o) s += double(dy[n * out + o]) * w[o * in + i];
      EXPECT_NEAR(dx[n * in + i], s, 1e-4);
    }
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      double s = 0.5;
      for (int64_t n = 0; n < N; ++n) s += double(dy[n * out + o]) * x[n * in + i];
      EXPECT_NEAR(dw[o * in + i], s, 1e-4);
    }
}

TEST(TrainOpsTest, RmsNormBackwardMatchesFiniteDifferences) {
  const int64_t T = 3, D = 19;
  std::vector<float> x = random_normal(T * D, 4), weight = random_normal(D, 5, 0.5f);
  const std::vector<float> probe = random_normal(T * D, 6);  // loss = sum(probe * rms_norm(x))
  auto loss = [&] {
    std::vector<float> y(T * D);
    rms_norm(y.data(), x.data(), weight.data(), T, D, 1e-6f);
    return dot(probe, y);
  };
  std::vector<float> dx(T * D), dweight(D, 0.f);
  rms_norm_backward(dx.data(), dweight.data(), probe.data(), x.data(), weight.data(), T, D, 1e-6f);
  expect_directional_derivative(x, dx, loss, 1e-3, "dx");
  expect_directional_derivative(weight, dweight, loss, 1e-3, "dweight");
}

TEST(TrainOpsTest, SwigluBackwardMatchesFiniteDifferences) {
  const int64_t n = 23;
  std::vector<float> gate = random_normal(n, 7), up = random_normal(n, 8);
  const std::vector<float> probe = random_normal(n, 9);
  auto loss = [&] {
    std::vector<float> act = gate;
    swiglu(act.data(), up.data(), n);
    return dot(probe, act);
  };
  std::vector<float> dgate(n), dup(n);
  swiglu_backward(dgate.data(), dup.data(), probe.data(), gate.data(), up.data(), n);
  expect_directional_derivative(gate, dgate, loss, 1e-3, "dgate");
  expect_directional_derivative(up, dup, loss, 1e-3, "dup");
}

TEST(TrainOpsTest, SoftmaxBackwardMatchesFiniteDifferences) {
  const int64_t n = 11;
  std::vector<float> x = random_normal(n, 10);
  const std::vector<float> probe = random_normal(n, 11);
  auto loss = [&] {
    std::vector<float> y = x;
    softmax(y.data(), n);
    return dot(probe, y);
  };
  std::vector<float> y = x, dx = probe;
  softmax(y.data(), n);
  softmax_backward(dx.data(), y.data(), n);
  expect_directional_derivative(x, dx, loss, 1e-3, "dx");
}

TEST(TrainOpsTest, CrossEntropyValueAndGradient) {
  const int64_t N = 4, V = 13;
  std::vector<float> logits = random_normal(N * V, 12, 3.f);
  const std::vector<int32_t> targets{0, 12, 5, 5};
  auto loss = [&] { return cross_entropy(nullptr, logits.data(), targets.data(), N, V, 1.f) / N; };
  double expected = 0;
  for (int64_t n = 0; n < N; ++n) {
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(double(logits[n * V + v]));
    expected += (std::log(z) - logits[n * V + targets[n]]) / N;
  }
  EXPECT_NEAR(loss(), expected, 1e-6);
  std::vector<float> dlogits(N * V);
  EXPECT_NEAR(cross_entropy(dlogits.data(), logits.data(), targets.data(), N, V, 1.f / N) / N, expected, 1e-6);
  expect_directional_derivative(logits, dlogits, loss, 1e-3, "dlogits");
}

ModelConfig tiny_config(const std::string& topk_method, const std::string& scoring, bool q_lora, bool yarn) {
  nlohmann::json j = {{"architectures", {"DeepseekV3ForCausalLM"}},
                      {"vocab_size", 37},
                      {"hidden_size", 16},
                      {"num_hidden_layers", 2},
                      {"first_k_dense_replace", 1},
                      {"intermediate_size", 24},
                      {"moe_intermediate_size", 8},
                      {"num_attention_heads", 2},
                      {"kv_lora_rank", 12},
                      {"qk_nope_head_dim", 6},
                      {"qk_rope_head_dim", 4},
                      {"v_head_dim", 5},
                      {"n_routed_experts", 8},
                      {"n_shared_experts", 1},
                      {"num_experts_per_tok", 3},
                      {"n_group", 4},
                      {"topk_group", 2},
                      {"topk_method", topk_method},
                      {"scoring_func", scoring},
                      {"norm_topk_prob", topk_method == "noaux_tc"},
                      {"routed_scaling_factor", 1.5},
                      {"max_position_embeddings", 64}};
  if (q_lora) j["q_lora_rank"] = 10;
  if (yarn)
    j["rope_scaling"] = {{"type", "yarn"},     {"factor", 4},    {"original_max_position_embeddings", 8},
                         {"beta_fast", 32},    {"beta_slow", 1}, {"mscale", 1},
                         {"mscale_all_dim", 1}};
  return parse_model_config(j, "test config");
}

// Every tensor's gradient along its own direction against a central difference of the loss.
void check_model_gradients(const ModelConfig& config) {
  const int64_t B = 2, T = 6;
  TrainableModel model(config, B, T);
  initialize_parameters(model.parameters().data(), model.layout(), 7, 0.3);
  std::mt19937 gen(3);
  std::vector<int32_t> tokens(B * (T + 1));
  for (int32_t& t : tokens) t = int32_t(gen() % config.vocab_size);
  model.zero_gradients();
  model.forward(tokens.data(), B);
  model.backward();
  const std::vector<float> grads(model.gradients().begin(), model.gradients().end());
  std::span<float> params = model.parameters();
  for (size_t i = 0; i < model.layout().tensors.size(); ++i) {
    const ParamTensor& place = model.layout().places[i];
    const std::string& name = model.layout().tensors[i].name;
    std::vector<float> g(grads.begin() + place.offset, grads.begin() + place.offset + place.size());
    double norm = std::sqrt(dot(g, g));
    if (norm == 0) continue;  // router biases, experts no token chose
    const std::vector<float> saved(params.begin() + place.offset, params.begin() + place.offset + place.size());
    auto loss_along = [&](double h) {
      for (int64_t j = 0; j < place.size(); ++j) params[place.offset + j] = float(saved[j] + h * g[j] / norm);
      const double loss = model.forward(tokens.data(), B, false);
      std::copy(saved.begin(), saved.end(), params.begin() + place.offset);
      return loss;
    };
    const double h = 2e-3, numeric = (loss_along(h) - loss_along(-h)) / (2 * h);
    EXPECT_NEAR(numeric, norm, 2e-2 * norm + 2e-4) << name;
  }
}

TEST(TrainableModelTest, GradientsMatchFiniteDifferencesNoauxSigmoidYarn) {
  check_model_gradients(tiny_config("noaux_tc", "sigmoid", true, true));
}

TEST(TrainableModelTest, GradientsMatchFiniteDifferencesGreedySoftmax) {
  check_model_gradients(tiny_config("greedy", "softmax", false, false));
}

TEST(TrainableModelTest, SameInputsSameLossAndGradients) {
  const ModelConfig config = tiny_config("group_limited_greedy", "softmax", true, false);
  TrainableModel a(config, 2, 5), b(config, 2, 5);
  initialize_parameters(a.parameters().data(), a.layout(), 1, 0.2);
  initialize_parameters(b.parameters().data(), b.layout(), 1, 0.2);
  std::vector<int32_t> tokens(12);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t(i * 7 % 37);
  for (TrainableModel* m : {&a, &b}) {
    m->zero_gradients();
    m->forward(tokens.data(), 2);
    m->backward();
  }
  EXPECT_TRUE(std::equal(a.gradients().begin(), a.gradients().end(), b.gradients().begin()));
  int64_t routed = 0;
  for (int64_t c : a.expert_counts(1)) routed += c;
  EXPECT_EQ(routed, 2 * 5 * config.num_experts_per_tok);
}

TEST(OptimizerTest, AdamWStepMatchesFormula) {
  const ModelConfig config = tiny_config("noaux_tc", "sigmoid", false, false);
  const ParameterLayout layout = ParameterLayout::make(config);
  std::vector<float> params(layout.size, 0.5f), grads(layout.size, 0.25f);
  AdamWSettings settings;
  AdamW adamw(layout, settings);
  const double lr = 0.01;
  adamw.update(params, grads, lr, 1);
  for (size_t i = 0; i < layout.tensors.size(); ++i) {  // consumed: zero after the update
    if (layout.tensors[i].role != TensorRole::RouterBias) {
      EXPECT_EQ(grads[layout.places[i].offset], 0.f) << layout.tensors[i].name;
    }
  }
  std::fill(grads.begin(), grads.end(), 0.25f);
  adamw.update(params, grads, lr, 2);
  // Two steps of the same gradient: m_hat = g and v_hat = g^2 each time, so the update is lr * g / (|g| + eps).
  auto expected = [&](bool decay) {
    double p = 0.5;
    for (int step = 0; step < 2; ++step)
      p = p * (decay ? 1 - lr * settings.weight_decay : 1) - lr * 0.25 / (0.25 + 1e-8);
    return p;
  };
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const float value = params[layout.places[i].offset];
    const TensorSpec& spec = layout.tensors[i];
    if (spec.role == TensorRole::RouterBias) EXPECT_EQ(value, 0.5f) << spec.name;  // not trained by gradient
    else EXPECT_NEAR(value, expected(spec.shape.size() == 2), 1e-6) << spec.name;
  }
}

TEST(OptimizerTest, ScheduleWarmsUpThenDecays) {
  const LearningRateSchedule s{1.0, 0.1, 4, 14};
  EXPECT_DOUBLE_EQ(s.at(0), 0.25);
  EXPECT_DOUBLE_EQ(s.at(3), 1.0);
  EXPECT_DOUBLE_EQ(s.at(4), 1.0);
  EXPECT_NEAR(s.at(13), 0.1, 1e-12);
  EXPECT_NEAR(s.at(8) + s.at(9), 1.1, 1e-12);  // the cosine's midpoint lies between steps 8 and 9
}

TEST(OptimizerTest, ClipScalesToMaxNorm) {
  std::vector<float> g{3.f, 4.f};
  EXPECT_DOUBLE_EQ(clip_gradient_norm(g, 1.0), 5.0);
  EXPECT_NEAR(std::hypot(g[0], g[1]), 1.0, 1e-6);
  std::vector<float> small{0.3f, 0.4f};
  clip_gradient_norm(small, 1.0);
  EXPECT_EQ(small[0], 0.3f);
}

TEST(DataTest, WindowsOverlapByOneAndWrap) {
  const std::vector<int32_t> tokens{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  const WindowReader reader(tokens, 3);
  EXPECT_EQ(reader.windows(), 3);  // [0..3], [3..6], [6..9]
  std::vector<int32_t> rows(2 * 4);
  reader.read(rows.data(), 2, 2);
  EXPECT_EQ(rows, (std::vector<int32_t>{6, 7, 8, 9, 0, 1, 2, 3}));
}

TEST(DataTest, SplitKeepsAValidationWindowAndRejectsTooLittleData) {
  const std::vector<int32_t> tokens(100, 1);
  const DataSplit split = split_tokens(tokens, 0.05, 8, "test");
  EXPECT_EQ(split.validation.size(), 9u);  // at least one window, more than 5%
  EXPECT_EQ(split.train.size(), 91u);
  EXPECT_EQ(split_tokens(tokens, 0, 8, "test").validation.size(), 0u);
  EXPECT_THROW(split_tokens(tokens, 0.5, 60, "test"), Error);
}

TEST(ProgressTest, FormatsDurationsAndRates) {
  EXPECT_EQ(format_duration(42), "42s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(7620), "2h07m");
  EXPECT_EQ(format_si(999), "999");
  EXPECT_EQ(format_si(12345), "12.3k");
  EXPECT_EQ(format_si(4.5e6), "4.50M");
}

}  // namespace
}  // namespace megamoe
