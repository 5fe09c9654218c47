// `lora-train run` end to end: learning, events, eval reproduction, checkpoints, exact resume,
// SIGTERM handling, convert/merge jobs, bad specs. Real processes, tiny model.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include <torch/torch.h>
#include <torch/version.h>

#include "common/safetensors.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/events_file.h"
#include "tests/integration/subprocess.h"
#include "tests/integration/tiny_job.h"
#include "tests/test_util.h"
#include "worker/engine/model/tensor_io.h"

namespace lora {
namespace {

using ::testing::HasSubstr;
using testing::ProcessResult;
using testing::RunProcess;
namespace fs = std::filesystem;

std::string LoraTrain() { return testing::BinaryPath("worker/lora-train"); }

ProcessResult Train(std::vector<std::string> args, double timeout = 300) {
  args.insert(args.begin(), LoraTrain());
  return RunProcess(args, timeout);
}

using testing::Events;
using testing::MaxRelativeAdapterDiff;
using testing::ReadSummary;
using testing::StepLosses;
using testing::TinySpec;

class RunTest : public ::testing::Test {
 protected:
  std::string WriteSpec(const std::string& name, const std::string& toml) {
    std::string path = dir_.Join(name);
    std::ofstream(path) << toml;
    return path;
  }
  testing::TempDir dir_;
};

TEST_F(RunTest, LearnsAndEvalReproducesTheReportedLoss) {
  std::string spec = WriteSpec("job.toml", TinySpec(40));
  ProcessResult r = Train({"run", "--job", spec, "--out", dir_.Join("out")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto summary = ReadSummary(dir_.Join("out/summary.json"));
  const double initial = summary.initial_eval_loss(), final_loss = summary.final_eval_loss();
  EXPECT_LT(final_loss, 0.6 * initial) << "eval loss should fall well below its start";
  EXPECT_EQ(summary.steps(), 40);
  EXPECT_GT(summary.peak_rss_bytes(), 0);
  EXPECT_EQ(summary.world_size(), 1);
  EXPECT_EQ(summary.outputs().at("adapter"), dir_.Join("out/final/adapter"));
  EXPECT_EQ(summary.last_checkpoint().step(), 40);
  EXPECT_TRUE(fs::exists(dir_.Join("out/final/adapter/adapter_model.safetensors")));

  // The exported adapter, loaded by `lora-train eval`, gives the same validation loss.
  ProcessResult ev =
      Train({"eval", "--job", spec, "--adapter", dir_.Join("out/final/adapter"), "--json"});
  ASSERT_EQ(ev.exit_code, 0) << ev.err;
  const double reproduced = nlohmann::json::parse(ev.out)["loss"];
  EXPECT_NEAR(reproduced, final_loss, 1e-6 * final_loss);

  // Step events carry every documented field; the finished event carries summary.json.
  auto steps = Events(dir_.Join("out/events.jsonl"), "step");
  ASSERT_EQ(steps.size(), 40u);
  const auto& step = steps[5].step();
  EXPECT_EQ(step.step(), 6);
  EXPECT_EQ(step.total_steps(), 40);
  EXPECT_GT(steps[5].time(), 0);
  for (double v : {step.loss(), step.grad_norm(), step.lr(), step.tokens_per_second(),
                   step.step_seconds(), step.elapsed_seconds(), step.eta_seconds()}) {
    EXPECT_GT(v, 0);
  }
  EXPECT_EQ(step.tokens(), 6 * 4 * 64);
  EXPECT_GT(step.target_tokens(), 0);
  auto finished = Events(dir_.Join("out/events.jsonl"), "finished");
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].finished().summary().SerializeAsString(), summary.SerializeAsString());
  EXPECT_FALSE(Events(dir_.Join("out/events.jsonl"), "eval").empty());
}

TEST_F(RunTest, CheckpointsAreCompleteAndVerifiable) {
  std::string spec = WriteSpec("job.toml", TinySpec(7));
  ASSERT_EQ(Train({"run", "--job", spec, "--out", dir_.Join("out"), "--quiet", "--set",
                   "checkpoint.keep_latest=2"})
                .exit_code,
            0);
  // Steps 3, 6 and 7 were written; keep_latest = 2 leaves 6 and 7.
  EXPECT_FALSE(fs::exists(dir_.Join("out/checkpoints/step-00000003")));
  EXPECT_TRUE(fs::exists(dir_.Join("out/checkpoints/step-00000006/manifest.json")));
  auto ckpts = Events(dir_.Join("out/events.jsonl"), "checkpoint");
  ASSERT_EQ(ckpts.size(), 3u);
  const auto& last = ckpts.back().checkpoint();
  EXPECT_EQ(last.step(), 7);
  EXPECT_FALSE(last.drain());
  EXPECT_EQ(last.sha256(), Sha256Hex(testing::ReadFile(last.path() + "/manifest.json")));
  ASSERT_EQ(last.files_size(), 5);
  for (const auto& f : last.files()) {
    auto digest = Sha256File(last.path() + "/" + f.path());
    ASSERT_TRUE(digest.ok());
    EXPECT_EQ(*digest, f.sha256());
    EXPECT_EQ(static_cast<uintmax_t>(f.size()), fs::file_size(last.path() + "/" + f.path()));
  }
  // No staging leftovers.
  for (const auto& e : fs::directory_iterator(dir_.Join("out/checkpoints"))) {
    EXPECT_THAT(e.path().filename().string(), ::testing::StartsWith("step-"));
    EXPECT_THAT(e.path().filename().string(), ::testing::Not(HasSubstr("staging")));
  }
}

// A run resumed from its step-3 checkpoint reproduces the uninterrupted run's losses bitwise
// (fp32, dropout on: the RNG state is part of the checkpoint).
TEST_F(RunTest, ResumeReproducesLossesBitwise) {
  std::string spec = WriteSpec("job.toml", TinySpec(9));
  std::vector<std::string> sets = {"--set", "training.mixed_precision=none", "--set",
                                   "lora.dropout=0.1"};
  std::vector<std::string> full = {"run", "--job", spec, "--out", dir_.Join("full"), "--quiet"};
  full.insert(full.end(), sets.begin(), sets.end());
  ASSERT_EQ(Train(full).exit_code, 0);
  fs::create_directories(dir_.Join("partial/checkpoints"));
  fs::copy(dir_.Join("full/checkpoints/step-00000003"),
           dir_.Join("partial/checkpoints/step-00000003"), fs::copy_options::recursive);
  std::vector<std::string> resume = {
      "run",    "--job", spec, "--out", dir_.Join("partial"), "--resume", dir_.Join("partial"),
      "--quiet"};
  resume.insert(resume.end(), sets.begin(), sets.end());
  ProcessResult r = Train(resume);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto a = StepLosses(dir_.Join("full/events.jsonl")),
       b = StepLosses(dir_.Join("partial/events.jsonl"));
  ASSERT_EQ(b.size(), 6u);
  for (const auto& [step, loss] : b) EXPECT_EQ(loss, a[step]) << "step " << step;
  EXPECT_EQ(testing::ReadFile(dir_.Join("full/final/adapter/adapter_model.safetensors")),
            testing::ReadFile(dir_.Join("partial/final/adapter/adapter_model.safetensors")));
}

// A latest checkpoint whose files no longer match its manifest (a flipped byte, a truncated
// file: a disk or a copy went wrong) is skipped with a warning naming it, and the run resumes
// from the newest intact one: the same losses and adapter as the uninterrupted run.
TEST_F(RunTest, ResumeSkipsACorruptLatestCheckpoint) {
  std::string spec = WriteSpec("job.toml", TinySpec(9));
  const std::vector<std::string> sets = {"--set", "training.mixed_precision=none", "--set",
                                         "lora.dropout=0.1", "--quiet"};
  std::vector<std::string> full = {"run", "--job", spec, "--out", dir_.Join("full")};
  full.insert(full.end(), sets.begin(), sets.end());
  ASSERT_EQ(Train(full).exit_code, 0);
  const auto corruptions = std::vector<std::pair<std::string, std::function<void(std::string)>>>{
      {"flipped",
       [](const std::string& step_dir) {
         const std::string path = step_dir + "/adapter/adapter_model.safetensors";
         std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
         f.seekg(static_cast<std::streamoff>(fs::file_size(path) - 3));
         const char c = static_cast<char>(f.get() ^ 0x01);
         f.seekp(static_cast<std::streamoff>(fs::file_size(path) - 3));
         f.put(c);
       }},
      {"truncated", [](const std::string& step_dir) {
         const std::string path = step_dir + "/optimizer.safetensors";
         fs::resize_file(path, fs::file_size(path) / 2);
       }}};
  for (const auto& [name, corrupt] : corruptions) {
    SCOPED_TRACE(name);
    const std::string run = dir_.Join(name);
    fs::create_directories(run + "/checkpoints");
    for (const char* step : {"step-00000003", "step-00000006"}) {
      fs::copy(dir_.Join("full/checkpoints/") + step, run + "/checkpoints/" + step,
               fs::copy_options::recursive);
    }
    corrupt(run + "/checkpoints/step-00000006");
    std::vector<std::string> resume = {"run", "--job", spec, "--out", run, "--resume", run};
    resume.insert(resume.end(), sets.begin(), sets.end());
    ProcessResult r = Train(resume);
    ASSERT_EQ(r.exit_code, 0) << r.err;

    bool warned = false;
    for (const auto& e : Events(run + "/events.jsonl", "log")) {
      if (e.log().level() == "warning" &&
          e.log().message().find("step-00000006") != std::string::npos) {
        warned = true;
      }
    }
    EXPECT_TRUE(warned) << "no warning naming the corrupt checkpoint";
    auto started = Events(run + "/events.jsonl", "started");
    ASSERT_EQ(started.size(), 1u);
    EXPECT_EQ(started[0].started().start_step(), 3);
    auto a = StepLosses(dir_.Join("full/events.jsonl")), b = StepLosses(run + "/events.jsonl");
    ASSERT_EQ(b.size(), 6u);
    for (const auto& [step, loss] : b) EXPECT_EQ(loss, a[step]) << "step " << step;
    EXPECT_EQ(testing::ReadFile(dir_.Join("full/final/adapter/adapter_model.safetensors")),
              testing::ReadFile(run + "/final/adapter/adapter_model.safetensors"));
  }
  // A step directory named explicitly is what the user asked for: corrupt is an error.
  const std::string named = dir_.Join("named/step-00000006");
  fs::create_directories(dir_.Join("named"));
  fs::copy(dir_.Join("full/checkpoints/step-00000006"), named, fs::copy_options::recursive);
  fs::resize_file(named + "/rng_state.safetensors", 10);
  ProcessResult bad = Train({"run", "--job", spec, "--out", dir_.Join("x"), "--resume", named});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr("rng_state.safetensors"));
}

TEST_F(RunTest, SigtermCheckpointsThenResumeFinishesIdentically) {
  std::string spec = WriteSpec("job.toml", TinySpec(60));
  std::vector<std::string> args = {LoraTrain(),
                                   "run",
                                   "--job",
                                   spec,
                                   "--out",
                                   dir_.Join("a"),
                                   "--quiet",
                                   "--set",
                                   "training.seq_len=128",
                                   "--set",
                                   "training.local_batch_size=8"};
  ASSERT_EQ(RunProcess(args, 300).exit_code, 0);
  args[5] = dir_.Join("b");
  testing::ChildProcess child(args, dir_.Join("b.out"), dir_.Join("b.err"));
  // Wait for the first step, then ask it to stop.
  for (int i = 0; i < 3000 && StepLosses(dir_.Join("b/events.jsonl")).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  child.Signal(SIGTERM);
  const int code = child.Wait(60);
  ASSERT_EQ(code, 75) << testing::ReadFile(dir_.Join("b.err"));
  auto ckpts = Events(dir_.Join("b/events.jsonl"), "checkpoint");
  ASSERT_FALSE(ckpts.empty());
  const int64_t stopped_at = ckpts.back().checkpoint().step();
  EXPECT_LT(stopped_at, 60);
  // The checkpoint written because of the stop says so (lorad requeues on it); earlier ones
  // were the interval's.
  EXPECT_TRUE(ckpts.back().checkpoint().drain());
  for (size_t i = 0; i + 1 < ckpts.size(); ++i) EXPECT_FALSE(ckpts[i].checkpoint().drain());
  std::vector<std::string> resume = args;
  resume.insert(resume.end(), {"--resume", dir_.Join("b")});
  ProcessResult r = RunProcess(resume, 300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto a = StepLosses(dir_.Join("a/events.jsonl")), b = StepLosses(dir_.Join("b/events.jsonl"));
  EXPECT_EQ(b.size(), 60u);
  for (const auto& [step, loss] : b)
    EXPECT_EQ(loss, a[step]) << "step " << step << " (stopped at " << stopped_at << ")";
}

TEST_F(RunTest, ConvertAndMergeJobs) {
  std::string convert =
      WriteSpec("convert.toml", "[job]\nkind = \"convert\"\n[model]\nflavor = \"tiny\"\n");
  ProcessResult c = Train({"run", "--job", convert, "--out", dir_.Join("c"), "--quiet"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_TRUE(fs::exists(dir_.Join("c/final/adapter/adapter_config.json")));
  auto summary = ReadSummary(dir_.Join("c/summary.json"));
  EXPECT_EQ(summary.num_wrapped_modules(), 14);
  EXPECT_EQ(summary.wrapped_modules_size(), 14);
  EXPECT_GT(summary.adapter_bytes(), 0);
  EXPECT_EQ(summary.outputs().at("adapter"), dir_.Join("c/final/adapter"));
  std::string merge = WriteSpec(
      "merge.toml", "[job]\nkind = \"merge\"\n[model]\nflavor = \"tiny\"\n[lora]\nadapter = \"" +
                        dir_.Join("c/final/adapter") + "\"\n");
  ProcessResult m = Train({"run", "--job", merge, "--out", dir_.Join("m"), "--quiet"});
  ASSERT_EQ(m.exit_code, 0) << m.err;
  EXPECT_TRUE(fs::exists(dir_.Join("m/final/merged/model.safetensors")));
  auto merged = ReadSummary(dir_.Join("m/summary.json"));
  EXPECT_EQ(merged.merged_modules(), 14);
  EXPECT_EQ(merged.outputs().at("merged"), dir_.Join("m/final/merged"));
  auto finished = Events(dir_.Join("m/events.jsonl"), "finished");
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].finished().summary().merged_modules(), 14);
}

TEST_F(RunTest, BadSpecsFailWithFileLineAndKey) {
  std::string spec =
      WriteSpec("bad.toml", "[training]\nsteps = 0\n[dataset]\nname = \"synthetic-arith\"\n");
  ProcessResult r = Train({"run", "--job", spec, "--out", dir_.Join("x")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("bad.toml:2: training.steps: must be in [1, 100000000], got 0"));
  std::string data = WriteSpec("data.toml", "[dataset]\npath = \"" + dir_.Join("missing.jsonl") +
                                                "\"\n[model]\nflavor = \"tiny\"\n");
  ProcessResult d = Train({"run", "--job", data, "--out", dir_.Join("y")});
  EXPECT_EQ(d.exit_code, 1);
  EXPECT_THAT(d.err, HasSubstr("missing.jsonl: cannot open dataset file"));
  auto failed = Events(dir_.Join("y/events.jsonl"), "failed");
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_THAT(failed[0].failed().reason(), HasSubstr("missing.jsonl"));
}

// Without a visible GPU, asking for CUDA is a clear, specific failure, never a silent CPU run;
// `version --json` says what the engine was built with and sees.
TEST_F(RunTest, CudaWithoutAVisibleGpuIsRefusedNamingTheField) {
  ProcessResult v = Train({"version", "--json"});
  ASSERT_EQ(v.exit_code, 0) << v.err;
  auto caps = nlohmann::json::parse(v.out);
  EXPECT_EQ(caps["torch_version"], TORCH_VERSION);
  EXPECT_EQ(caps["cuda_compiled"], true);
  EXPECT_THAT(caps["cuda_version"].get<std::string>(), ::testing::StartsWith("13."));
  EXPECT_THAT(caps["nccl_version"].get<std::string>(),
              ::testing::MatchesRegex("2\\.[0-9]+\\.[0-9]+.*"));
  ASSERT_TRUE(caps["cuda_devices"].is_array());
  if (!caps["cuda_devices"].empty()) {
    for (const auto& d : caps["cuda_devices"]) {
      EXPECT_FALSE(d["name"].get<std::string>().empty());
      EXPECT_GT(d["total_memory_bytes"].get<int64_t>(), 0);
    }
    GTEST_SKIP() << "a GPU is visible: the refusal cannot be observed here";
  }
  EXPECT_EQ(caps["devices"], nlohmann::json({"cpu"}));

  std::string spec = WriteSpec("cuda.toml", TinySpec(2, "[resources]\ndevice = \"cuda\"\n"));
  ProcessResult r = Train({"run", "--job", spec, "--out", dir_.Join("cuda")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("resources.device: 'cuda' but no CUDA device is visible"));
  auto failed = Events(dir_.Join("cuda/events.jsonl"), "failed");
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].failed().code(), "FAILED_PRECONDITION");
  EXPECT_TRUE(Events(dir_.Join("cuda/events.jsonl"), "step").empty());
}

// The portable kernels (plain LibTorch attention and SwiGLU: what a CUDA build computes with)
// train the same model as the fused CPU kernels: fp32, per-step losses and final adapters.
TEST_F(RunTest, PortableKernelsTrainLikeTheFusedKernels) {
  std::string spec = WriteSpec("fp32.toml", TinySpec(6));
  const std::vector<std::string> sets = {"--set", "training.mixed_precision=none", "--set",
                                         "checkpoint.interval=0", "--quiet"};
  std::vector<std::string> fused = {"run", "--job", spec, "--out", dir_.Join("fused")};
  std::vector<std::string> portable = {
      "run", "--job", spec, "--out", dir_.Join("portable"), "--portable-kernels"};
  fused.insert(fused.end(), sets.begin(), sets.end());
  portable.insert(portable.end(), sets.begin(), sets.end());
  ProcessResult a = Train(fused), b = Train(portable);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  auto want = StepLosses(dir_.Join("fused/events.jsonl"));
  auto got = StepLosses(dir_.Join("portable/events.jsonl"));
  ASSERT_EQ(want.size(), 6u);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [step, loss] : want) EXPECT_NEAR(got[step], loss, 1e-5 * loss) << step;
  EXPECT_LE(MaxRelativeAdapterDiff(dir_.Join("fused/final/adapter/adapter_model.safetensors"),
                                   dir_.Join("portable/final/adapter/adapter_model.safetensors")),
            1e-5);
}

// training.epochs: the run takes as many steps as cover that many passes over the training
// windows, and evaluates on the held-out validation file.
TEST_F(RunTest, EpochsAndAValidationFileDriveTheRun) {
  std::ofstream train(dir_.Join("train.jsonl"));
  for (int i = 0; i < 40; ++i)
    train << R"({"text": "the cat sees a red ball in the park."})"
          << "\n";
  train.close();
  std::ofstream val(dir_.Join("val.jsonl"));
  for (int i = 0; i < 5; ++i)
    val << R"({"text": "a dog hears the green door."})"
        << "\n";
  val.close();
  std::string toml = TinySpec(1);
  auto replace = [&toml](const std::string& from, const std::string& to) {
    toml.replace(toml.find(from), from.size(), to);
  };
  replace("steps = 1\n", "epochs = 2\n");
  replace("name = \"synthetic-arith\"", "path = \"" + dir_.Join("train.jsonl") +
                                            "\"\nvalidation_path = \"" + dir_.Join("val.jsonl") +
                                            "\"");
  replace("validation_fraction = 0.05\n", "");
  ProcessResult r = Train({"run", "--job", WriteSpec("job.toml", toml), "--out", dir_.Join("out")});
  ASSERT_EQ(r.exit_code, 0) << r.err << "\n" << toml;
  // 40 examples of 37 bytes + BOS/EOS = 1560 tokens, packed into windows of 64 (+1 overlapping):
  // 24 windows; 2 epochs at 4 rows per step = 48 / 4 = 12 steps.
  auto started = Events(dir_.Join("out/events.jsonl"), "started");
  ASSERT_FALSE(started.empty());
  EXPECT_EQ(started[0].started().total_steps(), 12);
  auto summary = ReadSummary(dir_.Join("out/summary.json"));
  EXPECT_EQ(summary.steps(), 12);
  EXPECT_TRUE(std::isfinite(summary.final_eval_loss()) && summary.final_eval_loss() > 0);
}

// DoRA's magnitudes are adapter state like A and B: checkpointed, restored, resumed exactly.
TEST_F(RunTest, DoraResumeReproducesLossesBitwise) {
  std::string spec = WriteSpec("job.toml", TinySpec(7, "[lora]\nuse_dora = true\n"));
  // TinySpec has its own [lora] table: move use_dora into it.
  std::string toml = testing::ReadFile(spec);
  toml.erase(toml.rfind("[lora]\nuse_dora = true\n"));
  toml.replace(toml.find("rank = 4\n"), 9, "rank = 4\nuse_dora = true\n");
  spec = WriteSpec("job.toml", toml);
  ASSERT_EQ(Train({"run", "--job", spec, "--out", dir_.Join("full"), "--quiet", "--set",
                   "training.mixed_precision=none"})
                .exit_code,
            0);
  fs::create_directories(dir_.Join("partial/checkpoints"));
  fs::copy(dir_.Join("full/checkpoints/step-00000003"),
           dir_.Join("partial/checkpoints/step-00000003"), fs::copy_options::recursive);
  ProcessResult r =
      Train({"run", "--job", spec, "--out", dir_.Join("partial"), "--resume", dir_.Join("partial"),
             "--quiet", "--set", "training.mixed_precision=none"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto a = StepLosses(dir_.Join("full/events.jsonl")),
       b = StepLosses(dir_.Join("partial/events.jsonl"));
  ASSERT_EQ(b.size(), 4u);
  for (const auto& [s, loss] : b) EXPECT_EQ(loss, a[s]) << "step " << s;
  const std::string adapter =
      testing::ReadFile(dir_.Join("full/final/adapter/adapter_model.safetensors"));
  EXPECT_NE(adapter.find("lora_magnitude_vector"), std::string::npos);
  EXPECT_EQ(adapter,
            testing::ReadFile(dir_.Join("partial/final/adapter/adapter_model.safetensors")));
}

}  // namespace
}  // namespace lora
