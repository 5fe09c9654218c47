// Group collectives over real Gloo process groups (one thread per rank, TCPStore on loopback),
// against sums computed directly: the ring reduce-scatter built from send/recv, bf16 transfers
// (which Gloo does not know), and the differentiable context-parallel gather.
#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/dist/collectives.h"
#include "worker/engine/dist/comm.h"

namespace lora::dist {
namespace {

// Runs `body(group)` on `world` threads, each a rank of one Gloo group.
void RunRanks(int world, const std::function<void(Group&)>& body) {
  c10d::TCPStoreOptions server_options;
  server_options.port = 0;
  server_options.isServer = true;
  server_options.numWorkers = world;
  server_options.waitWorkers = false;
  auto server = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", server_options);
  const uint16_t port = server->getPort();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        c10::intrusive_ptr<c10d::Store> store = server;
        if (r > 0) {
          c10d::TCPStoreOptions o;
          o.port = port;
          o.isServer = false;
          store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
        }
        auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(30));
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
            c10::make_intrusive<c10d::PrefixStore>("test", store), r, world, opts);
        std::vector<int> members;
        for (int i = 0; i < world; ++i) members.push_back(i);
        Group group(pg, r, world, std::chrono::seconds(30), members);
        body(group);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
}

// Rank r's input: deterministic, different per rank. (No global RNG: ranks are threads.)
torch::Tensor Input(int rank, std::vector<int64_t> shape) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  torch::Tensor i = torch::arange(numel, torch::kFloat64);
  return torch::sin(i * 0.37 + rank * 1.3).mul(3).to(torch::kFloat32).reshape(shape);
}

class ReduceScatterTest : public ::testing::TestWithParam<int> {};

TEST_P(ReduceScatterTest, RingMatchesTheSumSlicedPerRank) {
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
      torch::Tensor got = g.ReduceScatterSum(Input(g.rank(), shape), dim);
      torch::Tensor want = sum.narrow(dim, g.rank() * n, n);
      ASSERT_EQ(got.sizes(), want.sizes());
      EXPECT_TRUE(torch::allclose(got, want, 1e-6, 1e-6)) << "dim " << dim << " rank " << g.rank();
    }
    // Sends (world - 1) / world of the tensor: half an all-reduce.
    const int64_t elements = 2 * 6 * world * 3;
    EXPECT_EQ(g.bytes_sent(), calls * (world - 1) * elements * 4 / world);
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

}  // namespace
}  // namespace lora::dist
