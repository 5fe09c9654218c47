#include "worker/engine/train/model_setup.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/model/tensor_io.h"

namespace lora {

absl::StatusOr<LoraConfig> LoraConfigFromSpec(const lora::v1::LoraSection& s) {
  LoraConfig c;
  c.rank = s.rank();
  c.alpha = s.alpha();
  c.dropout = s.dropout();
  c.use_rslora = s.use_rslora();
  c.use_dora = s.use_dora();
  c.init = s.init() == "gaussian" ? LoraInit::kGaussian : LoraInit::kKaiming;
  c.seed = s.init_seed();
  if (!s.target_modules_regex().empty()) {
    c.target_modules = ModuleSelector::Regex(s.target_modules_regex());
  } else {
    c.target_modules = ModuleSelector::List({s.target_modules().begin(), s.target_modules().end()});
  }
  if (!s.exclude_modules_regex().empty()) {
    c.exclude_modules = ModuleSelector::Regex(s.exclude_modules_regex());
  } else if (!s.exclude_modules().empty()) {
    c.exclude_modules =
        ModuleSelector::List({s.exclude_modules().begin(), s.exclude_modules().end()});
  }
  // Proto maps have no order; patterns apply in sorted key order (documented).
  std::map<std::string, int32_t> ranks(s.rank_pattern().begin(), s.rank_pattern().end());
  for (const auto& [k, v] : ranks) c.rank_pattern.emplace_back(k, v);
  std::map<std::string, double> alphas(s.alpha_pattern().begin(), s.alpha_pattern().end());
  for (const auto& [k, v] : alphas) c.alpha_pattern.emplace_back(k, v);
  LORA_RETURN_IF_ERROR(ValidateLoraConfig(c));
  return c;
}

absl::StatusOr<torch::Dtype> BaseDtype(const lora::v1::JobSpec& spec) {
  if (!spec.model().dtype().empty()) {
    auto d = ParseFloatDtype(spec.model().dtype());
    if (!d.ok())
      return absl::InvalidArgumentError(absl::StrCat("model.dtype: ", d.status().message()));
    return *d;
  }
  const std::string& mp = spec.training().mixed_precision();
  if (mp == "bf16") return torch::kBFloat16;
  if (mp == "fp16") return torch::kFloat16;
  return torch::kFloat32;
}

absl::StatusOr<PreparedModel> PrepareModel(const lora::v1::JobSpec& spec) {
  PreparedModel out;
  LORA_ASSIGN_OR_RETURN(out.base_dtype, BaseDtype(spec));
  LORA_ASSIGN_OR_RETURN(out.lora, LoraConfigFromSpec(spec.lora()));
  if (!spec.model().path().empty()) {
    auto loaded = LoadHfModel(spec.model().path(), out.base_dtype);
    if (!loaded.ok()) {
      return absl::Status(loaded.status().code(),
                          absl::StrCat("model.path: ", loaded.status().message()));
    }
    out.model = *loaded;
    out.base_source = BaseModelId(spec.model().path());
  } else {
    LORA_ASSIGN_OR_RETURN(LlamaConfig config, LlamaConfig::FromFlavor(spec.model().flavor()));
    out.model = LlamaForCausalLM(config, out.base_dtype);
    InitializeWeights(*out.model, spec.model().init_seed());
    out.base_source = spec.model().flavor();
  }
  if (!spec.lora().adapter().empty()) {
    auto imported = ImportPeftAdapter(*out.model, spec.lora().adapter());
    if (!imported.ok()) {
      return absl::Status(imported.status().code(),
                          absl::StrCat("lora.adapter: ", imported.status().message()));
    }
    out.report = imported->report;
    out.lora = imported->config.lora;
  } else {
    LORA_ASSIGN_OR_RETURN(out.report, ConvertToLora(*out.model, out.lora));
  }
  return out;
}

}  // namespace lora
