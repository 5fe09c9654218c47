// lora-train init-model: a randomly initialized base model as a Hugging Face checkpoint.
#include <iostream>
#include <memory>

#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "worker/engine/cli/cli_common.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/model/tensor_io.h"

namespace lora {
namespace {

struct InitModelOptions {
  std::string flavor = "debugmodel";
  uint64_t seed = 0;
  std::string out;
  std::string dtype = "float32";
  double max_shard_gb = 5.0;
};

int RunInitModel(const InitModelOptions& o) {
  ConfigureThreads();
  Stopwatch clock;
  auto config = LlamaConfig::FromFlavor(o.flavor);
  if (!config.ok()) return ReportError("init-model", config.status());
  auto dtype = ParseFloatDtype(o.dtype);
  if (!dtype.ok())
    return ReportError("init-model", absl::InvalidArgumentError(
                                         absl::StrCat("--dtype: ", dtype.status().message())));
  LlamaForCausalLM model(*config, *dtype);
  InitializeWeights(*model, o.seed);
  double init_s = clock.Lap();
  SaveOptions save;
  save.dtype = *dtype;
  save.max_shard_bytes = static_cast<uint64_t>(o.max_shard_gb * 1e9);
  absl::Status s = SaveHfModelAtomically(*model, o.out, save);
  if (!s.ok()) return ReportError("init-model", s);
  std::cout << absl::StrFormat(
      "wrote %s: flavor %s, %d parameters, %s, seed %d (init %.2fs, save %.2fs, peak RSS %s)\n",
      o.out, o.flavor, config->NumParameters(), FloatDtypeName(*dtype), o.seed, init_s, clock.Lap(),
      HumanBytes(PeakRssBytes()));
  return kExitOk;
}

}  // namespace

void AddInitModelCommand(CLI::App& app, CommandRunner* runner) {
  auto o = std::make_shared<InitModelOptions>();
  CLI::App* cmd = app.add_subcommand(
      "init-model", "Write a randomly initialized base model as a Hugging Face checkpoint");
  cmd->add_option("--flavor", o->flavor, "Model shape: tiny, debugmodel, llama3.2-1b, llama3.1-8b")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Initialization seed")->capture_default_str();
  cmd->add_option("--out", o->out, "Output directory")->required();
  cmd->add_option("--dtype", o->dtype, "Stored dtype: float32, bfloat16, float16")
      ->capture_default_str();
  cmd->add_option("--max-shard-gb", o->max_shard_gb, "Shard the weights past this many GB")
      ->capture_default_str();
  cmd->callback([o, runner] { *runner = [o] { return RunInitModel(*o); }; });
}

}  // namespace lora
