#include <torch/torch.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/data/batcher.h"
#include "worker/engine/lora/converter.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/train/adamw.h"
#include "worker/engine/train/device.h"
#include "worker/engine/train/flops.h"
#include "worker/engine/train/lr_schedule.h"
#include "worker/engine/train/trainer.h"

namespace lora {
namespace {

TEST(AdamWTest, MatchesLibTorchAdamW) {
  torch::manual_seed(0);
  torch::Tensor w0 = torch::randn({5, 3});
  torch::Tensor a = w0.clone().requires_grad_(true), b = w0.clone().requires_grad_(true);
  AdamW ours({{"w", a}}, {.beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.1});
  torch::optim::AdamW theirs(
      {b}, torch::optim::AdamWOptions(0.01).betas({0.8, 0.95}).eps(1e-6).weight_decay(0.1));
  for (int step = 0; step < 5; ++step) {
    torch::Tensor g = torch::randn({5, 3});
    a.mutable_grad() = g.clone();
    b.mutable_grad() = g.clone();
    ours.Step(0.01);
    theirs.step();
  }
  EXPECT_TRUE(torch::allclose(a, b, 1e-6, 1e-7)) << (a - b).abs().max();
  EXPECT_EQ(ours.step_count(), 5);
}

TEST(AdamWTest, StateRoundTripsExactly) {
  torch::Tensor p = torch::randn({4}).requires_grad_(true);
  AdamW opt({{"p", p}}, {});
  p.mutable_grad() = torch::randn({4});
  opt.Step(0.1);
  NamedTensors state = opt.State();
  torch::Tensor q = p.detach().clone().requires_grad_(true);
  AdamW restored({{"p", q}}, {});
  ASSERT_TRUE(restored.LoadState(state, opt.step_count()).ok());
  torch::Tensor g = torch::randn({4});
  p.mutable_grad() = g.clone();
  q.mutable_grad() = g.clone();
  opt.Step(0.1);
  restored.Step(0.1);
  EXPECT_TRUE(torch::equal(p, q));
  EXPECT_FALSE(restored.LoadState({}, 1).ok());
}

TEST(AdamWTest, ClipGradNorm) {
  torch::Tensor a = torch::zeros({2}).requires_grad_(true),
                b = torch::zeros({1}).requires_grad_(true);
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  NamedTensors params = {{"a", a}, {"b", b}};
  EXPECT_NEAR(ClipGradNorm(params, 1.0).item<double>(), 5.0, 1e-6);
  EXPECT_NEAR(std::sqrt(GradSquaredSum(params).item<double>()), 1.0, 1e-5);
  EXPECT_NEAR(ClipGradNorm(params, 0).item<double>(), 1.0, 1e-5);  // 0 disables clipping
  // Within bounds the gradients are left bit-identical (scaled by exactly 1).
  const torch::Tensor before = a.grad().clone();
  ClipGradNorm(params, 10.0);
  EXPECT_TRUE(torch::equal(a.grad(), before));
}

TEST(LrScheduleTest, HandComputedValues) {
  LrSchedule cos{1.0, 2, 10, "cosine", 0.1};
  EXPECT_DOUBLE_EQ(cos.At(1), 1.0 / 3);
  EXPECT_DOUBLE_EQ(cos.At(2), 2.0 / 3);
  EXPECT_NEAR(cos.At(6), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 4 / 8)), 1e-12);
  EXPECT_NEAR(cos.At(10), 0.1, 1e-12);
  LrSchedule lin{2.0, 0, 4, "linear", 0.0};
  EXPECT_DOUBLE_EQ(lin.At(1), 2.0 * 0.75);
  EXPECT_DOUBLE_EQ(lin.At(4), 0.0);
  LrSchedule flat{3.0, 1, 4, "constant", 0.0};
  EXPECT_DOUBLE_EQ(flat.At(1), 1.5);
  EXPECT_DOUBLE_EQ(flat.At(3), 3.0);
}

TEST(FlopsTest, DebugModelPerToken) {
  LlamaConfig c = *LlamaConfig::FromFlavor("debugmodel");
  // linear: 6 * (4 * 256^2 + 3 * 256 * 768) + 256 * 2048 = 5,636,096 weights -> 4N;
  // attention: 12 * 6 * 256 * 256 per token at seq 256.
  const double expected = 4.0 * 5636096 + 6.0 * 1000 + 12.0 * 6 * 256 * 256;
  EXPECT_DOUBLE_EQ(TrainingFlopsPerToken(c, 256, 1000), expected);
}

// Gradients of every adapter after one backward pass of `model` on `batch`.
std::map<std::string, torch::Tensor> AdapterGrads(LlamaForCausalLM& model, const Batch& batch,
                                                  int accum) {
  model->zero_grad();
  const double denom = static_cast<double>(batch.num_targets);
  const int64_t rows = batch.input_ids.size(0) / accum;
  for (int m = 0; m < accum; ++m) {
    (BatchLossSum(*model, batch.Slice(m * rows, rows)) / denom).backward();
  }
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : model->named_parameters()) {
    if (item.value().requires_grad()) out[item.key()] = item.value().grad().clone();
  }
  return out;
}

class TrainStepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LlamaConfig c = *LlamaConfig::FromFlavor("tiny");
    model_ = LlamaForCausalLM(c, torch::kFloat32);
    InitializeWeights(*model_, 1);
    LoraConfig lc;
    ASSERT_TRUE(ConvertToLora(*model_, lc).ok());
    torch::NoGradGuard g;
    for (auto& item : model_->named_parameters()) {
      if (item.key().find("lora_b") != std::string::npos) item.value().normal_(0, 0.02);
    }
    std::vector<Example> examples;
    for (int i = 0; i < 40; ++i) {
      Example e;
      for (int t = 0; t < 7 + i % 5; ++t) e.tokens.push_back((i * 31 + t * 7) % c.vocab_size);
      e.target.assign(e.tokens.size(), 1);
      examples.push_back(e);
    }
    Batcher b(examples, {.seq_len = 16, .pack = true, .seed = 3, .shuffle = true});
    batch_ = b.MakeBatch(0, 4);
  }
  LlamaForCausalLM model_{nullptr};
  Batch batch_;
};

TEST_F(TrainStepTest, GradientAccumulationEqualsOneBigBatch) {
  auto one = AdapterGrads(model_, batch_, 1);
  auto four = AdapterGrads(model_, batch_, 4);
  for (const auto& [name, g] : one) {
    EXPECT_TRUE(torch::allclose(g, four[name], 1e-4, 1e-7))
        << name << " " << (g - four[name]).abs().max();
  }
}

TEST_F(TrainStepTest, ActivationCheckpointingGivesTheSameGradients) {
  model_->train();
  auto plain = AdapterGrads(model_, batch_, 1);
  model_->model->set_activation_checkpointing(true);
  auto recomputed = AdapterGrads(model_, batch_, 1);
  ASSERT_EQ(plain.size(), recomputed.size());
  for (const auto& [name, g] : plain) {
    ASSERT_TRUE(recomputed[name].defined()) << name;
    EXPECT_TRUE(torch::allclose(g, recomputed[name], 1e-5, 1e-8)) << name;
  }
}

// LibTorch's out-of-memory exception (what the CUDA caching allocator throws) becomes
// RESOURCE_EXHAUSTED naming the knobs; any other LibTorch error stays INTERNAL, without the
// C++ backtrace.
TEST(TorchErrorTest, OutOfMemoryIsResourceExhaustedNamingTheKnobs) {
  const c10::OutOfMemoryError oom({__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
                                  "CUDA out of memory. Tried to allocate 2.00 GiB");
  absl::Status s = StatusFromTorchError(oom, torch::Device(torch::kCPU));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  for (const char* knob :
       {"training.local_batch_size", "training.gradient_accumulation_steps", "training.seq_len",
        "training.activation_checkpoint", "parallelism.data_parallel_shard_degree",
        "Tried to allocate 2.00 GiB"}) {
    EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr(knob));
  }
  const c10::Error other({__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, "shape mismatch");
  absl::Status t = StatusFromTorchError(other, torch::Device(torch::kCPU));
  EXPECT_EQ(t.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(t.message()), ::testing::HasSubstr("shape mismatch"));
  EXPECT_THAT(std::string(t.message()), ::testing::Not(::testing::HasSubstr("Exception raised")));
}

}  // namespace
}  // namespace lora
