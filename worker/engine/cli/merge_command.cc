// lora-train merge: base model + PEFT adapter -> a plain Hugging Face checkpoint.
#include <filesystem>
#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "worker/engine/cli/cli_common.h"
#include "worker/engine/lora/converter.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/model/tensor_io.h"

namespace lora {
namespace {

struct MergeOptions {
  std::string model;
  std::string adapter;
  std::string out;
  std::string dtype;  // default: the base checkpoint's torch_dtype
  uint64_t model_seed = 0;
  double max_shard_gb = 5.0;
};

int RunMerge(const MergeOptions& o) {
  ConfigureThreads();
  Stopwatch clock;
  std::string dtype_name = o.dtype;
  if (dtype_name.empty()) {
    auto config = ReadHfConfig(o.model);
    dtype_name = config.ok() ? config->torch_dtype : "float32";
  }
  auto dtype = ParseFloatDtype(dtype_name);
  if (!dtype.ok())
    return ReportError(
        "merge", absl::InvalidArgumentError(absl::StrCat("--dtype: ", dtype.status().message())));
  auto loaded = LoadModelOrFlavor(o.model, *dtype, o.model_seed);
  if (!loaded.ok()) return ReportError("merge", loaded.status());
  auto imported = ImportPeftAdapter(*loaded->model, o.adapter);
  if (!imported.ok()) return ReportError("merge", imported.status());
  MergeAdapters(*loaded->model);
  SaveOptions save;
  save.dtype = *dtype;
  save.max_shard_bytes = static_cast<uint64_t>(o.max_shard_gb * 1e9);
  if (std::filesystem::is_directory(o.model)) save.base_dir = o.model;
  absl::Status s = SaveHfModelAtomically(*loaded->model, o.out, save);
  if (!s.ok()) return ReportError("merge", s);
  std::cout << absl::StrFormat("merged %d adapted modules into %s (%s) in %.2fs; peak RSS %s\n",
                               imported->report.modules.size(), o.out, FloatDtypeName(*dtype),
                               clock.Seconds(), HumanBytes(PeakRssBytes()));
  return kExitOk;
}

}  // namespace

void AddMergeCommand(CLI::App& app, CommandRunner* runner) {
  auto o = std::make_shared<MergeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "merge", "Merge a PEFT adapter into its base model and write a plain HF checkpoint");
  cmd->add_option("--model", o->model,
                  "Base model: Hugging Face checkpoint directory or flavor name")
      ->required();
  cmd->add_option("--adapter", o->adapter, "PEFT adapter directory")->required();
  cmd->add_option("--out", o->out, "Output checkpoint directory")->required();
  cmd->add_option("--dtype", o->dtype, "Output dtype (default: the base checkpoint's torch_dtype)");
  cmd->add_option("--model-seed", o->model_seed, "Base weight seed when --model is a flavor")
      ->capture_default_str();
  cmd->add_option("--max-shard-gb", o->max_shard_gb, "Shard the weights past this many GB")
      ->capture_default_str();
  cmd->callback([o, runner] { *runner = [o] { return RunMerge(*o); }; });
}

}  // namespace lora
