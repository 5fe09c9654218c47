#include "worker/engine/cli/cli_common.h"

#include <ATen/Parallel.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "worker/engine/model/hf_checkpoint.h"

namespace lora {

int ReportError(const std::string& command, const absl::Status& status) {
  std::cerr << "lora-train " << command << ": error: " << status.message() << std::endl;
  return kExitFailure;
}

void ConfigureThreads() {
  if (std::getenv("OMP_NUM_THREADS") != nullptr) return;
  unsigned n = std::thread::hardware_concurrency();
  if (n > 0) at::set_num_threads(static_cast<int>(n));
}

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) v /= 1024.0, ++u;
  return u == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.2f %s", v, units[u]);
}

absl::StatusOr<LoadedModel> LoadModelOrFlavor(const std::string& model_arg, torch::Dtype dtype,
                                              uint64_t seed) {
  LoadedModel out;
  std::error_code ec;
  if (std::filesystem::is_directory(model_arg, ec)) {
    auto model = LoadHfModel(model_arg, dtype);
    if (!model.ok()) return model.status();
    out.model = *model;
    out.source = std::filesystem::absolute(model_arg).lexically_normal().string();
    return out;
  }
  auto config = LlamaConfig::FromFlavor(model_arg);
  if (!config.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model: '", model_arg, "' is neither a checkpoint directory nor a flavor (",
                     absl::StrJoin(LlamaConfig::FlavorNames(), ", "), ")"));
  }
  out.model = LlamaForCausalLM(*config, dtype);
  InitializeWeights(*out.model, seed);
  out.source = model_arg;
  out.from_flavor = true;
  return out;
}

}  // namespace lora
