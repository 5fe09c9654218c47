// transformers and PEFT as the judges: tiny checkpoints written by transformers'
// save_pretrained (tests/python/hf_families.py), read by lora-train, logits and losses compared.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/events_file.h"
#include "tests/integration/subprocess.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using testing::ProcessResult;
using testing::RunProcess;

ProcessResult Train(std::vector<std::string> args) {
  args.insert(args.begin(), testing::BinaryPath("worker/lora-train"));
  return RunProcess(args, 240);
}

ProcessResult Families(std::vector<std::string> args) {
  args.insert(args.begin(), testing::SourcePath("tests/python/hf_families.py"));
  args.insert(args.begin(), LORA_PYTHON);
  return RunProcess(args, 300, {"HF_HUB_OFFLINE=1", "TOKENIZERS_PARALLELISM=false"});
}

// The last line of `out` that is a JSON object (null when none is).
nlohmann::json LastJsonLine(const std::string& out) {
  std::istringstream lines(out);
  nlohmann::json last;
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] != '{') continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object()) last = std::move(j);
  }
  return last;
}

// The families, written by transformers at build time (target hf_families_data).
std::string FamiliesDir() { return testing::BinaryPath("tests/hf_families"); }

class HfFamiliesTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string Family() const { return FamiliesDir() + "/" + GetParam(); }
  nlohmann::json Reference() const {
    std::ifstream in(Family() + "/reference.json");
    return nlohmann::json::parse(in);
  }
  // lora-train eval over the family's data; the logits land in `dump` when given.
  double Eval(const std::string& model, const std::vector<std::string>& extra,
              const std::string& dump = "") {
    std::vector<std::string> args = {
        "eval",   "--model",   model, "--dataset",    Family() + "/data.jsonl",
        "--json", "--seq-len", "64",  "--batch-size", "2"};
    args.insert(args.end(), extra.begin(), extra.end());
    if (!dump.empty()) {
      args.push_back("--dump-logits");
      args.push_back(dump);
    }
    ProcessResult r = Train(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    nlohmann::json j = LastJsonLine(r.out);
    return j.is_object() && j.contains("loss") ? j["loss"].get<double>() : -1.0;
  }
  double MaxLogitDiff(const std::string& dump) {
    ProcessResult r = Families({"compare", Family(), dump});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    nlohmann::json j = LastJsonLine(r.out);
    return j.is_object() && j.contains("max_abs_logit_diff") ? j["max_abs_logit_diff"].get<double>()
                                                             : 1e9;
  }

  testing::TempDir dir_;
};

// fp32: within 1e-4 of transformers on every logit, on the CPU's fused kernels and on the
// portable (SDPA) path a GPU runs.
TEST_P(HfFamiliesTest, LogitsAndLossEqualTransformersInFloat32) {
  const double ref = Reference()["loss_fp32"].get<double>();
  for (const std::vector<std::string>& kernels :
       {std::vector<std::string>{}, std::vector<std::string>{"--portable-kernels"}}) {
    SCOPED_TRACE(kernels.empty() ? "fused kernels" : "portable kernels");
    const std::string dump = dir_.Join("ours.safetensors");
    EXPECT_NEAR(Eval(Family(), kernels, dump), ref, 1e-4);
    EXPECT_LE(MaxLogitDiff(dump), 1e-4);
  }
}

// bf16 (weights and activations; transformers in bf16 too): the stated tolerance is 1e-2 on
// the mean loss (measured: at most 4e-3 on these models).
TEST_P(HfFamiliesTest, LossMatchesTransformersInBfloat16) {
  EXPECT_NEAR(Eval(Family(), {"--dtype", "bfloat16"}), Reference()["loss_bf16"].get<double>(),
              1e-2);
}

INSTANTIATE_TEST_SUITE_P(Families, HfFamiliesTest,
                         ::testing::Values("llama3", "llama3_tied", "qwen2", "qwen2_sliding",
                                           "qwen3", "mistral"));

// The window is real: the same Mistral weights without it give different logits (so the
// equality above could not hold if the window were ignored).
TEST(HfFamilies, IgnoringTheSlidingWindowWouldChangeTheLogits) {
  testing::TempDir dir;
  const std::string mistral = FamiliesDir() + "/mistral";
  const std::string copy = dir.path();
  for (const char* f : {"model.safetensors", "generation_config.json"}) {
    std::filesystem::copy_file(mistral + "/" + f, copy + "/" + f,
                               std::filesystem::copy_options::overwrite_existing);
  }
  std::ifstream in(mistral + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["sliding_window"] = nullptr;
  std::ofstream(copy + "/config.json") << config.dump(2);
  ProcessResult r = Train({"eval", "--model", copy, "--dataset", mistral + "/data.jsonl", "--json",
                           "--seq-len", "64", "--dump-logits", copy + "/ours.safetensors"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ProcessResult diff = Families({"compare", mistral, copy + "/ours.safetensors"});
  ASSERT_EQ(diff.exit_code, 0) << diff.out << diff.err;
  EXPECT_GT(LastJsonLine(diff.out)["max_abs_logit_diff"].get<double>(), 1e-2);
}

ProcessResult Judge(std::vector<std::string> args) {
  args.insert(args.begin(), testing::SourcePath("tests/python/peft_judge.py"));
  args.insert(args.begin(), LORA_PYTHON);
  return RunProcess(args, 300, {"HF_HUB_OFFLINE=1"});
}

double JudgeNumber(const ProcessResult& r, const char* key) {
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json j = LastJsonLine(r.out);
  return j.is_object() && j.contains(key) ? j[key].get<double>() : 1e9;
}

double LoraTrainLoss(const std::vector<std::string>& args) {
  std::vector<std::string> all = {"eval", "--json"};
  all.insert(all.end(), args.begin(), args.end());
  ProcessResult r = Train(all);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = LastJsonLine(r.out);
  return j.is_object() && j.contains("loss") ? j["loss"].get<double>() : -1.0;
}

// Adapters PEFT made (get_peft_model, non-zero factors) give lora-train the loss PEFT gives.
class PeftImportTest : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(PeftImportTest, PeftAdapterGivesTheLossPeftGives) {
  const auto& [family, kind] = GetParam();
  const std::string base = FamiliesDir() + "/" + family, data = base + "/data.jsonl";
  testing::TempDir dir;
  const std::string adapter = dir.Join("adapter");
  ASSERT_EQ(Judge({"make-adapter", base, adapter, kind}).exit_code, 0);
  const double peft = JudgeNumber(Judge({"loss", base, data, "--adapter", adapter}), "loss");
  const double base_loss = JudgeNumber(Judge({"loss", base, data}), "loss");
  EXPECT_GT(std::abs(peft - base_loss), 1e-3) << "the adapter must change the output";
  EXPECT_NEAR(LoraTrainLoss({"--model", base, "--adapter", adapter, "--dataset", data}), peft,
              1e-5);
}

INSTANTIATE_TEST_SUITE_P(Kinds, PeftImportTest,
                         ::testing::Combine(::testing::Values("qwen2", "llama3_tied"),
                                            ::testing::Values("patterns", "rslora", "regex",
                                                              "layers", "dora")));

TEST(PeftImport, AdaptersThatNeedAModifiedBaseAreRefusedNamingTheField) {
  const std::string base = FamiliesDir() + "/llama3";
  testing::TempDir dir;
  ASSERT_EQ(Judge({"make-adapter", base, dir.Join("pissa"), "pissa"}).exit_code, 0);
  ProcessResult r = Train(
      {"eval", "--model", base, "--adapter", dir.Join("pissa"), "--dataset", base + "/data.jsonl"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, ::testing::HasSubstr("init_lora_weights: \"pissa\" adapters need the base"));
}

// A lora-train run on a transformers checkpoint: PEFT loads the adapter and scores it as
// lora-train does; the merged export loads alone in transformers, equals PEFT's
// merge_and_unload(), names the base by its id and carries the base's tokenizer files.
TEST(PeftExport, TrainedAdapterAndMergedModelAreWhatPeftAndTransformersMake) {
  testing::TempDir dir;
  const std::string base = dir.Join("Qwen2-tiny");
  std::filesystem::copy(FamiliesDir() + "/qwen2", base);
  const std::string data = base + "/data.jsonl";
  // The base's tokenizer files must travel with the merged model verbatim (the data is
  // input_ids, so the run itself needs no tokenizer).
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
    std::filesystem::copy_file(testing::BinaryPath("tests/chat_data/qwen2/") + f, base + "/" + f);
  }
  std::ofstream train(dir.Join("train.jsonl"));
  for (int i = 0; i < 6; ++i) train << testing::ReadFile(data);
  train.close();
  std::ofstream(dir.Join("job.toml"))
      << "[model]\npath = \"" << base << "\"\n"
      << "[lora]\nrank = 4\nalpha = 8\n"
      << "target_modules = [\"q_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"down_proj\"]\n"
      << "[optimizer]\nlr = 0.05\n"
      << "[training]\nsteps = 4\nseq_len = 16\nlocal_batch_size = 2\nmixed_precision = \"none\"\n"
      << "[dataset]\npath = \"" << dir.Join("train.jsonl") << "\"\nvalidation_fraction = 0.0\n"
      << "[checkpoint]\ninterval = 0\nexport = [\"adapter\", \"merged\"]\n";
  ProcessResult run = Train({"run", "--job", dir.Join("job.toml"), "--out", dir.Join("out")});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const std::string adapter = dir.Join("out/final/adapter"), merged = dir.Join("out/final/merged");

  ProcessResult peft =
      Judge({"loss", base, data, "--adapter", adapter, "--merge-out", dir.Join("peft_merged")});
  const double peft_loss = JudgeNumber(peft, "loss");
  EXPECT_NEAR(LoraTrainLoss({"--model", base, "--adapter", adapter, "--dataset", data}), peft_loss,
              1e-5);
  EXPECT_LT(peft_loss, JudgeNumber(Judge({"loss", base, data}), "loss") - 1e-2)
      << "four steps of training must lower the loss";

  ProcessResult loaded = Judge({"load-merged", merged, data});
  EXPECT_NEAR(JudgeNumber(loaded, "loss"), peft_loss, 1e-5);
  EXPECT_LE(JudgeNumber(Judge({"compare-models", merged, dir.Join("peft_merged")}),
                        "max_abs_weight_diff"),
            1e-6);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_TRUE(std::filesystem::exists(merged + "/" + f)) << f;
  }
  EXPECT_EQ(testing::ReadFile(merged + "/tokenizer_config.json"),
            testing::ReadFile(base + "/tokenizer_config.json"));
  auto config = nlohmann::json::parse(testing::ReadFile(adapter + "/adapter_config.json"));
  EXPECT_EQ(config["base_model_name_or_path"], "Qwen2-tiny");
}

// A user's run: model.path is a checkpoint directory holding tokenizer.json and
// tokenizer_config.json with a chat template; the data is chat JSONL. The tokenizer comes from
// the directory, the format from the first line, and the run learns.
TEST(ChatRun, ACheckpointWithItsTokenizerTrainsOnChatData) {
  testing::TempDir dir;
  const std::string model = dir.Join("model");
  std::filesystem::copy(FamiliesDir() + "/llama3_chat", model);
  const std::string chat = testing::BinaryPath("tests/chat_data/llama3");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    std::filesystem::copy_file(chat + "/" + f, model + "/" + f);
  std::ofstream data(dir.Join("chat.jsonl"));
  for (int i = 0; i < 8; ++i) data << testing::ReadFile(chat + "/data.jsonl");
  data.close();
  std::ofstream(dir.Join("job.toml"))
      << "[model]\npath = \"" << model << "\"\n[lora]\nrank = 4\n[optimizer]\nlr = 0.01\n"
      << "[training]\nsteps = 6\nseq_len = 64\nlocal_batch_size = 2\n"
      << "[dataset]\npath = \"" << dir.Join("chat.jsonl") << "\"\nvalidation_fraction = 0.1\n"
      << "validation_interval = 0\n[checkpoint]\ninterval = 0\n";
  ProcessResult r = Train({"run", "--job", dir.Join("job.toml"), "--out", dir.Join("out")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto summary = testing::ReadSummary(dir.Join("out/summary.json"));
  EXPECT_LT(summary.final_eval_loss(), summary.initial_eval_loss());
}

// The same tokenizer with a model whose embeddings are smaller: refused before step 1, naming
// both sizes (the byte tokenizer's silent garbage, or an index error mid-run, are the failures).
TEST(ChatRun, ATokenizerLargerThanTheEmbeddingsIsRefusedBeforeStepOne) {
  testing::TempDir dir;
  const std::string model = dir.Join("model");
  std::filesystem::copy(FamiliesDir() + "/llama3", model);  // vocab_size 384
  const std::string chat = testing::BinaryPath("tests/chat_data/llama3");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    std::filesystem::copy_file(chat + "/" + f, model + "/" + f);
  std::ofstream(dir.Join("job.toml"))
      << "[model]\npath = \"" << model << "\"\n[training]\nsteps = 2\nseq_len = 32\n"
      << "[dataset]\npath = \"" << chat << "/data.jsonl\"\n";
  ProcessResult r = Train({"run", "--job", dir.Join("job.toml"), "--out", dir.Join("out")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, ::testing::HasSubstr("model.tokenizer: the tokenizer has"));
  EXPECT_THAT(r.err, ::testing::HasSubstr("the model's embeddings have only 384 rows"));
  EXPECT_EQ(testing::ReadFile(dir.Join("out/events.jsonl")).find("\"step\""), std::string::npos);
}

// DoRA against PEFT's DoRA: a PEFT DoRA adapter merges into exactly PEFT's merge_and_unload();
// the first training step from it moves every weight (A, B and the magnitudes) the way PEFT's
// gradient points; a DoRA run from scratch exports an adapter PEFT scores as lora-train does.
TEST(Dora, MergeGradientsAndExportsAgreeWithPeft) {
  const std::string base = FamiliesDir() + "/qwen2", data = base + "/data.jsonl";
  testing::TempDir dir;
  const std::string start = dir.Join("start");
  ASSERT_EQ(Judge({"make-adapter", base, start, "dora"}).exit_code, 0);

  ProcessResult peft_merge =
      Judge({"loss", base, data, "--adapter", start, "--merge-out", dir.Join("peft_merged")});
  ASSERT_EQ(peft_merge.exit_code, 0) << peft_merge.err;
  ProcessResult merge =
      Train({"merge", "--model", base, "--adapter", start, "--out", dir.Join("merged")});
  ASSERT_EQ(merge.exit_code, 0) << merge.err;
  EXPECT_LE(JudgeNumber(Judge({"compare-models", dir.Join("merged"), dir.Join("peft_merged")}),
                        "max_abs_weight_diff"),
            1e-6);

  // One full-batch AdamW step (no warmup, no clipping): each weight moves by -lr * sign(grad).
  std::ofstream(dir.Join("step.toml"))
      << "[model]\npath = \"" << base << "\"\n[lora]\nadapter = \"" << start << "\"\n"
      << "[optimizer]\nlr = 0.001\n[lr_scheduler]\nwarmup_steps = 0\ndecay_type = \"constant\"\n"
      << "[training]\nsteps = 1\nseq_len = 23\nlocal_batch_size = 3\n"
      << "mixed_precision = \"none\"\nmax_norm = 0\n"
      << "[dataset]\npath = \"" << data << "\"\npack = false\nvalidation_fraction = 0.0\n"
      << "[checkpoint]\ninterval = 0\n";
  ProcessResult step = Train({"run", "--job", dir.Join("step.toml"), "--out", dir.Join("step")});
  ASSERT_EQ(step.exit_code, 0) << step.err;
  ProcessResult signs =
      Judge({"step-signs", base, start, dir.Join("step/final/adapter"), data, "0.001"});
  EXPECT_EQ(JudgeNumber(signs, "agree"), 1.0) << signs.out << signs.err;
  EXPECT_GT(LastJsonLine(signs.out)["by_kind"]["lora_magnitude_vector"].get<int>(), 0);

  std::ofstream train(dir.Join("train.jsonl"));
  for (int i = 0; i < 6; ++i) train << testing::ReadFile(data);
  train.close();
  std::ofstream(dir.Join("scratch.toml"))
      << "[model]\npath = \"" << base << "\"\n[lora]\nrank = 4\nuse_dora = true\n"
      << "[optimizer]\nlr = 0.01\n[training]\nsteps = 6\nseq_len = 16\nlocal_batch_size = 2\n"
      << "mixed_precision = \"none\"\n"
      << "[dataset]\npath = \"" << dir.Join("train.jsonl") << "\"\nvalidation_fraction = 0.0\n"
      << "[checkpoint]\ninterval = 0\n";
  ProcessResult scratch =
      Train({"run", "--job", dir.Join("scratch.toml"), "--out", dir.Join("scratch")});
  ASSERT_EQ(scratch.exit_code, 0) << scratch.err;
  const std::string trained = dir.Join("scratch/final/adapter");
  auto config = nlohmann::json::parse(testing::ReadFile(trained + "/adapter_config.json"));
  EXPECT_EQ(config["use_dora"], true);
  const double peft = JudgeNumber(Judge({"loss", base, data, "--adapter", trained}), "loss");
  EXPECT_NEAR(LoraTrainLoss({"--model", base, "--adapter", trained, "--dataset", data}), peft,
              1e-5);
  EXPECT_LT(peft, JudgeNumber(Judge({"loss", base, data}), "loss") - 1e-2);
}

}  // namespace
}  // namespace lora
