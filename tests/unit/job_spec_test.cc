#include <filesystem>

#include "common/job_spec/job_spec.h"

#include "absl/strings/str_cat.h"

#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace lora {
namespace {

using lora::v1::JobSpec;
using ::testing::HasSubstr;

std::string ConfigPath() {
  return std::string(LORA_SOURCE_DIR) + "/configs/llama3_debugmodel_lora.toml";
}

JobSpec Defaulted(const std::string& toml) {
  auto parsed = ParseJobSpecToml(toml, "t.toml");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  JobSpec spec = parsed.ok() ? parsed->spec : JobSpec();
  ApplyJobSpecDefaults(&spec);
  return spec;
}

std::string Violations(const JobSpec& spec) { return std::string(ValidateJobSpec(spec).message()); }

TEST(JobSpecTest, ShippedConfigParsesAndValidates) {
  auto parsed = ReadJobSpecFile(ConfigPath());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  JobSpec spec = parsed->spec;
  ApplyJobSpecDefaults(&spec);
  EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
  EXPECT_EQ(spec.job().kind(), lora::v1::JOB_KIND_TRAIN);
  EXPECT_EQ(spec.model().flavor(), "debugmodel");
  EXPECT_EQ(spec.lora().target_modules_size(), 8);  // the 7 projections and lm_head
  EXPECT_EQ(spec.dataset().name(), "synthetic-arith");
  EXPECT_EQ(spec.parallelism().data_parallel_shard_degree(), -1);
  EXPECT_GT(parsed->lines.at("training.steps"), 1);
}

TEST(JobSpecTest, EveryShippedConfigValidates) {
  int seen = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(LORA_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".toml") continue;
    ++seen;
    auto parsed = ReadJobSpecFile(entry.path().string());
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    JobSpec spec = parsed->spec;
    ApplyJobSpecDefaults(&spec);
    EXPECT_TRUE(ValidateJobSpec(spec).ok()) << entry.path() << ": " << ValidateJobSpec(spec);
  }
  EXPECT_GE(seen, 2);
}

TEST(JobSpecTest, TomlRoundTrip) {
  auto parsed = ReadJobSpecFile(ConfigPath());
  ASSERT_TRUE(parsed.ok());
  JobSpec spec = parsed->spec;
  spec.mutable_lora()->mutable_rank_pattern()->insert({"down_proj", 16});
  spec.mutable_lora()->mutable_alpha_pattern()->insert({"layers\\.0\\..*", 2.5});
  spec.mutable_job()->mutable_labels()->insert({"team", "search \"quoted\""});
  ApplyJobSpecDefaults(&spec);
  std::string toml = JobSpecToToml(spec);
  auto again = ParseJobSpecToml(toml, "roundtrip.toml");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << toml;
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(spec, again->spec)) << toml;
}

TEST(JobSpecTest, DefaultsFillEverything) {
  JobSpec spec = Defaulted("");
  EXPECT_EQ(spec.lora().rank(), 8);
  EXPECT_EQ(spec.lora().alpha(), 16);
  EXPECT_EQ(spec.optimizer().lr(), 8e-4);
  EXPECT_EQ(spec.training().steps(), 10);
  EXPECT_EQ(spec.training().seed(), 42u);
  EXPECT_TRUE(spec.dataset().pack());
  EXPECT_EQ(spec.checkpoint().export__size(), 1);
  EXPECT_EQ(spec.resources().world_size(), 1);
  // Explicit zero survives where the default is not zero.
  JobSpec zero = Defaulted(
      "[lr_scheduler]\nwarmup_steps = 0\n[training]\nseed = 0\n[dataset]\npack = false\n");
  EXPECT_EQ(zero.lr_scheduler().warmup_steps(), 0);
  EXPECT_EQ(zero.training().seed(), 0u);
  EXPECT_FALSE(zero.dataset().pack());
  // Only a dataset is missing from an empty train spec.
  EXPECT_EQ(Violations(spec),
            "dataset.path: set exactly one of dataset.path (a JSONL file) or dataset.name "
            "(synthetic-arith, synthetic-text)");
}

TEST(JobSpecTest, ParseErrorsNameLineAndKey) {
  struct Case {
    const char* toml;
    const char* phrase;
  };
  std::vector<Case> cases = {
      {"[training]\nsteps = 10\nstpes = 5\n", "t.toml:3: training.stpes: unknown key"},
      {"[trainig]\nsteps = 10\n", "t.toml:1: trainig: unknown section"},
      {"[training]\nsteps = \"ten\"\n",
       "t.toml:2: training.steps: expected an integer, got a string"},
      {"[lora]\nalpha = true\n", "lora.alpha: expected a number, got a boolean"},
      {"[lora]\ntarget_modules = [\"q_proj\", 3]\n", "lora.target_modules[1]: expected a string"},
      {"[job]\nkind = \"finetune\"\n", "job.kind: 'finetune' is not one of train, convert, merge"},
      {"[training]\nseq_len = 99999999999\n",
       "training.seq_len: value 99999999999 is out of range"},
      {"[training\nsteps = 1\n", "t.toml: invalid TOML"},
      {"[lora]\nrank_pattern = { down_proj = \"big\" }\n",
       "lora.rank_pattern.down_proj: expected an integer"},
  };
  for (const Case& c : cases) {
    auto parsed = ParseJobSpecToml(c.toml, "t.toml");
    ASSERT_FALSE(parsed.ok()) << c.toml;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(c.phrase));
  }
}

TEST(JobSpecTest, RegexTargetModules) {
  JobSpec spec = Defaulted(
      "[lora]\ntarget_modules = \".*\\\\.(q|v)_proj\"\n[dataset]\nname = \"synthetic-text\"\n");
  EXPECT_EQ(spec.lora().target_modules_size(), 0);
  EXPECT_EQ(spec.lora().target_modules_regex(), ".*\\.(q|v)_proj");
  EXPECT_TRUE(ValidateJobSpec(spec).ok());
  EXPECT_THAT(JobSpecToToml(spec), HasSubstr("target_modules = \".*\\\\.(q|v)_proj\""));
}

TEST(JobSpecTest, ValidationNamesEveryViolatedKey) {
  JobSpec spec = Defaulted(R"(
[lora]
rank = 0
dropout = 1.5
init = "xavier"
[optimizer]
lr = -1.0
betas = [0.9]
[training]
mixed_precision = "fp8"
activation_checkpoint = "selective"
[dataset]
name = "synthetic-arith"
validation_fraction = 1.0
[checkpoint]
export = ["adapter", "onnx"]
)");
  std::string msg = Violations(spec);
  for (const char* phrase :
       {"lora.rank: must be in [1, 4096], got 0", "lora.dropout: must be in [0, 1)",
        "lora.init: 'xavier' is not one of", "optimizer.lr: must be > 0",
        "optimizer.betas: must be [beta1, beta2]", "training.mixed_precision: 'fp8'",
        "training.activation_checkpoint: \"selective\" is not supported",
        "dataset.validation_fraction", "checkpoint.export: 'onnx'"}) {
    EXPECT_THAT(msg, HasSubstr(phrase));
  }
}

TEST(JobSpecTest, ParallelDegreesMustMultiplyToWorldSize) {
  JobSpec ok = Defaulted(
      "[dataset]\nname='synthetic-arith'\n[parallelism]\ntensor_parallel_degree = "
      "2\n[resources]\nworld_size = 4\n");
  EXPECT_TRUE(ValidateJobSpec(ok).ok()) << ValidateJobSpec(ok);
  JobSpec bad = Defaulted(
      "[dataset]\nname='synthetic-arith'\n[parallelism]\ntensor_parallel_degree = "
      "3\n[resources]\nworld_size = 4\n");
  EXPECT_THAT(
      Violations(bad),
      HasSubstr(
          "parallelism: replicate x tp x pp x cp = 3 does not divide resources.world_size = 4"));
  JobSpec explicit_bad = Defaulted(
      "[dataset]\nname='synthetic-arith'\n[parallelism]\ndata_parallel_shard_degree = "
      "2\npipeline_parallel_degree = 2\n"
      "[resources]\nworld_size = 2\n");
  EXPECT_THAT(Violations(explicit_bad),
              HasSubstr("replicate x shard x tp x pp x cp = 4 but resources.world_size = 2"));
  JobSpec tp_heads = Defaulted(
      "[dataset]\nname='synthetic-arith'\n[parallelism]\ntensor_parallel_degree = "
      "32\n[resources]\nworld_size = 32\n");
  EXPECT_THAT(Violations(tp_heads),
              HasSubstr("parallelism.tensor_parallel_degree: 32 must divide the heads (16)"));
  JobSpec cp = Defaulted(
      "[dataset]\nname='synthetic-arith'\n[training]\nseq_len = "
      "250\n[parallelism]\ncontext_parallel_degree = 4\n[resources]\nworld_size = 4\n");
  EXPECT_THAT(Violations(cp),
              HasSubstr("training.seq_len: must be a multiple of 2 x context_parallel_degree (8)"));
  JobSpec ring = Defaulted(
      "[dataset]\nname='synthetic-arith'\n[parallelism]\ncontext_parallel_degree = "
      "2\ncontext_parallel_method = 'ring'\n[resources]\nworld_size = 2\n");
  EXPECT_EQ(Violations(ring), "");
  JobSpec cp_gpu = Defaulted(
      "[dataset]\nname='synthetic-arith'\n[parallelism]\ncontext_parallel_degree = "
      "2\n[resources]\nworld_size = 2\ndevice = 'cuda'\n");
  EXPECT_THAT(Violations(cp_gpu),
              HasSubstr("parallelism.context_parallel_degree: > 1 runs on the CPU only"));
  JobSpec unknown_cp = Defaulted(
      "[dataset]\nname='synthetic-arith'\n[parallelism]\ncontext_parallel_degree = "
      "2\ncontext_parallel_method = 'ulysses'\n[resources]\nworld_size = 2\n");
  EXPECT_THAT(Violations(unknown_cp), HasSubstr("parallelism.context_parallel_method"));
  JobSpec reshard = Defaulted(
      "[dataset]\nname='synthetic-arith'\n[parallelism]\nfsdp_reshard_after_forward = "
      "'sometimes'\n");
  EXPECT_THAT(Violations(reshard), HasSubstr("parallelism.fsdp_reshard_after_forward"));
  EXPECT_EQ(
      Defaulted("[dataset]\nname='synthetic-arith'\n").parallelism().fsdp_reshard_after_forward(),
      "default");
  JobSpec timeout =
      Defaulted("[dataset]\nname='synthetic-arith'\n[resources]\ncollective_timeout_seconds = 0\n");
  EXPECT_THAT(Violations(timeout), HasSubstr("resources.collective_timeout_seconds"));
}

TEST(JobSpecTest, ValidationErrorsCarryLinesFromTheFile) {
  auto parsed =
      ParseJobSpecToml("[dataset]\nname = 'synthetic-arith'\n\n[lora]\nrank = -4\n", "job.toml");
  ASSERT_TRUE(parsed.ok());
  ApplyJobSpecDefaults(&parsed->spec);
  absl::Status s = ValidateJobSpec(parsed->spec, &*parsed, "job.toml");
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("job.toml:5: lora.rank: must be in [1, 4096], got -4"));
}

TEST(JobSpecTest, OverridesReplaceValues) {
  JobSpec spec = Defaulted("[lora]\ndropout = 0.1\ntarget_modules = \"all-linear\"\n");
  ASSERT_TRUE(ApplyOverride("training.steps=100", &spec).ok());
  ASSERT_TRUE(ApplyOverride("lora.dropout=0", &spec).ok());
  ASSERT_TRUE(ApplyOverride("training.mixed_precision=none", &spec).ok());
  ASSERT_TRUE(ApplyOverride("lora.target_modules=[\"q_proj\"]", &spec).ok());
  ASSERT_TRUE(ApplyOverride("dataset.path=data/train.jsonl", &spec).ok());
  EXPECT_EQ(spec.training().steps(), 100);
  EXPECT_EQ(spec.lora().dropout(), 0.0);
  EXPECT_EQ(spec.training().mixed_precision(), "none");
  EXPECT_EQ(spec.lora().target_modules_size(), 1);
  EXPECT_TRUE(spec.lora().target_modules_regex().empty());
  EXPECT_EQ(spec.dataset().path(), "data/train.jsonl");
  // A string field takes an unquoted value that TOML would read as something else.
  ASSERT_TRUE(ApplyOverride("parallelism.pipeline_parallel_schedule=1F1B", &spec).ok());
  EXPECT_EQ(spec.parallelism().pipeline_parallel_schedule(), "1F1B");
  ASSERT_TRUE(ApplyOverride("job.name=\"2024 run\"", &spec).ok());
  EXPECT_EQ(spec.job().name(), "2024 run");
  ASSERT_TRUE(ApplyOverride("job.name=", &spec).ok());
  EXPECT_EQ(spec.job().name(), "");
  EXPECT_THAT(std::string(ApplyOverride("training.stepz=1", &spec).message()),
              HasSubstr("training.stepz: unknown key"));
  EXPECT_THAT(std::string(ApplyOverride("steps", &spec).message()),
              HasSubstr("expected section.key=value"));
  EXPECT_THAT(std::string(ApplyOverride("training.steps=abc", &spec).message()),
              HasSubstr("expected an integer"));
}

TEST(JobSpecTest, EpochsReplaceStepsAndAValidationFileReplacesTheFraction) {
  JobSpec spec = Defaulted(
      "[training]\nepochs = 2.5\n[dataset]\npath = \"d.jsonl\"\n"
      "validation_path = \"v.jsonl\"\n");
  EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
  EXPECT_FALSE(spec.training().has_steps());
  EXPECT_EQ(spec.dataset().validation_fraction(), 0.0);
  EXPECT_EQ(spec.dataset().format(), "auto");

  JobSpec both = Defaulted("[training]\nepochs = 1\nsteps = 5\n[dataset]\npath = \"d.jsonl\"\n");
  EXPECT_THAT(Violations(both),
              HasSubstr("training.epochs: set training.steps or training.epochs"));
  JobSpec zero = Defaulted("[training]\nepochs = 0\n[dataset]\npath = \"d.jsonl\"\n");
  EXPECT_THAT(Violations(zero), HasSubstr("training.epochs: must be in (0, 1e6]"));
  JobSpec fraction = Defaulted(
      "[dataset]\npath = \"d.jsonl\"\nvalidation_path = \"v.jsonl\"\nvalidation_fraction = 0.1\n");
  EXPECT_THAT(Violations(fraction), HasSubstr("dataset.validation_fraction: must be 0 with"));
  JobSpec format = Defaulted("[dataset]\npath = \"d.jsonl\"\nformat = \"chat\"\n");
  EXPECT_THAT(Violations(format), HasSubstr("dataset.format"));
  EXPECT_TRUE(
      ValidateJobSpec(Defaulted("[dataset]\npath = \"d.jsonl\"\nformat = \"messages\"\n")).ok());
}

TEST(JobSpecTest, DoraRunsOnOneRank) {
  EXPECT_TRUE(
      ValidateJobSpec(Defaulted("[lora]\nuse_dora = true\n[dataset]\npath = \"d\"\n")).ok());
  JobSpec two = Defaulted(
      "[lora]\nuse_dora = true\n[resources]\nworld_size = 2\n"
      "[dataset]\npath = \"d\"\n");
  EXPECT_THAT(Violations(two), HasSubstr("lora.use_dora: DoRA runs on one rank"));
}

// Issue 12, finding 1: the same hostile patterns through validation (what lorad, lora-worker
// and loractl run on every spec), and a 100,000-deep TOML array (it crashed loractl).
TEST(JobSpecTest, HostilePatternsAndDeepDocumentsAreViolationsNotCrashes) {
  const std::string deep = std::string(20000, '(') + std::string(20000, ')');
  JobSpec spec = Defaulted("[dataset]\npath = \"d\"\n");
  spec.mutable_lora()->clear_target_modules();
  spec.mutable_lora()->set_target_modules_regex(deep);
  (*spec.mutable_lora()->mutable_rank_pattern())[deep] = 4;
  const std::string v = Violations(spec);
  EXPECT_THAT(v, HasSubstr("lora.target_modules: regular expression of 40000 bytes"));
  EXPECT_THAT(v, HasSubstr("lora.rank_pattern.(((("));
  EXPECT_LT(v.size(), 1000u) << "violations do not echo the patterns";

  const std::string toml = "[job]\nname = " + std::string(100000, '[') + std::string(100000, ']');
  auto parsed = ParseJobSpecToml(toml, "deep.toml");
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(parsed.status().message()),
              HasSubstr("deep.toml: nested deeper than 64 levels"));
  // Brackets in strings and comments do not count.
  auto fine = ParseJobSpecToml(
      "[job]\nname = \"" + std::string(500, '[') + "\" # " + std::string(500, '{') + "\n",
      "ok.toml");
  EXPECT_TRUE(fine.ok()) << fine.status();
}

// Issue 12, finding 6: steps = 1e11 and a 7 MB description were accepted. Every size a client
// controls has a maximum, named in the violation.
TEST(JobSpecTest, ClientControlledSizesHaveMaxima) {
  JobSpec spec = Defaulted(
      "[training]\nsteps = 100000000000\nlocal_batch_size = 1000000\n"
      "[lora]\nrank = 100000\n[dataset]\npath = \"d\"\n");
  spec.mutable_job()->set_description(std::string(7 << 20, 'x'));
  for (int i = 0; i < 100; ++i) (*spec.mutable_job()->mutable_labels())[absl::StrCat("k", i)] = "v";
  spec.mutable_dataset()->set_path(std::string(5000, 'p'));
  const std::string v = Violations(spec);
  EXPECT_THAT(v, HasSubstr("training.steps: must be in [1, 100000000], got 100000000000"));
  EXPECT_THAT(v, HasSubstr("training.local_batch_size: must be in [1, 65536]"));
  EXPECT_THAT(v, HasSubstr("lora.rank: must be in [1, 4096]"));
  EXPECT_THAT(v, HasSubstr("job.description: is 7340032 bytes; at most 16384"));
  EXPECT_THAT(v, HasSubstr("job.labels: at most 64 labels"));
  EXPECT_THAT(v, HasSubstr("dataset.path: is 5000 bytes; at most 4096"));
  EXPECT_LT(v.size(), 2000u);
}

// Issue 12, finding 6: a spec lorad accepted (8 MiB) could not be delivered to a worker
// (4 MiB). The encoded spec is capped at 1 MiB, under every channel's limit.
TEST(JobSpecTest, TheWholeSpecFitsEveryChannel) {
  JobSpec spec = Defaulted("[dataset]\npath = \"d\"\n");
  for (int i = 0; i < 1000; ++i) {
    (*spec.mutable_lora()->mutable_rank_pattern())[absl::StrCat("k", i, std::string(2000, 'x'))] =
        4;
  }
  EXPECT_THAT(Violations(spec), HasSubstr("(spec): is "));
  EXPECT_THAT(Violations(spec), HasSubstr("bytes encoded; at most 1048576"));
}

}  // namespace
}  // namespace lora
