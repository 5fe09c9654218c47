// Group collectives over real Gloo process groups (one thread per rank, TCPStore on loopback),
// against sums computed directly: the ring reduce-scatter built from send/recv, bf16 transfers
// (which Gloo does not know), and the differentiable context-parallel gather.
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/gloo_ranks.h"
#include "worker/engine/dist/collectives.h"
#include "worker/engine/dist/comm.h"
#include "worker/engine/dist/ring_attention.h"
#include "worker/engine/model/fused_attention.h"
#include "worker/engine/model/rope.h"

namespace lora::dist {
namespace {

// Rank r's input: deterministic, different per rank. (No global RNG: ranks are threads.)
torch::Tensor Input(int rank, std::vector<int64_t> shape) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  torch::Tensor i = torch::arange(numel, torch::kFloat64);
  return torch::sin(i * 0.37 + rank * 1.3).mul(3).to(torch::kFloat32).reshape(shape);
}

class ReduceScatterTest : public ::testing::TestWithParam<int> {};

// Gloo's native reduce-scatter (LibTorch 2.x) and the send/recv ring it replaced give the same
// slices of the sum; each sends (world - 1) / world of the tensor, half an all-reduce.
TEST_P(ReduceScatterTest, NativeAndRingMatchTheSumSlicedPerRank) {
  const int world = GetParam();
  const std::vector<int64_t> shape = {2, 6 * world, 3};
  torch::Tensor sum = torch::zeros(shape);
  for (int r = 0; r < world; ++r) sum += Input(r, shape);
  RunRanks(world, [&](Group& g) {
    int calls = 0;
    for (int64_t dim : {0, 1}) {
      if (shape[static_cast<size_t>(dim)] % world != 0) continue;
      ++calls;
      const int64_t n = shape[static_cast<size_t>(dim)] / world;
      torch::Tensor want = sum.narrow(dim, g.rank() * n, n);
      torch::Tensor native = g.NativeReduceScatterSum(Input(g.rank(), shape), dim);
      torch::Tensor ring = g.RingReduceScatterSum(Input(g.rank(), shape), dim);
      ASSERT_EQ(native.sizes(), want.sizes());
      ASSERT_EQ(ring.sizes(), want.sizes());
      EXPECT_TRUE(torch::allclose(native, want, 1e-6, 1e-6))
          << "dim " << dim << " rank " << g.rank();
      EXPECT_TRUE(torch::allclose(ring, want, 1e-6, 1e-6)) << "dim " << dim << " rank " << g.rank();
    }
    const int64_t elements = 2 * 6 * world * 3;
    EXPECT_EQ(g.bytes_sent(), 2 * calls * (world - 1) * elements * 4 / world);
  });
}

INSTANTIATE_TEST_SUITE_P(Worlds, ReduceScatterTest, ::testing::Values(2, 3, 4));

TEST(CollectivesTest, Bf16MovesBitForBit) {
  RunRanks(2, [](Group& g) {
    torch::Tensor mine = Input(g.rank(), {4, 5}).to(torch::kBFloat16);
    torch::Tensor gathered = g.AllGather(mine, 0);
    ASSERT_EQ(gathered.scalar_type(), torch::kBFloat16);
    for (int r = 0; r < 2; ++r) {
      torch::Tensor expected = Input(r, {4, 5}).to(torch::kBFloat16);
      EXPECT_TRUE(torch::equal(gathered.narrow(0, 4 * r, 4), expected)) << r;
    }
    torch::Tensor b = Input(g.rank(), {3}).to(torch::kBFloat16);
    g.Broadcast(b, 1);
    EXPECT_TRUE(torch::equal(b, Input(1, {3}).to(torch::kBFloat16)));
    if (g.rank() == 0) {
      g.Send(Input(0, {7}).to(torch::kBFloat16), 1, 3);
      g.Flush();
    } else {
      torch::Tensor got = torch::empty({7}, torch::kBFloat16);
      g.Recv(got, 0, 3);
      EXPECT_TRUE(torch::equal(got, Input(0, {7}).to(torch::kBFloat16)));
    }
    // Reductions of bf16 happen in fp32.
    torch::Tensor x = torch::full({2}, 1.5, torch::kBFloat16);
    g.AllReduceSum(x);
    EXPECT_EQ(x[0].item<float>(), 3.0f);
  });
}

TEST(CollectivesTest, GatherSequenceForwardAndBackwardMatchTheUnsplitSequence) {
  const int cp = 2;
  const int64_t B = 2, T = 8, H = 3;
  torch::Tensor full = Input(0, {B, T, H});
  torch::Tensor weight = Input(1, {B, T, H});  // d loss / d gathered
  RunRanks(cp, [&](Group& g) {
    torch::Tensor local = TakeLocalChunks(full, cp, g.rank()).clone().requires_grad_(true);
    torch::Tensor gathered = GatherSequence(local, &g);
    EXPECT_TRUE(torch::equal(gathered.detach(), full));
    // Every rank applies the same loss to the whole sequence, so the gradient of its chunks is
    // cp times the loss's gradient there.
    (gathered * weight).sum().backward();
    torch::Tensor want = TakeLocalChunks(weight, cp, g.rank()) * cp;
    EXPECT_TRUE(torch::allclose(local.grad(), want, 1e-6, 1e-6));
  });
}

// Max element-wise difference within 1e-5 of the reference's largest magnitude (fp32: the
// ring sums blocks in another order than one pass over the sequence).
void ExpectClose(const torch::Tensor& actual, const torch::Tensor& expected, const char* what,
                 int rank) {
  const double diff = (actual - expected).abs().max().item<double>();
  const double scale = expected.abs().max().item<double>();
  EXPECT_LE(diff, 1e-5 * scale) << what << " on rank " << rank;
}

// Ring attention against the fused kernel on the whole sequence: outputs and the gradients of
// q, k and v, with grouped-query heads, packed documents (ranges that start mid-block) and
// positions that differ from indices. cp = 3 makes blocks travel more than one hop.
class RingAttentionTest : public ::testing::TestWithParam<int> {};

TEST_P(RingAttentionTest, MatchesFullSequenceAttentionForwardAndBackward) {
  const int cp = GetParam();
  const int64_t B = 2, T = 8 * cp, H = 4, K = 2, d = 16;
  torch::Tensor q = Input(0, {B, T, H, d}), k = Input(1, {B, T, K, d}), v = Input(2, {B, T, K, d});
  torch::Tensor dout = Input(3, {B, T, H, d});
  torch::Tensor index = torch::arange(T, torch::kInt64).unsqueeze(0).expand({B, T}).contiguous();
  // Row 0 packs documents starting at 0, 5 and 13 (positions restart); row 1 is one document.
  torch::Tensor lo = torch::zeros({B, T}, torch::kInt64);
  torch::Tensor positions = index.clone();
  for (int64_t i = 0; i < T; ++i) {
    const int64_t start = i >= 13 ? 13 : i >= 5 ? 5 : 0;
    lo[0][i] = start;
    positions[0][i] = i - start;
  }
  torch::Tensor inv_freq =
      1.0 / torch::pow(10000.0, torch::arange(0, d, 2, torch::kFloat64) / static_cast<double>(d));
  inv_freq = inv_freq.to(torch::kFloat32);
  auto [cos, sin] = RopeCosSin(inv_freq, positions, torch::kFloat32);
  RopeTables rope{cos.squeeze(2), sin.squeeze(2), cos.squeeze(2), sin.squeeze(2)};

  torch::Tensor qf = q.clone().requires_grad_(true), kf = k.clone().requires_grad_(true),
                vf = v.clone().requires_grad_(true);
  torch::Tensor want = std::get<0>(FusedAttention(qf, kf, vf, rope, lo, index));
  (want * dout).sum().backward();

  RunRanks(cp, [&](Group& g) {
    const int r = g.rank();
    auto local = [&](const torch::Tensor& t) { return TakeLocalChunks(t, cp, r).contiguous(); };
    torch::Tensor ql = local(q).requires_grad_(true), kl = local(k).requires_grad_(true),
                  vl = local(v).requires_grad_(true);
    RingPlan plan = MakeRingPlan(lo, index, positions, inv_freq, cp, r);
    torch::Tensor out = RingAttention(ql, kl, vl, plan, &g);
    ExpectClose(out.detach(), local(want.detach()), "out", r);
    (out * local(dout)).sum().backward();
    ExpectClose(ql.grad(), local(qf.grad()), "dq", r);
    ExpectClose(kl.grad(), local(kf.grad()), "dk", r);
    ExpectClose(vl.grad(), local(vf.grad()), "dv", r);
  });
}

INSTANTIATE_TEST_SUITE_P(ContextParallel, RingAttentionTest, ::testing::Values(2, 3, 4));

}  // namespace
}  // namespace lora::dist
