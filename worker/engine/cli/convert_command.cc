// lora-train convert: base model -> LoRA model; writes the initial PEFT adapter and a report.
#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "worker/engine/cli/cli_common.h"
#include "worker/engine/lora/converter.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/model/tensor_io.h"

namespace lora {
namespace {

struct ConvertOptions {
  std::string model;
  std::string out;
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  std::vector<std::string> target_modules;
  std::string target_regex;
  std::vector<std::string> exclude_modules;
  std::string exclude_regex;
  std::vector<std::string> rank_pattern;   // "pattern=rank"
  std::vector<std::string> alpha_pattern;  // "pattern=alpha"
  bool rslora = false;
  std::string init = "kaiming";
  uint64_t seed = 0;
  uint64_t model_seed = 0;
  std::string dtype = "float32";
  std::string export_dtype = "float32";
  bool json = false;
};

template <typename T>
absl::StatusOr<std::vector<std::pair<std::string, T>>> ParsePatterns(
    const std::vector<std::string>& items, const std::string& flag) {
  std::vector<std::pair<std::string, T>> out;
  for (const std::string& item : items) {
    std::vector<std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    T value{};
    bool ok = kv.size() == 2 && !kv[0].empty();
    if (ok) {
      try {
        size_t used = 0;
        if constexpr (std::is_integral_v<T>)
          value = std::stoll(kv[1], &used);
        else
          value = std::stod(kv[1], &used);
        ok = used == kv[1].size();
      } catch (const std::exception&) {
        ok = false;
      }
    }
    if (!ok)
      return absl::InvalidArgumentError(absl::StrCat(flag, ": '", item, "' is not PATTERN=VALUE"));
    out.emplace_back(kv[0], value);
  }
  return out;
}

absl::StatusOr<LoraConfig> BuildLoraConfig(const ConvertOptions& o) {
  LoraConfig c;
  c.rank = o.rank;
  c.alpha = o.alpha;
  c.dropout = o.dropout;
  c.use_rslora = o.rslora;
  c.seed = o.seed;
  if (o.init == "kaiming")
    c.init = LoraInit::kKaiming;
  else if (o.init == "gaussian")
    c.init = LoraInit::kGaussian;
  else
    return absl::InvalidArgumentError(
        absl::StrCat("--init: '", o.init, "' must be kaiming or gaussian"));
  if (!o.target_regex.empty() && !o.target_modules.empty()) {
    return absl::InvalidArgumentError("--target-modules and --target-modules-regex are exclusive");
  }
  if (!o.target_regex.empty())
    c.target_modules = ModuleSelector::Regex(o.target_regex);
  else if (o.target_modules.size() == 1 && o.target_modules[0] == "all-linear")
    c.target_modules = ModuleSelector::Regex("all-linear");
  else if (!o.target_modules.empty())
    c.target_modules = ModuleSelector::List(o.target_modules);
  if (!o.exclude_regex.empty())
    c.exclude_modules = ModuleSelector::Regex(o.exclude_regex);
  else if (!o.exclude_modules.empty())
    c.exclude_modules = ModuleSelector::List(o.exclude_modules);
  auto ranks = ParsePatterns<int64_t>(o.rank_pattern, "--rank-pattern");
  if (!ranks.ok()) return ranks.status();
  c.rank_pattern = *ranks;
  auto alphas = ParsePatterns<double>(o.alpha_pattern, "--alpha-pattern");
  if (!alphas.ok()) return alphas.status();
  c.alpha_pattern = *alphas;
  absl::Status valid = ValidateLoraConfig(c);
  if (!valid.ok()) return valid;
  return c;
}

int RunConvert(const ConvertOptions& o) {
  ConfigureThreads();
  Stopwatch clock;
  auto config = BuildLoraConfig(o);
  if (!config.ok()) return ReportError("convert", config.status());
  auto dtype = ParseFloatDtype(o.dtype);
  if (!dtype.ok())
    return ReportError(
        "convert", absl::InvalidArgumentError(absl::StrCat("--dtype: ", dtype.status().message())));
  auto export_dtype = ParseFloatDtype(o.export_dtype);
  if (!export_dtype.ok()) {
    return ReportError("convert", absl::InvalidArgumentError(absl::StrCat(
                                      "--export-dtype: ", export_dtype.status().message())));
  }
  auto loaded = LoadModelOrFlavor(o.model, *dtype, o.model_seed);
  if (!loaded.ok()) return ReportError("convert", loaded.status());
  const double load_s = clock.Lap();
  auto report = ConvertToLora(*loaded->model, *config);
  if (!report.ok()) return ReportError("convert", report.status());
  const double convert_s = clock.Lap();
  PeftExportOptions export_options;
  export_options.dtype = *export_dtype;
  export_options.base_model_name_or_path = BaseModelId(loaded->source);
  absl::Status exported = ExportPeftAdapter(*loaded->model, *config, o.out, export_options);
  if (!exported.ok()) return ReportError("convert", exported);
  const double export_s = clock.Lap();

  if (o.json) {
    nlohmann::json j = report->ToJson(*export_dtype);
    j["adapter_dir"] = o.out;
    j["base_model"] = loaded->source;
    j["timing_seconds"] = {
        {"load", load_s}, {"convert", convert_s}, {"export", export_s}, {"total", clock.Seconds()}};
    j["peak_rss_bytes"] = PeakRssBytes();
    std::cout << j.dump(2) << std::endl;
  } else {
    std::cout << report->ToText(*export_dtype);
    std::cout << absl::StrFormat("adapter written to %s\n", o.out);
    std::cout << absl::StrFormat("time: load %.3fs, convert %.3fs, export %.3fs; peak RSS %s\n",
                                 load_s, convert_s, export_s, HumanBytes(PeakRssBytes()));
  }
  return kExitOk;
}

}  // namespace

void AddConvertCommand(CLI::App& app, CommandRunner* runner) {
  auto o = std::make_shared<ConvertOptions>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "Convert a base model to LoRA and write the initial PEFT adapter");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint directory or flavor name")
      ->required();
  cmd->add_option("--out", o->out, "Adapter output directory")->required();
  cmd->add_option("--rank", o->rank, "LoRA rank r")->capture_default_str();
  cmd->add_option("--alpha", o->alpha, "LoRA alpha (scale = alpha / r)")->capture_default_str();
  cmd->add_option("--dropout", o->dropout, "Dropout on the adapter input, in [0, 1)")
      ->capture_default_str();
  cmd->add_option("--target-modules", o->target_modules,
                  "Module names (equal or .-suffix), comma separated; 'all-linear' for every "
                  "Linear but lm_head")
      ->delimiter(',');
  cmd->add_option("--target-modules-regex", o->target_regex,
                  "Full-match regex over qualified module names");
  cmd->add_option("--exclude-modules", o->exclude_modules, "Module names to leave alone")
      ->delimiter(',');
  cmd->add_option("--exclude-modules-regex", o->exclude_regex,
                  "Full-match regex of modules to leave alone");
  cmd->add_option("--rank-pattern", o->rank_pattern, "PATTERN=RANK per-module rank (repeatable)");
  cmd->add_option("--alpha-pattern", o->alpha_pattern,
                  "PATTERN=ALPHA per-module alpha (repeatable)");
  cmd->add_flag("--rslora", o->rslora, "Scale by alpha / sqrt(r) (rank-stabilized LoRA)");
  cmd->add_option("--init", o->init, "Adapter init: kaiming (B = 0) or gaussian")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Adapter initialization seed")->capture_default_str();
  cmd->add_option("--model-seed", o->model_seed, "Base weight seed when --model is a flavor")
      ->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "Dtype to load the base model in")->capture_default_str();
  cmd->add_option("--export-dtype", o->export_dtype, "Dtype of the written adapter tensors")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "Print the report as JSON");
  cmd->callback([o, runner] { *runner = [o] { return RunConvert(*o); }; });
}

}  // namespace lora
