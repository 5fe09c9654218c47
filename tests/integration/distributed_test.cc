// Multi-rank `lora-train run` over c10d Gloo on loopback: every parallel layout trains the same
// global batch as a single process and must reproduce its per-step losses and final adapters;
// checkpoints move between layouts; a rank that dies or hangs fails the whole job promptly with
// the rank named. Real processes, tiny fp32 model.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <algorithm>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <thread>

#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/events_file.h"
#include "tests/integration/subprocess.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using ::testing::HasSubstr;
using testing::ProcessResult;
namespace fs = std::filesystem;

// Relative tolerance the issue asks for; fp32 runs land around 1e-7.
constexpr double kTolerance = 1e-5;

constexpr char kSpec[] = R"([job]
name = "dist"
[model]
flavor = "tiny"
[lora]
rank = 4
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
[optimizer]
lr = 0.005
[training]
steps = 6
seq_len = 64
local_batch_size = 4
mixed_precision = "none"
num_threads = 1
max_norm = 1.0
[dataset]
name = "synthetic-arith"
num_examples = 400
validation_fraction = 0.05
validation_interval = 3
[checkpoint]
interval = 3
keep_latest = 0
[resources]
collective_timeout_seconds = 60
)";

std::vector<std::string> RunArgs(const std::string& spec, const std::string& out, int world,
                                 const std::vector<std::string>& sets,
                                 const std::string& resume = "") {
  std::vector<std::string> args = {testing::BinaryPath("worker/lora-train"),
                                   "run",
                                   "--job",
                                   spec,
                                   "--out",
                                   out,
                                   "--quiet",
                                   "--set",
                                   "resources.world_size=" + std::to_string(world)};
  for (const std::string& s : sets) {
    if (s.rfind("--", 0) != 0) args.push_back("--set");  // flags (--portable-kernels) go as is
    args.push_back(s);
  }
  if (!resume.empty()) {
    args.push_back("--resume");
    args.push_back(resume);
  }
  return args;
}

std::vector<std::string> RankEnv(int rank, int world, int port) {
  return {"RANK=" + std::to_string(rank), "WORLD_SIZE=" + std::to_string(world),
          "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port)};
}

// Runs `world` ranks to completion; returns each rank's result.
std::vector<ProcessResult> RunRanks(const std::string& spec, const std::string& out, int world,
                                    const std::vector<std::string>& sets,
                                    const std::string& resume = "") {
  const int port = testing::FreePort();
  std::vector<std::future<ProcessResult>> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.push_back(std::async(std::launch::async, [=] {
      return testing::RunProcess(RunArgs(spec, out, world, sets, resume), 240,
                                 RankEnv(r, world, port));
    }));
  }
  std::vector<ProcessResult> results;
  for (auto& f : ranks) results.push_back(f.get());
  return results;
}

using testing::Events;

std::map<int64_t, double> StepLosses(const std::string& run_dir) {
  std::map<int64_t, double> out;
  for (const auto& e : Events(run_dir + "/events.jsonl", "step"))
    out[e.step().step()] = e.step().loss();
  return out;
}

std::map<std::string, std::vector<float>> ReadF32(const std::string& path) {
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  std::map<std::string, std::vector<float>> out;
  if (!file.ok()) return out;
  for (const TensorInfo& t : (*file)->tensors()) {
    EXPECT_EQ(t.dtype, DType::kF32) << t.name;
    std::vector<float> v(static_cast<size_t>(t.numel()));
    std::memcpy(v.data(), (*file)->Data(t), t.nbytes());
    out[t.name] = std::move(v);
  }
  return out;
}

// Largest |a - b| over a tensor, relative to the tensor's largest |a|.
void ExpectSameTensors(const std::string& expected_path, const std::string& actual_path,
                       double tolerance = kTolerance) {
  auto expected = ReadF32(expected_path), actual = ReadF32(actual_path);
  ASSERT_EQ(expected.size(), actual.size()) << actual_path;
  ASSERT_FALSE(expected.empty());
  for (const auto& [name, e] : expected) {
    auto it = actual.find(name);
    ASSERT_NE(it, actual.end()) << name << " missing from " << actual_path;
    ASSERT_EQ(e.size(), it->second.size()) << name;
    double scale = 0, diff = 0;
    for (size_t i = 0; i < e.size(); ++i) {
      scale = std::max(scale, std::fabs(static_cast<double>(e[i])));
      diff = std::max(diff, std::fabs(static_cast<double>(e[i]) - it->second[i]));
    }
    EXPECT_LE(diff, tolerance * std::max(scale, 1e-12)) << name << " in " << actual_path;
  }
}

// ||a - b|| / ||a|| over all tensors together.
double RelativeDistance(const std::string& expected_path, const std::string& actual_path) {
  auto expected = ReadF32(expected_path), actual = ReadF32(actual_path);
  double diff = 0, norm = 0;
  for (const auto& [name, e] : expected) {
    const auto& a = actual[name];
    if (a.size() != e.size()) return 1e9;
    for (size_t i = 0; i < e.size(); ++i) {
      diff += (static_cast<double>(e[i]) - a[i]) * (static_cast<double>(e[i]) - a[i]);
      norm += static_cast<double>(e[i]) * e[i];
    }
  }
  return std::sqrt(diff / std::max(norm, 1e-30));
}

void ExpectSameLosses(const std::map<int64_t, double>& expected,
                      const std::map<int64_t, double>& actual, double tolerance = kTolerance) {
  ASSERT_EQ(expected.size(), actual.size());
  for (const auto& [step, loss] : expected) {
    ASSERT_TRUE(actual.count(step)) << "step " << step;
    EXPECT_NEAR(actual.at(step), loss, tolerance * loss) << "step " << step;
  }
}

// The single-process references, computed once per test binary run.
class DistributedTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    std::ofstream(Spec()) << kSpec;
    for (int rows : {4, 8}) {
      for (bool portable : {false, true}) {
        std::vector<std::string> sets = {"training.local_batch_size=" + std::to_string(rows)};
        if (portable) sets.push_back("--portable-kernels");
        ProcessResult r =
            testing::RunProcess(RunArgs(Spec(), Reference(rows, portable), 1, sets), 120);
        ASSERT_EQ(r.exit_code, 0) << r.err;
      }
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string Spec() { return dir_->Join("job.toml"); }
  // A single process training `rows` rows per step (with the portable kernels: SDPA and
  // LibTorch's SwiGLU, the path GPUs run).
  static std::string Reference(int rows, bool portable = false) {
    return dir_->Join((portable ? "single-portable-" : "single-") + std::to_string(rows));
  }

  testing::TempDir scratch_;
  static testing::TempDir* dir_;
};
testing::TempDir* DistributedTest::dir_ = nullptr;

struct Layout {
  const char* name;
  int world;
  std::vector<std::string> sets;
  int global_rows;  // local_batch_size x data-parallel replicas
};

// gtest prints parameters in test names and logs; a layout's name says it all.
void PrintTo(const Layout& layout, std::ostream* os) { *os << layout.name; }

class LayoutTest : public DistributedTest, public ::testing::WithParamInterface<Layout> {};

TEST_P(LayoutTest, MatchesSingleProcessLossesAndAdapters) {
  const Layout& layout = GetParam();
  const std::string out = scratch_.Join("run");
  auto results = RunRanks(Spec(), out, layout.world, layout.sets);
  for (size_t r = 0; r < results.size(); ++r)
    ASSERT_EQ(results[r].exit_code, 0) << "rank " << r << ": " << results[r].err;

  const bool portable =
      std::find(layout.sets.begin(), layout.sets.end(), "--portable-kernels") != layout.sets.end();
  const std::string reference = Reference(layout.global_rows, portable);
  ExpectSameLosses(StepLosses(reference), StepLosses(out));
  ExpectSameTensors(reference + "/final/adapter/adapter_model.safetensors",
                    out + "/final/adapter/adapter_model.safetensors");
  // Checkpoints are layout-independent: the same full-size adapters and optimizer moments.
  ExpectSameTensors(reference + "/checkpoints/step-00000003/optimizer.safetensors",
                    out + "/checkpoints/step-00000003/optimizer.safetensors");
  EXPECT_EQ(testing::ReadFile(reference + "/final/adapter/adapter_config.json"),
            testing::ReadFile(out + "/final/adapter/adapter_config.json"));

  // Rank 0 alone writes outputs; every rank reports.
  auto summary = testing::ReadSummary(out + "/summary.json");
  EXPECT_EQ(summary.world_size(), layout.world);
  EXPECT_GT(summary.bytes_sent(), 0);
  EXPECT_FALSE(summary.mesh().empty());
  auto finished = Events(out + "/events.jsonl", "finished");
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].finished().summary().SerializeAsString(), summary.SerializeAsString());
  EXPECT_FALSE(Events(out + "/events.jsonl", "rank_status").empty());
  for (int r = 1; r < layout.world; ++r) {
    const std::string rank_events = out + "/rank-" + std::to_string(r) + "/events.jsonl";
    EXPECT_TRUE(fs::exists(rank_events)) << r;
    EXPECT_FALSE(fs::exists(out + "/rank-" + std::to_string(r) + "/final")) << r;
    auto status = Events(rank_events, "rank_status");
    ASSERT_FALSE(status.empty()) << r;
    EXPECT_EQ(status.back().rank(), r);
    EXPECT_GT(status.back().rank_status().peak_rss_bytes(), 0);
    EXPECT_TRUE(Events(rank_events, "step").empty()) << "rank 0 alone reports the job's steps";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, LayoutTest,
    ::testing::Values(
        Layout{"Fsdp2", 2, {"parallelism.data_parallel_shard_degree=2"}, 8},
        // The portable path (SDPA, LibTorch SwiGLU: what GPUs run) under FSDP, TP and PP,
        // against a portable single process.
        Layout{"Fsdp2Portable",
               2,
               {"parallelism.data_parallel_shard_degree=2", "--portable-kernels"},
               8},
        Layout{"Tp2Portable",
               2,
               {"parallelism.tensor_parallel_degree=2", "parallelism.data_parallel_shard_degree=1",
                "--portable-kernels"},
               4},
        Layout{"Pp2Portable",
               2,
               {"parallelism.pipeline_parallel_degree=2",
                "parallelism.data_parallel_shard_degree=1", "--portable-kernels"},
               4},
        Layout{"Hsdp2x2",
               4,
               {"parallelism.data_parallel_replicate_degree=2",
                "parallelism.data_parallel_shard_degree=2", "training.local_batch_size=2"},
               8},
        Layout{"Pp2OneFOneB",
               2,
               {"parallelism.pipeline_parallel_degree=2",
                "parallelism.pipeline_parallel_schedule=1F1B",
                "parallelism.data_parallel_shard_degree=1"},
               4},
        Layout{"Pp2GPipe",
               2,
               {"parallelism.pipeline_parallel_degree=2",
                "parallelism.pipeline_parallel_schedule=GPipe",
                "parallelism.data_parallel_shard_degree=1"},
               4},
        Layout{
            "Cp2AllGather",
            2,
            {"parallelism.context_parallel_degree=2", "parallelism.data_parallel_shard_degree=1"},
            4},
        Layout{"Cp2Ring",
               2,
               {"parallelism.context_parallel_degree=2", "parallelism.context_parallel_method=ring",
                "parallelism.data_parallel_shard_degree=1"},
               4},
        // Four blocks travel three hops: the ring's order and the dK/dV accumulators' way home.
        Layout{"Cp4Ring",
               4,
               {"parallelism.context_parallel_degree=4", "parallelism.context_parallel_method=ring",
                "parallelism.data_parallel_shard_degree=1"},
               4},
        Layout{"Tp2",
               2,
               {"parallelism.tensor_parallel_degree=2", "parallelism.data_parallel_shard_degree=1"},
               4},
        Layout{
            "Fsdp2Pp2",
            4,
            {"parallelism.data_parallel_shard_degree=2", "parallelism.pipeline_parallel_degree=2"},
            8},
        // FSDP under PP holds gathered layers for the step by default; the other policy too.
        Layout{
            "Fsdp2Pp2ReshardAlways",
            4,
            {"parallelism.data_parallel_shard_degree=2", "parallelism.pipeline_parallel_degree=2",
             "parallelism.fsdp_reshard_after_forward=always"},
            8},
        Layout{"Fsdp2ReshardNever",
               2,
               {"parallelism.data_parallel_shard_degree=2",
                "parallelism.fsdp_reshard_after_forward=never"},
               8},
        Layout{
            "Cp2Fsdp2",
            4,
            {"parallelism.data_parallel_shard_degree=2", "parallelism.context_parallel_degree=2"},
            8}),
    [](const ::testing::TestParamInfo<Layout>& info) { return std::string(info.param.name); });

// bf16 base weights and activations (the default precision) against one bf16 process on the
// same global batch. Rounding differs, so the bounds are looser than fp32's.
class Bf16Test : public DistributedTest {
 protected:
  void ExpectMatchesSingleProcess(const std::string& name, int world, int global_rows,
                                  std::vector<std::string> sets) {
    constexpr double kBf16Tolerance = 5e-4;
    const std::string single = scratch_.Join("single-bf16");
    ProcessResult r =
        testing::RunProcess(RunArgs(Spec(), single, 1,
                                    {"training.local_batch_size=" + std::to_string(global_rows),
                                     "training.mixed_precision=bf16"}),
                            120);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string out = scratch_.Join(name);
    sets.push_back("training.mixed_precision=bf16");
    for (const auto& rank : RunRanks(Spec(), out, world, sets))
      ASSERT_EQ(rank.exit_code, 0) << rank.err;
    ExpectSameLosses(StepLosses(single), StepLosses(out), kBf16Tolerance);
    // Element-wise bounds make no sense here: Adam's first updates are nearly sign(gradient),
    // so rounding-level differences in near-zero gradient entries flip whole updates. As a
    // whole the adapters agree.
    const double distance = RelativeDistance(single + "/final/adapter/adapter_model.safetensors",
                                             out + "/final/adapter/adapter_model.safetensors");
    EXPECT_LT(distance, 0.05);
    std::cout << "bf16 " << name << " adapters: relative L2 distance " << distance << std::endl;
  }
};

// FSDP moves bf16 shards, TP sums bf16 partial products in fp32.
TEST_F(Bf16Test, FsdpTimesTpMatchesSingleProcessWithinBf16Rounding) {
  ExpectMatchesSingleProcess(
      "fsdp2-tp2", 4, 8,
      {"parallelism.data_parallel_shard_degree=2", "parallelism.tensor_parallel_degree=2"});
}

// Ring attention sends bf16 K/V blocks (as fp16 bits over Gloo) and merges partial outputs.
TEST_F(Bf16Test, CpRingMatchesSingleProcessWithinBf16Rounding) {
  ExpectMatchesSingleProcess(
      "cp2-ring", 2, 4,
      {"parallelism.context_parallel_degree=2", "parallelism.context_parallel_method=ring",
       "parallelism.data_parallel_shard_degree=1"});
}

TEST_F(DistributedTest, CheckpointResumesUnderAnotherLayout) {
  // FSDP 2 writes step 3; a single process finishes the run.
  const std::string fsdp = scratch_.Join("fsdp");
  for (const auto& r : RunRanks(Spec(), fsdp, 2, {"parallelism.data_parallel_shard_degree=2"}))
    ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string single = scratch_.Join("single");
  ProcessResult r = testing::RunProcess(RunArgs(Spec(), single, 1, {"training.local_batch_size=8"},
                                                fsdp + "/checkpoints/step-00000003"),
                                        120);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto expected = StepLosses(Reference(8));
  auto resumed = StepLosses(single);
  ASSERT_EQ(resumed.size(), 3u);
  for (const auto& [step, loss] : resumed) EXPECT_NEAR(loss, expected.at(step), kTolerance * loss);

  // The single-process checkpoint at step 3, resumed by TP 2 x PP 2.
  const std::string mixed = scratch_.Join("tp-pp");
  for (const auto& rank :
       RunRanks(Spec(), mixed, 4,
                {"parallelism.tensor_parallel_degree=2", "parallelism.pipeline_parallel_degree=2",
                 "parallelism.data_parallel_shard_degree=1"},
                Reference(4) + "/checkpoints/step-00000003"))
    ASSERT_EQ(rank.exit_code, 0) << rank.err;
  expected = StepLosses(Reference(4));
  resumed = StepLosses(mixed);
  ASSERT_EQ(resumed.size(), 3u);
  for (const auto& [step, loss] : resumed) EXPECT_NEAR(loss, expected.at(step), kTolerance * loss);
  ExpectSameTensors(Reference(4) + "/final/adapter/adapter_model.safetensors",
                    mixed + "/final/adapter/adapter_model.safetensors");
}

TEST_F(DistributedTest, MismatchedWorldSizeIsAClearError) {
  ProcessResult r = testing::RunProcess(
      RunArgs(Spec(), scratch_.Join("bad"), 2, {"parallelism.data_parallel_shard_degree=2"}), 60,
      RankEnv(0, 3, testing::FreePort()));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("WORLD_SIZE=3"));
}

TEST_F(DistributedTest, ARanksOwnErrorKeepsItsCodeAndReason) {
  const std::string out = scratch_.Join("missing-data");
  auto results = RunRanks(Spec(), out, 2,
                          {"parallelism.data_parallel_shard_degree=2",
                           "dataset.name=", "dataset.path=" + scratch_.Join("nope.jsonl")});
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 1) << r.err;
  auto failed = Events(out + "/events.jsonl", "failed");
  ASSERT_FALSE(failed.empty());
  EXPECT_THAT(failed.back().failed().reason(), HasSubstr("nope.jsonl"));
  // Not a lost peer: the controller must not retry it.
  EXPECT_NE(failed.back().failed().code(), "UNAVAILABLE");
}

// Starts `world` FSDP ranks on a long run, waits for the first checkpoint, then signals
// `victim` (every rank when -1). Returns the other ranks' exit codes (every rank's when -1) and
// the seconds they took to exit.
struct FailureOutcome {
  std::vector<int> exit_codes;
  double seconds = 0;
  std::string reason;  // rank 0's failed event, or its stderr
};

FailureOutcome KillOneRank(const std::string& spec, const std::string& out, int world, int victim,
                           int signo, int timeout_s) {
  const int port = testing::FreePort();
  std::vector<std::unique_ptr<testing::ChildProcess>> ranks;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> args = RunArgs(
        spec, out, world,
        {"parallelism.data_parallel_shard_degree=" + std::to_string(world), "training.steps=100000",
         "resources.collective_timeout_seconds=" + std::to_string(timeout_s)});
    // ChildProcess inherits the environment: pass the rank's through `env`.
    std::vector<std::string> with_env = {"/usr/bin/env"};
    for (const std::string& e : RankEnv(r, world, port)) with_env.push_back(e);
    with_env.insert(with_env.end(), args.begin(), args.end());
    ranks.push_back(std::make_unique<testing::ChildProcess>(
        with_env, out + ".rank" + std::to_string(r) + ".out",
        out + ".rank" + std::to_string(r) + ".err"));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (Events(out + "/events.jsonl", "checkpoint").empty() &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  FailureOutcome outcome;
  if (Events(out + "/events.jsonl", "checkpoint").empty()) {
    ADD_FAILURE() << "no checkpoint within 120 s";
    return outcome;
  }
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < world; ++r) {
    if (victim < 0 || r == victim) ranks[static_cast<size_t>(r)]->Signal(signo);
  }
  for (int r = 0; r < world; ++r) {
    if (r == victim) continue;
    outcome.exit_codes.push_back(ranks[static_cast<size_t>(r)]->Wait(timeout_s + 60));
  }
  outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (victim >= 0) {
    ranks[static_cast<size_t>(victim)]->Signal(SIGKILL);
    ranks[static_cast<size_t>(victim)]->Wait(10);
  }
  auto failed = Events(out + "/events.jsonl", "failed");
  outcome.reason =
      failed.empty() ? testing::ReadFile(out + ".rank0.err") : failed.back().failed().reason();
  return outcome;
}

// What a cancel does: SIGTERM to every rank. They agree on one step, checkpoint it once and
// exit 75 (stopped after a checkpoint), instead of one rank running ahead into a collective
// the others never join.
TEST_F(DistributedTest, SigtermStopsEveryRankAtOneCheckpointedStep) {
  const std::string out = scratch_.Join("stopped");
  FailureOutcome o = KillOneRank(Spec(), out, 2, -1, SIGTERM, 60);
  EXPECT_THAT(o.exit_codes, ::testing::Each(75));
  EXPECT_LT(o.seconds, 15);
  auto checkpoints = Events(out + "/events.jsonl", "checkpoint");
  auto steps = Events(out + "/events.jsonl", "step");
  ASSERT_FALSE(checkpoints.empty());
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(checkpoints.back().checkpoint().step(), steps.back().step().step());
  EXPECT_TRUE(checkpoints.back().checkpoint().drain());
  EXPECT_TRUE(fs::exists(checkpoints.back().checkpoint().path() + "/manifest.json"));
  EXPECT_TRUE(Events(out + "/events.jsonl", "failed").empty());
}

TEST_F(DistributedTest, ARankThatDiesFailsTheJobPromptlyNamingIt) {
  FailureOutcome o = KillOneRank(Spec(), scratch_.Join("killed"), 4, 2, SIGKILL, 60);
  EXPECT_THAT(o.exit_codes, ::testing::Each(1));
  // Far below the 60 s collective timeout: a dead peer's socket closes at once.
  EXPECT_LT(o.seconds, 15);
  EXPECT_THAT(o.reason, HasSubstr("unresponsive: rank 2"));
}

TEST_F(DistributedTest, ARankThatHangsFailsTheJobAfterTheTimeout) {
  FailureOutcome o = KillOneRank(Spec(), scratch_.Join("hung"), 2, 1, SIGSTOP, 5);
  EXPECT_THAT(o.exit_codes, ::testing::Each(1));
  EXPECT_GE(o.seconds, 4);
  EXPECT_LT(o.seconds, 25);
  EXPECT_THAT(o.reason, HasSubstr("timeout 5 s"));
  EXPECT_THAT(o.reason, HasSubstr("unresponsive: rank 1"));
}

}  // namespace
}  // namespace lora
