// lora-train as users run it: real processes, real files, and an independent Python reference.
#include <filesystem>
#include <fstream>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/subprocess.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using ::testing::HasSubstr;
using testing::ProcessResult;
using testing::RunProcess;

std::string LoraTrain() { return testing::BinaryPath("worker/lora-train"); }

ProcessResult Train(std::vector<std::string> args) {
  args.insert(args.begin(), LoraTrain());
  return RunProcess(args, 240);
}

ProcessResult Reference(std::vector<std::string> args) {
  args.insert(args.begin(), testing::SourcePath("tests/python/llama_reference.py"));
  args.insert(args.begin(), LORA_PYTHON);
  return RunProcess(args, 240);
}

void WriteDataset(const std::string& path, int64_t vocab, int lines, uint32_t seed) {
  std::mt19937 rng(seed);
  std::ofstream out(path);
  for (int i = 0; i < lines; ++i) {
    nlohmann::json ids = nlohmann::json::array();
    int n = 3 + static_cast<int>(rng() % 40);
    for (int j = 0; j < n; ++j) ids.push_back(static_cast<int64_t>(rng() % vocab));
    out << nlohmann::json{{"input_ids", ids}}.dump() << "\n";
  }
}

double JsonLoss(const ProcessResult& r) {
  auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  return j["loss"].get<double>();
}

class LoraTrainCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = dir_.Join("model");
    ProcessResult r = Train({"init-model", "--flavor", "tiny", "--seed", "3", "--out", model_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  testing::TempDir dir_;
  std::string model_;
};

TEST_F(LoraTrainCliTest, ConvertWritesAdapterAndReport) {
  ProcessResult r = Train({"convert", "--model", model_, "--out", dir_.Join("adapter"), "--rank",
                           "4", "--alpha", "8", "--target-modules", "q_proj,v_proj", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto report = nlohmann::json::parse(r.out);
  EXPECT_EQ(report["num_wrapped_modules"], 4);
  EXPECT_EQ(report["trainable_parameters"], 2 * 4 * ((64 + 64) + (64 + 32)));
  EXPECT_GT(report["total_parameters"].get<int64_t>(),
            report["trainable_parameters"].get<int64_t>());
  EXPECT_TRUE(report.contains("timing_seconds"));
  EXPECT_TRUE(std::filesystem::exists(dir_.Join("adapter/adapter_model.safetensors")));
  EXPECT_TRUE(std::filesystem::exists(dir_.Join("adapter/adapter_config.json")));
}

TEST_F(LoraTrainCliTest, ConvertedAdapterLeavesLossUnchanged) {
  WriteDataset(dir_.Join("d.jsonl"), 512, 6, 1);
  ASSERT_EQ(Train({"convert", "--model", model_, "--out", dir_.Join("a")}).exit_code, 0);
  ProcessResult base =
      Train({"eval", "--model", model_, "--dataset", dir_.Join("d.jsonl"), "--json"});
  ProcessResult with = Train({"eval", "--model", model_, "--adapter", dir_.Join("a"), "--dataset",
                              dir_.Join("d.jsonl"), "--json"});
  ASSERT_EQ(base.exit_code, 0) << base.err;
  ASSERT_EQ(with.exit_code, 0) << with.err;
  EXPECT_EQ(JsonLoss(base), JsonLoss(with));
}

// The Python reference reads the same files with its own parser and math: the losses of the
// base model, the model plus a foreign (Python-written) adapter, and the merged checkpoint
// must agree with lora-train's.
TEST_F(LoraTrainCliTest, MatchesIndependentPythonReference) {
  const std::string data = dir_.Join("d.jsonl");
  WriteDataset(data, 512, 5, 2);
  ProcessResult made = Reference({"make-adapter", "--model", model_, "--out", dir_.Join("pa"),
                                  "--rank", "4", "--alpha", "6", "--targets",
                                  "q_proj,k_proj,o_proj,down_proj,lm_head", "--rslora"});
  ASSERT_EQ(made.exit_code, 0) << made.err;

  ProcessResult ref_base =
      Reference({"loss", "--model", model_, "--dataset", data, "--seq-len", "16"});
  ProcessResult ours_base =
      Train({"eval", "--model", model_, "--dataset", data, "--seq-len", "16", "--json"});
  ASSERT_EQ(ref_base.exit_code, 0) << ref_base.err;
  ASSERT_EQ(ours_base.exit_code, 0) << ours_base.err;
  EXPECT_NEAR(JsonLoss(ours_base) / JsonLoss(ref_base), 1.0, 1e-5);

  ProcessResult ref_lora = Reference({"loss", "--model", model_, "--adapter", dir_.Join("pa"),
                                      "--dataset", data, "--seq-len", "16"});
  ProcessResult ours_lora = Train({"eval", "--model", model_, "--adapter", dir_.Join("pa"),
                                   "--dataset", data, "--seq-len", "16", "--json"});
  ASSERT_EQ(ref_lora.exit_code, 0) << ref_lora.err;
  ASSERT_EQ(ours_lora.exit_code, 0) << ours_lora.err;
  EXPECT_NEAR(JsonLoss(ours_lora) / JsonLoss(ref_lora), 1.0, 1e-5);
  EXPECT_GT(std::abs(JsonLoss(ref_lora) - JsonLoss(ref_base)), 1e-3)
      << "the adapter should change the loss";

  ProcessResult merged = Train(
      {"merge", "--model", model_, "--adapter", dir_.Join("pa"), "--out", dir_.Join("merged")});
  ASSERT_EQ(merged.exit_code, 0) << merged.err;
  ProcessResult ref_merged =
      Reference({"loss", "--model", dir_.Join("merged"), "--dataset", data, "--seq-len", "16"});
  ASSERT_EQ(ref_merged.exit_code, 0) << ref_merged.err;
  EXPECT_NEAR(JsonLoss(ref_merged) / JsonLoss(ref_lora), 1.0, 1e-5);
}

TEST_F(LoraTrainCliTest, MergeKeepsBaseDtypeAndShards) {
  ProcessResult init =
      Train({"init-model", "--flavor", "tiny", "--dtype", "bfloat16", "--out", dir_.Join("bf16")});
  ASSERT_EQ(init.exit_code, 0) << init.err;
  ASSERT_EQ(Train({"convert", "--model", dir_.Join("bf16"), "--out", dir_.Join("a")}).exit_code, 0);
  ProcessResult merged = Train({"merge", "--model", dir_.Join("bf16"), "--adapter", dir_.Join("a"),
                                "--out", dir_.Join("m"), "--max-shard-gb", "0.0001"});
  ASSERT_EQ(merged.exit_code, 0) << merged.err;
  std::ifstream config(dir_.Join("m/config.json"));
  EXPECT_EQ(nlohmann::json::parse(config)["torch_dtype"], "bfloat16");
  EXPECT_TRUE(std::filesystem::exists(dir_.Join("m/model.safetensors.index.json")));
}

TEST_F(LoraTrainCliTest, ErrorsAreClearAndExitNonZero) {
  struct Case {
    std::vector<std::string> args;
    int code;
    const char* phrase;
  };
  std::vector<Case> cases = {
      {{"convert", "--model", model_, "--out", dir_.Join("x"), "--rank", "0"},
       1,
       "lora.rank: must be > 0"},
      {{"convert", "--model", model_, "--out", dir_.Join("x"), "--alpha", "-1"},
       1,
       "lora.alpha: must be > 0"},
      {{"convert", "--model", model_, "--out", dir_.Join("x"), "--dropout", "1.5"},
       1,
       "lora.dropout"},
      {{"convert", "--model", model_, "--out", dir_.Join("x"), "--target-modules", "wq,wk"},
       1,
       "matches no module"},
      {{"convert", "--model", dir_.Join("missing"), "--out", dir_.Join("x")},
       1,
       "neither a checkpoint directory nor a flavor"},
      {{"convert", "--model", model_, "--out", dir_.Join("x"), "--init", "xavier"}, 1, "--init"},
      {{"convert", "--model", model_}, 2, "--out is required"},
      {{"frobnicate"}, 2, "frobnicate"},
      {{"merge", "--model", model_, "--adapter", dir_.Join("none"), "--out", dir_.Join("y")},
       1,
       "adapter directory does not exist"},
      {{"eval", "--model", model_, "--dataset", dir_.Join("none.jsonl")},
       1,
       "cannot open dataset file"},
      {{"init-model", "--flavor", "gigantic", "--out", dir_.Join("z")}, 1, "unknown model flavor"},
      {{"init-model", "--out", dir_.Join("z"), "--dtype", "int8"}, 1, "--dtype"},
  };
  for (const Case& c : cases) {
    ProcessResult r = Train(c.args);
    EXPECT_EQ(r.exit_code, c.code) << c.args[0] << " " << c.phrase << "\n" << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.phrase));
  }
  std::ofstream(dir_.Join("bad.jsonl")) << "{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, \"x\"]}\n";
  ProcessResult bad = Train({"eval", "--model", model_, "--dataset", dir_.Join("bad.jsonl")});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr("bad.jsonl:2: input_ids"));
}

TEST_F(LoraTrainCliTest, CorruptCheckpointIsAnErrorNotACrash) {
  const std::string weights = model_ + "/model.safetensors";
  {
    std::fstream f(weights, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0);
    const char huge[8] = {'\xff', '\xff', '\xff', '\xff', 0, 0, 0, 0};
    f.write(huge, 8);
  }
  ProcessResult r = Train({"convert", "--model", model_, "--out", dir_.Join("x")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("model.safetensors: invalid safetensors file: header length"));
}

TEST_F(LoraTrainCliTest, HelpForEveryCommand) {
  for (const char* cmd : {"init-model", "convert", "merge"}) {
    ProcessResult r = Train({cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd;
    EXPECT_THAT(r.out, HasSubstr(std::string("lora-train ") + cmd + " [OPTIONS]")) << cmd;
    EXPECT_THAT(r.out, HasSubstr("--out")) << cmd;
  }
}

}  // namespace
}  // namespace lora
