#include "worker/engine/model/fused_attention.h"
#include "worker/engine/model/swiglu.h"

#include <torch/torch.h>

#include "gtest/gtest.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/model/rope.h"

namespace lora {
namespace {

struct Case {
  int64_t B, T, H, K, d;
  bool documents;
};

// The fused kernel against plain autograd ops (RoPE + matmul + mask + softmax), forward and
// gradients, in float64-checked fp32.
void CheckAgainstPlain(const Case& c) {
  torch::manual_seed(c.T * 31 + c.H);
  torch::Tensor q = torch::randn({c.B, c.T, c.H, c.d}, torch::requires_grad());
  torch::Tensor k = torch::randn({c.B, c.T, c.K, c.d}, torch::requires_grad());
  torch::Tensor v = torch::randn({c.B, c.T, c.K, c.d}, torch::requires_grad());
  LlamaConfig cfg;
  cfg.head_dim = c.d;
  cfg.rope_theta = 10000;
  torch::Tensor inv = RopeInverseFrequencies(cfg);
  torch::Tensor pos = torch::arange(c.T);
  torch::Tensor lo = torch::zeros({c.B, c.T}, torch::kInt64);
  torch::Tensor hi = torch::arange(c.T).unsqueeze(0).expand({c.B, c.T}).contiguous();
  torch::Tensor mask = torch::ones({c.T, c.T}, torch::kBool).tril();
  if (c.documents) {
    // Row 0: documents of lengths 3, T-3; row 1: one document.
    torch::Tensor docs = torch::zeros({c.B, c.T}, torch::kInt64);
    docs[0].narrow(0, 3, c.T - 3).fill_(1);
    lo[0].narrow(0, 3, c.T - 3).fill_(3);
    mask = docs.unsqueeze(2).eq(docs.unsqueeze(1)).logical_and(mask).view({c.B, 1, 1, c.T, c.T});
  }
  auto [cos, sin] = RopeCosSin(inv, pos, torch::kFloat32);
  torch::Tensor ref = CausalAttention(ApplyRope(q, cos, sin), ApplyRope(k, cos, sin), v, mask);
  RopeTables rope{cos.squeeze(2), sin.squeeze(2), cos.squeeze(2), sin.squeeze(2)};
  torch::Tensor out =
      std::get<0>(FusedAttention(q, k, v, rope, lo, hi)).reshape({c.B, c.T, c.H * c.d});
  EXPECT_LT((out - ref).abs().max().item<double>(), 2e-5);

  torch::Tensor g = torch::randn_like(ref);
  auto ref_grads = torch::autograd::grad({ref}, {q, k, v}, {g});
  auto grads = torch::autograd::grad({out}, {q, k, v}, {g});
  const char* names[] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) {
    double err = (grads[i] - ref_grads[i]).abs().max().item<double>();
    EXPECT_LT(err, 1e-4 * (1 + ref_grads[i].abs().max().item<double>())) << names[i];
  }
}

TEST(FusedAttentionTest, MatchesPlainAttention) { CheckAgainstPlain({2, 37, 4, 4, 16, false}); }
TEST(FusedAttentionTest, GroupedQueryAttention) { CheckAgainstPlain({2, 20, 8, 2, 32, false}); }
TEST(FusedAttentionTest, MultiQueryAttention) { CheckAgainstPlain({1, 33, 4, 1, 16, false}); }
TEST(FusedAttentionTest, PackedDocuments) { CheckAgainstPlain({2, 19, 4, 2, 16, true}); }

TEST(FusedAttentionTest, Bf16CloseToFp32) {
  torch::manual_seed(1);
  const int64_t B = 2, T = 64, H = 4, d = 16;
  torch::Tensor q = torch::randn({B, T, H, d}), k = torch::randn({B, T, H, d}),
                v = torch::randn({B, T, H, d});
  torch::Tensor lo = torch::zeros({B, T}, torch::kInt64),
                hi = torch::arange(T).unsqueeze(0).expand({B, T}).contiguous();
  RopeTables none;
  torch::Tensor a = std::get<0>(FusedAttentionForward(q, k, v, none, lo, hi));
  torch::Tensor b = std::get<0>(FusedAttentionForward(
      q.to(torch::kBFloat16), k.to(torch::kBFloat16), v.to(torch::kBFloat16), none, lo, hi));
  EXPECT_EQ(b.scalar_type(), torch::kBFloat16);
  EXPECT_LT((a - b.to(torch::kFloat32)).abs().max().item<double>(), 0.05);
}

TEST(FusedAttentionTest, EmptyRangesGiveZeroAndInfiniteLse) {
  const int64_t T = 5;
  torch::Tensor q = torch::randn({1, T, 1, 16}), k = torch::randn({1, T, 1, 16}),
                v = torch::randn({1, T, 1, 16});
  torch::Tensor lo = torch::full({1, T}, 3, torch::kInt64),
                hi = torch::full({1, T}, 2, torch::kInt64);
  auto [out, lse] = FusedAttentionForward(q, k, v, RopeTables{}, lo, hi);
  EXPECT_EQ(out.abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(std::isinf(lse[0][0][0].item<float>()));
}

TEST(FusedAttentionTest, ModelPathsAgree) {
  LlamaConfig c = *LlamaConfig::FromFlavor("tiny");
  LlamaForCausalLM model(c, torch::kFloat32);
  InitializeWeights(*model, 4);
  torch::Tensor ids = torch::randint(0, c.vocab_size, {2, 24});
  ForwardInputs in{
      ids, torch::Tensor(),
      torch::cat({torch::zeros({2, 10}, torch::kInt64), torch::ones({2, 14}, torch::kInt64)}, 1)};
  torch::Tensor fused = model->forward(in);
  model->model->set_fused_attention(false);
  torch::Tensor plain = model->forward(in);
  EXPECT_LT((fused - plain).abs().max().item<double>(), 1e-4);
  // Every kernel portable (unfused SwiGLU too): what a CUDA build runs.
  model->model->set_fused_kernels(false);
  torch::Tensor portable = model->forward(in);
  EXPECT_LT((fused - portable).abs().max().item<double>(), 1e-4);
}

TEST(SwiGluTest, FusedAndUnfusedMatchTheFormulaForwardAndBackward) {
  torch::manual_seed(3);
  torch::Tensor gate = torch::randn({3, 5, 40}) * 3, up = torch::randn({3, 5, 40});
  torch::Tensor dy = torch::randn({3, 5, 40});
  torch::Tensor g64 = gate.to(torch::kFloat64).requires_grad_(true);
  torch::Tensor u64 = up.to(torch::kFloat64).requires_grad_(true);
  torch::Tensor want = g64 * torch::sigmoid(g64) * u64;
  (want * dy.to(torch::kFloat64)).sum().backward();
  for (bool fused : {true, false}) {
    torch::Tensor g = gate.clone().requires_grad_(true), u = up.clone().requires_grad_(true);
    torch::Tensor y = fused ? SwiGlu(g, u) : SwiGluUnfused(g, u);
    (y * dy).sum().backward();
    EXPECT_LT((y.to(torch::kFloat64) - want).abs().max().item<double>(), 1e-5) << fused;
    EXPECT_LT((g.grad().to(torch::kFloat64) - g64.grad()).abs().max().item<double>(), 1e-5)
        << fused;
    EXPECT_LT((u.grad().to(torch::kFloat64) - u64.grad()).abs().max().item<double>(), 1e-5)
        << fused;
  }
}

}  // namespace
}  // namespace lora
