#include "worker/engine/lora/converter.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "worker/engine/model/tensor_io.h"

namespace lora {
namespace {

bool IsAdapterChild(const std::string& name) {
  return absl::EndsWith(name, ".lora_a") || absl::EndsWith(name, ".lora_b") || name == "lora_a" ||
         name == "lora_b";
}

// Per-module seed, so a module's initial adapter depends only on (seed, name): pipeline stages
// and tensor-parallel ranks that build a subset of the model get the same values.
uint64_t ModuleSeed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h ^ (seed * 0x9E3779B97F4A7C15ULL);
}

std::string SelectorText(const ModuleSelector& s) {
  if (s.is_regex) return absl::StrCat("'", s.regex, "'");
  return absl::StrCat("[", absl::StrJoin(s.names, ", "), "]");
}

}  // namespace

absl::Status ValidateLoraConfig(const LoraConfig& c) {
  if (c.rank <= 0)
    return absl::InvalidArgumentError(absl::StrCat("lora.rank: must be > 0, got ", c.rank));
  if (!(c.alpha > 0) || !std::isfinite(c.alpha)) {
    return absl::InvalidArgumentError(absl::StrCat("lora.alpha: must be > 0, got ", c.alpha));
  }
  if (!(c.dropout >= 0.0 && c.dropout < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("lora.dropout: must be in [0, 1), got ", c.dropout));
  }
  for (const auto& [pattern, rank] : c.rank_pattern) {
    if (rank <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("lora.rank_pattern.", pattern, ": must be > 0, got ", rank));
    }
  }
  for (const auto& [pattern, alpha] : c.alpha_pattern) {
    if (!(alpha > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("lora.alpha_pattern.", pattern, ": must be > 0, got ", alpha));
    }
  }
  LORA_RETURN_IF_ERROR(ModuleMatcher::Create(c.target_modules, c.exclude_modules,
                                             "lora.target_modules", "lora.exclude_modules")
                           .status());
  LORA_RETURN_IF_ERROR(PatternMap<int64_t>::Create(c.rank_pattern, "lora.rank_pattern").status());
  LORA_RETURN_IF_ERROR(PatternMap<double>::Create(c.alpha_pattern, "lora.alpha_pattern").status());
  return absl::OkStatus();
}

void FreezeAllButAdapters(torch::nn::Module& root) {
  for (const auto& item : root.named_parameters(/*recurse=*/true)) {
    const bool adapter = absl::StrContains(item.key(), "lora_a.") ||
                         absl::StrContains(item.key(), "lora_b.") ||
                         absl::EndsWith(item.key(), ".lora_magnitude_vector");
    item.value().set_requires_grad(adapter);
  }
}

std::vector<std::pair<std::string, LinearImpl*>> AdaptedLinears(const torch::nn::Module& root) {
  std::vector<std::pair<std::string, LinearImpl*>> out;
  for (const auto& item : root.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    auto* linear = item.value()->as<LinearImpl>();
    if (linear != nullptr && linear->has_adapter()) out.emplace_back(item.key(), linear);
  }
  return out;
}

absl::StatusOr<ConversionReport> ConvertToLora(torch::nn::Module& root, const LoraConfig& config) {
  LORA_RETURN_IF_ERROR(ValidateLoraConfig(config));
  LORA_ASSIGN_OR_RETURN(ModuleMatcher matcher,
                        ModuleMatcher::Create(config.target_modules, config.exclude_modules,
                                              "lora.target_modules", "lora.exclude_modules"));
  LORA_ASSIGN_OR_RETURN(auto ranks,
                        PatternMap<int64_t>::Create(config.rank_pattern, "lora.rank_pattern"));
  LORA_ASSIGN_OR_RETURN(auto alphas,
                        PatternMap<double>::Create(config.alpha_pattern, "lora.alpha_pattern"));

  // Decide everything before changing anything, so a bad target leaves the model untouched.
  struct Planned {
    std::string name;
    LinearImpl* linear;
    int64_t rank;
    double alpha;
  };
  std::vector<Planned> plan;
  bool any_target = false;
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    if (IsAdapterChild(name)) continue;
    const bool is_output = name == "lm_head" || absl::EndsWith(name, ".lm_head");
    auto* linear = item.value()->as<LinearImpl>();
    // "all-linear" only ever considers Linears; explicit targets must be Linears.
    if (config.target_modules.all_linear() && linear == nullptr) continue;
    if (!matcher.MatchesTarget(name, is_output)) continue;
    any_target = true;
    if (!matcher.Matches(name, is_output)) continue;
    if (linear == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "lora.target_modules: ", SelectorText(config.target_modules), " matches module '", name,
          "' of type ", item.value()->name(), ", which is not a Linear layer"));
    }
    if (linear->has_adapter()) {
      return absl::FailedPreconditionError(
          absl::StrCat("module '", name, "' already has a LoRA adapter"));
    }
    Planned p{name, linear, ranks.Lookup(name).value_or(config.rank),
              alphas.Lookup(name).value_or(config.alpha)};
    plan.push_back(p);
  }
  if (plan.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lora.target_modules: ", SelectorText(config.target_modules),
                     any_target ? " matches only modules removed by lora.exclude_modules"
                                : " matches no module of the model"));
  }

  FreezeAllButAdapters(root);  // freeze everything first, as the torchtitan converter does
  for (const Planned& p : plan) {
    AdapterOptions options;
    options.rank = p.rank;
    options.alpha = p.alpha;
    options.dropout = config.dropout;
    options.use_rslora = config.use_rslora;
    options.use_dora = config.use_dora;
    options.init = config.init;
    options.dtype = config.adapter_dtype;
    options.generator = at::make_generator<at::CPUGeneratorImpl>(ModuleSeed(config.seed, p.name));
    p.linear->AttachAdapter(options);
  }
  FreezeAllButAdapters(root);
  return DescribeAdapters(root);
}

ConversionReport DescribeAdapters(const torch::nn::Module& root) {
  ConversionReport report;
  for (const auto& [name, linear] : AdaptedLinears(root)) {
    WrappedModule m;
    m.name = name;
    m.in_features = linear->options().in_features;
    m.out_features = linear->options().out_features;
    m.rank = linear->rank();
    m.scale = linear->scale();
    m.alpha = linear->alpha();
    report.modules.push_back(m);
  }
  for (const auto& item : root.named_parameters(/*recurse=*/true)) {
    const int64_t n = item.value().numel();
    report.total_parameters += n;
    if (item.value().requires_grad()) report.trainable_parameters += n;
    if (absl::StrContains(item.key(), "lora_a.") || absl::StrContains(item.key(), "lora_b.")) {
      report.adapter_parameters += n;
    }
  }
  return report;
}

uint64_t ConversionReport::AdapterBytes(torch::Dtype dtype) const {
  return static_cast<uint64_t>(adapter_parameters) * c10::elementSize(dtype);
}

nlohmann::json ConversionReport::ToJson(torch::Dtype export_dtype) const {
  nlohmann::json wrapped = nlohmann::json::array();
  for (const WrappedModule& m : modules) {
    wrapped.push_back({{"name", m.name},
                       {"in_features", m.in_features},
                       {"out_features", m.out_features},
                       {"rank", m.rank},
                       {"alpha", m.alpha},
                       {"scale", m.scale}});
  }
  return {{"wrapped_modules", wrapped},
          {"num_wrapped_modules", modules.size()},
          {"trainable_parameters", trainable_parameters},
          {"total_parameters", total_parameters},
          {"adapter_parameters", adapter_parameters},
          {"trainable_percent",
           total_parameters ? 100.0 * trainable_parameters / total_parameters : 0.0},
          {"adapter_bytes", AdapterBytes(export_dtype)}};
}

std::string ConversionReport::ToText(torch::Dtype export_dtype) const {
  std::ostringstream out;
  // Summarize by leaf name so a 32-layer model prints a few lines, not 224.
  std::map<std::string, std::pair<int, int64_t>> by_leaf;  // leaf -> (count, rank of first)
  for (const WrappedModule& m : modules) {
    std::string leaf = m.name.substr(m.name.rfind('.') + 1);
    auto& entry = by_leaf[leaf];
    if (entry.first++ == 0) entry.second = m.rank;
  }
  out << "wrapped modules: " << modules.size() << "\n";
  for (const auto& [leaf, entry] : by_leaf) {
    out << absl::StrFormat("  %-12s x%-4d rank %d\n", leaf, entry.first, entry.second);
  }
  out << absl::StrFormat("trainable params: %d || all params: %d || trainable%%: %.4f\n",
                         trainable_parameters, total_parameters,
                         total_parameters ? 100.0 * trainable_parameters / total_parameters : 0.0);
  out << absl::StrFormat("adapter size: %d bytes (%s)\n", AdapterBytes(export_dtype),
                         FloatDtypeName(export_dtype));
  return out.str();
}

void MergeAdapters(torch::nn::Module& root) {
  for (auto& [name, linear] : AdaptedLinears(root)) linear->Merge();
}

void UnmergeAdapters(torch::nn::Module& root) {
  for (auto& [name, linear] : AdaptedLinears(root)) linear->Unmerge();
}

}  // namespace lora
