// FSDP keeps LoRA adapters replicated and all-reduces their gradients; the alternative shards
// them: reduce-scatter the gradients, update 1/N, all-gather the updated adapters. Both move the
// same bytes in theory; this measures which is faster here, for the adapter sizes of real jobs,
// with N ranks as processes on loopback: the all-reduce, then reduce-scatter + all-gather with
// Gloo's native reduce-scatter (LibTorch 2.x) and with the send/recv ring LibTorch 1.13 needed.
//
//   collectives_bench [--ranks 2,4] [--repeats 20]
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "worker/engine/dist/comm.h"

namespace {

using lora::dist::Group;

struct Size {
  const char* what;
  int64_t elements;  // fp32 adapter parameters
};

// Adapter parameters (rank r on q,k,v,o,gate,up,down of every layer): sum over those linears
// of r * (in + out).
int64_t AdapterElements(int64_t layers, int64_t dim, int64_t kv_dim, int64_t hidden, int64_t r) {
  const int64_t per_layer = r * ((dim + dim) * 2 + (dim + kv_dim) * 2 + (dim + hidden) * 3);
  return layers * per_layer;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// One rank: times both strategies; rank 0 prints.
void RunRank(int rank, int world, uint16_t port, const std::vector<Size>& sizes, int repeats) {
  c10d::TCPStoreOptions o;
  o.port = port;
  o.isServer = rank == 0;
  o.numWorkers = world;
  o.waitWorkers = true;
  auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
  auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(60));
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  opts->threads = 2;
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
      c10::make_intrusive<c10d::PrefixStore>("bench", store), rank, world, opts);
  std::vector<int> members;
  for (int i = 0; i < world; ++i) members.push_back(i);
  Group g(pg, rank, world, std::chrono::seconds(60), members);
  for (const Size& s : sizes) {
    const int64_t n = (s.elements + world - 1) / world * world;
    torch::Tensor grad = torch::full({n}, 1.0f + rank);
    std::vector<double> all_reduce, sharded, ring;
    for (int i = 0; i < repeats + 2; ++i) {
      g.Barrier();
      auto t0 = std::chrono::steady_clock::now();
      torch::Tensor a = grad.clone();
      g.AllReduceSum(a);
      auto t1 = std::chrono::steady_clock::now();
      g.Barrier();
      auto t2 = std::chrono::steady_clock::now();
      torch::Tensor shard = g.NativeReduceScatterSum(grad, 0);
      torch::Tensor full = g.AllGather(shard, 0);
      auto t3 = std::chrono::steady_clock::now();
      g.Barrier();
      auto t4 = std::chrono::steady_clock::now();
      torch::Tensor ring_full = g.AllGather(g.RingReduceScatterSum(grad, 0), 0);
      auto t5 = std::chrono::steady_clock::now();
      if (i >= 2) {
        all_reduce.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        sharded.push_back(std::chrono::duration<double, std::milli>(t3 - t2).count());
        ring.push_back(std::chrono::duration<double, std::milli>(t5 - t4).count());
      }
      if (!torch::equal(a, full) || !torch::equal(a, ring_full)) {
        std::fprintf(stderr, "rank %d: strategies disagree\n", rank);
        std::_Exit(1);
      }
    }
    if (rank == 0) {
      const double mb = static_cast<double>(n) * 4 / 1e6;
      const double wire = 2.0 * (world - 1) / world * mb;
      std::printf("| %d | %s | %.1f | %.1f | %.2f | %.2f (%.2fx) | %.2f (%.2fx) |\n", world, s.what,
                  mb, wire, Median(all_reduce), Median(sharded),
                  Median(sharded) / Median(all_reduce), Median(ring),
                  Median(ring) / Median(all_reduce));
      std::fflush(stdout);
    }
  }
  g.Barrier();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> worlds = {2, 4};
  int repeats = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--repeats") == 0) repeats = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--ranks") == 0) {
      worlds.clear();
      for (const char* p = argv[i + 1]; *p;) {
        worlds.push_back(std::atoi(p));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    }
  }
  const std::vector<Size> sizes = {
      {"debugmodel r8", AdapterElements(6, 256, 256, 768, 8)},
      {"Llama-3.2-1B r16", AdapterElements(16, 2048, 512, 8192, 16)},
      {"Llama-3.1-8B r16", AdapterElements(32, 4096, 1024, 14336, 16)},
  };
  std::printf(
      "| ranks | adapters | grad MB | wire MB/rank | all-reduce ms | native RS + AG ms (/AR) "
      "| ring RS + AG ms (/AR) |\n|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  for (int world : worlds) {
    const uint16_t port = static_cast<uint16_t>(20000 + (::getpid() * 7 + world) % 20000);
    std::vector<pid_t> children;
    for (int r = 0; r < world; ++r) {
      pid_t pid = ::fork();
      if (pid == 0) {
        at::set_num_threads(1);
        RunRank(r, world, port, sizes, repeats);
        std::_Exit(0);
      }
      children.push_back(pid);
    }
    int failed = 0;
    for (pid_t c : children) {
      int status = 0;
      ::waitpid(c, &status, 0);
      failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    if (failed) {
      std::fprintf(stderr, "%d ranks failed\n", failed);
      return 1;
    }
  }
  return 0;
}
