// The GPU path against the CPU path (ctest label `gpu`). Every test skips, saying why, when no
// CUDA device is visible; scripts/gpu-check.sh runs them on the accelerator.
//
// Tolerances: fp32 CUDA vs fp32 CPU differs only by summation order (cuBLAS vs MKL, SDPA's
// kernels vs the fused CPU kernel; TF32 stays off in LibTorch's C++ defaults), so per-step
// losses agree within 1e-4 relative and adapters within 1e-3 of their largest element after
// Adam's first steps. bf16 rounds every activation: losses within 3e-2 relative.
#include <torch/cuda.h>
#include <torch/torch.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/events_file.h"
#include "tests/integration/subprocess.h"
#include "tests/integration/tiny_job.h"
#include "tests/test_util.h"
#include "tests/unit/gloo_ranks.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/train/device.h"

namespace lora {
namespace {

using testing::Events;
using ::testing::HasSubstr;
using testing::MaxRelativeAdapterDiff;
using testing::ProcessResult;
using testing::StepLosses;
using testing::TinySpec;

#define LORA_REQUIRE_GPU()                                                               \
  if (!torch::cuda::is_available())                                                      \
  GTEST_SKIP() << "no CUDA device visible to this process (LibTorch sees "               \
               << torch::cuda::device_count() << "); run scripts/gpu-check.sh on a GPU " \
               << "machine"

class GpuTest : public ::testing::Test {
 protected:
  // Runs `lora-train run` on the tiny job; returns the run directory.
  std::string Run(const std::string& name, int steps, const std::string& device,
                  const std::string& precision, std::vector<std::string> extra = {}) {
    const std::string spec = dir_.Join(name + ".toml");
    std::ofstream(spec) << TinySpec(steps, "[resources]\ndevice = \"" + device + "\"\n");
    const std::string out = dir_.Join(name);
    std::vector<std::string> args = {testing::BinaryPath("worker/lora-train"),
                                     "run",
                                     "--job",
                                     spec,
                                     "--out",
                                     out,
                                     "--quiet",
                                     "--set",
                                     "training.mixed_precision=" + precision,
                                     "--set",
                                     "checkpoint.interval=3"};
    args.insert(args.end(), extra.begin(), extra.end());
    ProcessResult r = testing::RunProcess(args, 300);
    EXPECT_EQ(r.exit_code, 0) << name << ": " << r.err;
    return out;
  }
  static std::string Adapter(const std::string& run) {
    return run + "/final/adapter/adapter_model.safetensors";
  }
  testing::TempDir dir_;
};

// On CUDA the norm is one fused kernel; on the CPU it is HF's arithmetic (normalise in fp32,
// round, then scale). fp32: equal up to rounding, values and input gradients; bf16: the fused
// kernel rounds once where HF rounds twice, so within two bf16 ulps (2^-7 relative).
TEST_F(GpuTest, FusedRmsNormOnCudaMatchesHfArithmetic) {
  LORA_REQUIRE_GPU();
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16}) {
    RMSNorm cpu(64, 1e-5, dtype), gpu(64, 1e-5, dtype);
    torch::NoGradGuard no_grad;
    cpu->weight.copy_(torch::rand({64}) + 0.5);
    gpu->weight.copy_(cpu->weight);
    gpu->to(torch::kCUDA);
    torch::Tensor x = (torch::randn({3, 5, 64}) * 3).to(dtype);
    torch::Tensor up = torch::randn({3, 5, 64});
    torch::Tensor xc = x.clone().requires_grad_(true), xg = x.to(torch::kCUDA).requires_grad_(true);
    torch::Tensor yc, yg;
    {
      torch::AutoGradMode grad(true);
      yc = cpu(xc);
      yg = gpu(xg);
      (yc.to(torch::kFloat32) * up).sum().backward();
      (yg.to(torch::kFloat32) * up.to(torch::kCUDA)).sum().backward();
    }
    const double tol = dtype == torch::kFloat32 ? 1e-5 : 2.0 / 128;
    auto rel = [](const torch::Tensor& a, const torch::Tensor& b) {
      torch::Tensor d = (a.to(torch::kCPU, torch::kFloat32) - b.to(torch::kCPU, torch::kFloat32));
      return (d.abs() / (b.to(torch::kFloat32).abs() + 1e-3)).max().item<double>();
    };
    EXPECT_LE(rel(yg, yc), tol) << dtype;
    EXPECT_LE((xg.grad().cpu().to(torch::kFloat32) - xc.grad().to(torch::kFloat32))
                  .abs()
                  .max()
                  .item<double>(),
              dtype == torch::kFloat32 ? 1e-4 : 5e-2)
        << dtype;
  }
}

TEST_F(GpuTest, Fp32OnCudaTrainsLikeTheCpu) {
  LORA_REQUIRE_GPU();
  const std::string cpu = Run("cpu", 6, "cpu", "none"), gpu = Run("gpu", 6, "cuda", "none");
  auto want = StepLosses(cpu + "/events.jsonl"), got = StepLosses(gpu + "/events.jsonl");
  ASSERT_EQ(want.size(), 6u);
  ASSERT_EQ(got.size(), 6u);
  for (const auto& [step, loss] : want) EXPECT_NEAR(got[step], loss, 1e-4 * loss) << step;
  EXPECT_LE(MaxRelativeAdapterDiff(Adapter(cpu), Adapter(gpu)), 1e-3);
}

TEST_F(GpuTest, Bf16OnCudaLearnsAndTracksTheCpu) {
  LORA_REQUIRE_GPU();
  const std::string cpu = Run("cpu", 30, "cpu", "bf16"), gpu = Run("gpu", 30, "cuda", "bf16");
  auto want = StepLosses(cpu + "/events.jsonl"), got = StepLosses(gpu + "/events.jsonl");
  ASSERT_EQ(got.size(), 30u);
  for (int64_t step = 1; step <= 5; ++step)
    EXPECT_NEAR(got[step], want[step], 3e-2 * want[step]) << step;
  auto summary = testing::ReadSummary(gpu + "/summary.json");
  EXPECT_LT(summary.final_eval_loss(), 0.8 * summary.initial_eval_loss());
}

// Dropout on: the CUDA generator's state is in the checkpoint, so the resumed run draws the
// same masks as the uninterrupted one.
TEST_F(GpuTest, ResumeWithDropoutOnCudaReproducesTheUninterruptedRun) {
  LORA_REQUIRE_GPU();
  const std::vector<std::string> dropout = {"--set", "lora.dropout=0.1"};
  const std::string full = Run("full", 9, "cuda", "none", dropout);
  std::filesystem::create_directories(dir_.Join("part/checkpoints"));
  std::filesystem::copy(full + "/checkpoints/step-00000003",
                        dir_.Join("part/checkpoints/step-00000003"),
                        std::filesystem::copy_options::recursive);
  std::vector<std::string> resume = dropout;
  resume.insert(resume.end(), {"--resume", dir_.Join("part")});
  const std::string part = Run("part", 9, "cuda", "none", resume);
  auto a = StepLosses(full + "/events.jsonl"), b = StepLosses(part + "/events.jsonl");
  ASSERT_EQ(b.size(), 6u);
  // Bitwise where the kernels are deterministic; SDPA's backward may accumulate with atomics.
  for (const auto& [step, loss] : b) EXPECT_NEAR(loss, a[step], 1e-6 * a[step]) << step;
  EXPECT_LE(MaxRelativeAdapterDiff(Adapter(full), Adapter(part)), 1e-5);
}

TEST_F(GpuTest, OutOfMemoryIsResourceExhaustedWithFiguresAndKnobs) {
  LORA_REQUIRE_GPU();
  const torch::Device gpu(torch::kCUDA, 0);
  absl::Status status;
  try {
    torch::Tensor huge = torch::empty({int64_t{1} << 42}, torch::TensorOptions().device(gpu));
    FAIL() << "allocated 16 TiB";
  } catch (const std::exception& e) {
    status = StatusFromTorchError(e, gpu);
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_THAT(status.message(), HasSubstr("GiB total"));
  EXPECT_THAT(status.message(), HasSubstr("training.local_batch_size"));
  EXPECT_THAT(status.message(), HasSubstr("activation_checkpoint"));
  // The device is still usable afterwards.
  EXPECT_EQ(torch::ones({4}, torch::TensorOptions().device(gpu)).sum().item<float>(), 4.0f);
}

// FSDP over two ranks sharing the one GPU (Gloo, tensors staged through the host: NCCL refuses
// two ranks on a device) trains like one process on that GPU with the same global batch.
TEST_F(GpuTest, FsdpRanksOnTheGpuTrainLikeOneProcess) {
  LORA_REQUIRE_GPU();
  const std::string single =
      Run("single", 6, "cuda", "none", {"--set", "training.local_batch_size=8"});
  const std::string spec = dir_.Join("single.toml");
  const std::string out = dir_.Join("fsdp");
  const int port = testing::FreePort();
  std::vector<std::future<ProcessResult>> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.push_back(std::async(std::launch::async, [&, r] {
      return testing::RunProcess(
          {testing::BinaryPath("worker/lora-train"), "run", "--job", spec, "--out", out, "--quiet",
           "--set", "training.mixed_precision=none", "--set", "checkpoint.interval=3", "--set",
           "resources.world_size=2", "--set", "parallelism.data_parallel_shard_degree=2"},
          300,
          {"RANK=" + std::to_string(r), "WORLD_SIZE=2", "LOCAL_RANK=0", "MASTER_ADDR=127.0.0.1",
           "MASTER_PORT=" + std::to_string(port), "LORA_DIST_BACKEND=gloo"});
    }));
  }
  for (auto& f : ranks) {
    ProcessResult r = f.get();
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  auto want = StepLosses(single + "/events.jsonl"), got = StepLosses(out + "/events.jsonl");
  ASSERT_EQ(got.size(), 6u);
  for (const auto& [step, loss] : want) EXPECT_NEAR(got[step], loss, 1e-4 * loss) << step;
  EXPECT_LE(MaxRelativeAdapterDiff(Adapter(single), Adapter(out)), 1e-3);
}

// Two ranks on the one GPU: Gloo moves CUDA tensors (staged through the host) and gives the
// exact sums; NCCL refuses two ranks of one communicator on the same device, so lora-train
// places one rank per GPU.
TEST_F(GpuTest, TwoRanksOverGlooOnOneGpu) {
  LORA_REQUIRE_GPU();
  dist::RunRanks(2, [](dist::Group& g) {
    const torch::Device gpu(torch::kCUDA, 0);
    torch::Tensor x = torch::arange(8, torch::TensorOptions().dtype(torch::kFloat32).device(gpu))
                          .add(10 * g.rank());
    g.AllReduceSum(x);
    EXPECT_TRUE(x.is_cuda());
    EXPECT_TRUE(torch::equal(x.cpu(), torch::arange(8, torch::kFloat32) * 2 + 10));
    torch::Tensor gathered = g.AllGather(torch::full({3}, g.rank(), x.options()), 0);
    EXPECT_TRUE(torch::equal(gathered.cpu(), torch::tensor({0.f, 0.f, 0.f, 1.f, 1.f, 1.f})));
  });
}

}  // namespace
}  // namespace lora
