#include "worker/engine/lora/peft_adapter.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/model/tensor_io.h"

namespace lora {
namespace {

using json = nlohmann::json;

json NumberJson(double v) {
  if (std::floor(v) == v && std::fabs(v) < 1e15) return static_cast<int64_t>(v);
  return v;
}

template <typename T>
T MostCommon(const std::vector<T>& values) {
  std::map<T, int> counts;
  for (const T& v : values) counts[v]++;
  T best = values.front();
  int best_count = 0;
  for (const auto& [v, c] : counts) {
    if (c > best_count) best = v, best_count = c;
  }
  return best;
}

// The set of modules PEFT would adapt given `targets`, as our converter does.
std::set<std::string> PeftSelection(const std::vector<ModuleInfo>& modules,
                                    const ModuleMatcher& matcher, bool all_linear) {
  std::set<std::string> out;
  for (const ModuleInfo& m : modules) {
    if (all_linear && !m.is_linear) continue;
    if (matcher.Matches(m.name, m.is_output)) out.insert(m.name);
  }
  return out;
}

absl::Status ConfigError(const std::string& path, const std::string& field,
                         const std::string& reason) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", field, ": ", reason));
}

absl::StatusOr<ModuleSelector> ParseSelector(const json& j, const std::string& path,
                                             const std::string& field) {
  if (j.is_string()) return ModuleSelector::Regex(j.get<std::string>());
  if (j.is_array()) {
    std::vector<std::string> names;
    for (const json& e : j) {
      if (!e.is_string()) return ConfigError(path, field, "list entries must be strings");
      names.push_back(e.get<std::string>());
    }
    return ModuleSelector::List(std::move(names));
  }
  if (j.is_null()) return ModuleSelector{};
  return ConfigError(path, field, "must be a list of module names or a regex string");
}

struct AdapterFactors {
  const TensorInfo* a = nullptr;
  const TensorInfo* b = nullptr;
  const TensorInfo* magnitude = nullptr;  // DoRA
};

constexpr char kMagnitudeSuffix[] = ".lora_magnitude_vector";

}  // namespace

std::vector<ModuleInfo> ListModules(const torch::nn::Module& root) {
  std::vector<ModuleInfo> out;
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    const std::string& n = item.key();
    if (absl::EndsWith(n, "lora_a") || absl::EndsWith(n, "lora_b")) continue;
    out.push_back({n, item.value()->as<LinearImpl>() != nullptr,
                   n == "lm_head" || absl::EndsWith(n, ".lm_head")});
  }
  return out;
}

std::vector<AdapterRecord> AdapterRecords(const torch::nn::Module& root) {
  std::vector<AdapterRecord> out;
  for (const auto& [name, linear] : AdaptedLinears(root)) {
    out.push_back({name, linear->rank(), linear->alpha(), linear->use_rslora(),
                   linear->lora_a->weight, linear->lora_b->weight, linear->lora_magnitude});
  }
  return out;
}

std::string PeftTensorKey(const std::string& module_name, char factor) {
  return absl::StrCat(kPeftKeyPrefix, module_name, ".lora_", std::string(1, factor), ".weight");
}

absl::StatusOr<json> PeftConfigJson(const std::vector<AdapterRecord>& adapted,
                                    const std::vector<ModuleInfo>& modules,
                                    const LoraConfig& config,
                                    const std::string& base_model_name_or_path) {
  if (adapted.empty())
    return absl::FailedPreconditionError("the model carries no LoRA adapters to export");
  std::vector<int64_t> ranks;
  std::vector<double> alphas;
  std::set<std::string> adapted_names;
  bool rslora = adapted.front().use_rslora;
  const bool dora = adapted.front().magnitude.defined();
  for (const AdapterRecord& r : adapted) {
    ranks.push_back(r.rank);
    alphas.push_back(r.alpha);
    adapted_names.insert(r.module);
    if (r.use_rslora != rslora) {
      return absl::FailedPreconditionError(
          "adapters mix rsLoRA and plain scaling; PEFT cannot express that");
    }
    if (r.magnitude.defined() != dora) {
      return absl::FailedPreconditionError(
          "adapters mix DoRA and plain LoRA; PEFT cannot express that");
    }
  }
  // Prefer the user's r / lora_alpha; fall back to the most common values when patterns cannot
  // explain the adapters with them.
  auto ranks_map = PatternMap<int64_t>::Create(config.rank_pattern, "rank_pattern");
  auto alphas_map = PatternMap<double>::Create(config.alpha_pattern, "alpha_pattern");
  bool user_patterns_exact = ranks_map.ok() && alphas_map.ok();
  for (const AdapterRecord& r : adapted) {
    if (!user_patterns_exact) break;
    user_patterns_exact = ranks_map->Lookup(r.module).value_or(config.rank) == r.rank &&
                          alphas_map->Lookup(r.module).value_or(config.alpha) == r.alpha;
  }
  const int64_t r = user_patterns_exact ? config.rank : MostCommon(ranks);
  const double alpha = user_patterns_exact ? config.alpha : MostCommon(alphas);

  // Keep the user's selectors when PEFT would reproduce exactly our modules from them;
  // otherwise (an imported adapter, say) name every module explicitly.
  json target_modules, exclude_modules = nullptr;
  auto matcher = ModuleMatcher::Create(config.target_modules, config.exclude_modules);
  if (matcher.ok() &&
      PeftSelection(modules, *matcher, config.target_modules.all_linear()) == adapted_names) {
    if (config.target_modules.is_regex) {
      target_modules = config.target_modules.regex;
    } else {
      std::set<std::string> sorted(config.target_modules.names.begin(),
                                   config.target_modules.names.end());
      target_modules = std::vector<std::string>(sorted.begin(), sorted.end());
    }
    if (!config.exclude_modules.empty()) {
      exclude_modules = config.exclude_modules.is_regex ? json(config.exclude_modules.regex)
                                                        : json(config.exclude_modules.names);
    }
  } else {
    target_modules = std::vector<std::string>(adapted_names.begin(), adapted_names.end());
  }

  json rank_pattern = json::object(), alpha_pattern = json::object();
  if (user_patterns_exact) {
    for (const auto& [k, v] : config.rank_pattern) rank_pattern[k] = v;
    for (const auto& [k, v] : config.alpha_pattern) alpha_pattern[k] = NumberJson(v);
  } else {
    for (const AdapterRecord& rec : adapted) {
      // A full name is a pattern that matches only that module; escape the dots.
      std::string key = absl::StrJoin(absl::StrSplit(rec.module, '.'), "\\.");
      if (rec.rank != r) rank_pattern[key] = rec.rank;
      if (rec.alpha != alpha) alpha_pattern[key] = NumberJson(rec.alpha);
    }
  }

  json j = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model_name_or_path},
      {"r", r},
      {"lora_alpha", NumberJson(alpha)},
      {"lora_dropout", config.dropout},
      {"target_modules", target_modules},
      {"bias", "none"},
      {"use_rslora", rslora},
      {"use_dora", dora},
      {"fan_in_fan_out", false},
      {"modules_to_save", nullptr},
      {"init_lora_weights", config.init == LoraInit::kGaussian ? json("gaussian") : json(true)},
      {"rank_pattern", rank_pattern},
      {"alpha_pattern", alpha_pattern},
      {"inference_mode", true},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"revision", nullptr},
  };
  if (!exclude_modules.is_null()) j["exclude_modules"] = exclude_modules;
  return j;
}

absl::Status WritePeftAdapterFiles(const std::vector<AdapterRecord>& records,
                                   const std::vector<ModuleInfo>& modules, const LoraConfig& config,
                                   const std::string& dir, const PeftExportOptions& options) {
  LORA_ASSIGN_OR_RETURN(json config_json,
                        PeftConfigJson(records, modules, config, options.base_model_name_or_path));
  NamedTensors tensors;
  for (const AdapterRecord& r : records) {
    tensors.emplace_back(PeftTensorKey(r.module, 'A'), r.a);
    tensors.emplace_back(PeftTensorKey(r.module, 'B'), r.b);
    if (r.magnitude.defined()) {
      tensors.emplace_back(absl::StrCat(kPeftKeyPrefix, r.module, kMagnitudeSuffix), r.magnitude);
    }
  }
  LORA_RETURN_IF_ERROR(
      WriteTensors(JoinPath(dir, kPeftWeightsFile), tensors, options.dtype, {{"format", "pt"}}));
  return WriteFileAtomically(JoinPath(dir, kPeftConfigFile), config_json.dump(2) + "\n");
}

absl::Status WritePeftAdapterFiles(const torch::nn::Module& root, const LoraConfig& config,
                                   const std::string& dir, const PeftExportOptions& options) {
  return WritePeftAdapterFiles(AdapterRecords(root), ListModules(root), config, dir, options);
}

absl::Status ExportPeftAdapter(const std::vector<AdapterRecord>& records,
                               const std::vector<ModuleInfo>& modules, const LoraConfig& config,
                               const std::string& dir, const PeftExportOptions& options) {
  LORA_ASSIGN_OR_RETURN(auto staged, StagedDirectory::Create(dir, {kPeftConfigFile}));
  LORA_RETURN_IF_ERROR(WritePeftAdapterFiles(records, modules, config, staged->path(), options));
  return staged->Commit();
}

absl::Status ExportPeftAdapter(const torch::nn::Module& root, const LoraConfig& config,
                               const std::string& dir, const PeftExportOptions& options) {
  return ExportPeftAdapter(AdapterRecords(root), ListModules(root), config, dir, options);
}

absl::StatusOr<PeftConfig> ReadPeftConfig(const std::string& dir) {
  const std::string path = JoinPath(dir, kPeftConfigFile);
  if (!std::filesystem::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat(dir, ": adapter directory does not exist"));
  }
  LORA_ASSIGN_OR_RETURN(json j, ReadJsonFile(path));
  if (!j.is_object()) return ConfigError(path, "(root)", "must be a JSON object");
  auto get = [&](const char* key) -> const json* {
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  };
  PeftConfig out;
  LoraConfig& c = out.lora;
  const json* peft_type = get("peft_type");
  if (peft_type == nullptr || !peft_type->is_string() || peft_type->get<std::string>() != "LORA") {
    return ConfigError(path, "peft_type",
                       "must be \"LORA\" (other PEFT methods are not supported)");
  }
  if (const json* v = get("r")) {
    if (!v->is_number_integer() || v->get<int64_t>() <= 0)
      return ConfigError(path, "r", "must be an integer > 0");
    c.rank = v->get<int64_t>();
  }
  if (const json* v = get("lora_alpha")) {
    if (!v->is_number() || !(v->get<double>() > 0))
      return ConfigError(path, "lora_alpha", "must be a number > 0");
    c.alpha = v->get<double>();
  } else {
    c.alpha = 8;  // PEFT's default
  }
  if (const json* v = get("lora_dropout"); v && !v->is_null()) {
    if (!v->is_number()) return ConfigError(path, "lora_dropout", "must be a number");
    c.dropout = v->get<double>();
  } else {
    c.dropout = 0.0;
  }
  if (const json* v = get("use_rslora"); v && !v->is_null()) {
    if (!v->is_boolean()) return ConfigError(path, "use_rslora", "must be true or false");
    c.use_rslora = v->get<bool>();
  }
  if (const json* v = get("use_dora"); v && !v->is_null()) {
    if (!v->is_boolean()) return ConfigError(path, "use_dora", "must be true or false");
    c.use_dora = v->get<bool>();
  }
  if (const json* v = get("bias");
      v && !v->is_null() && !(v->is_string() && v->get<std::string>() == "none")) {
    return ConfigError(path, "bias", "only \"none\" is supported");
  }
  if (const json* v = get("fan_in_fan_out"); v && v->is_boolean() && v->get<bool>()) {
    return ConfigError(path, "fan_in_fan_out", "must be false for Llama-family models");
  }
  if (const json* v = get("modules_to_save");
      v && !v->is_null() && !(v->is_array() && v->empty())) {
    return ConfigError(path, "modules_to_save", "fully trained extra modules are not supported");
  }
  if (const json* v = get("init_lora_weights"); v && v->is_string()) {
    const std::string init = v->get<std::string>();
    if (init == "gaussian") {
      c.init = LoraInit::kGaussian;
    } else if (absl::StartsWith(init, "pissa") || init == "olora" || init == "corda" ||
               init == "loftq") {
      // These initialisations subtract the adapter's start from the base weights: the adapter
      // only means something on that modified base, which is not the checkpoint we load.
      return ConfigError(path, "init_lora_weights",
                         absl::StrCat("\"", init,
                                      "\" adapters need the base model PEFT modified at "
                                      "initialisation; convert it to a plain LoRA adapter "
                                      "first (PEFT: path_initial_model_for_weight_conversion)"));
    }
  }
  // layers_to_transform / layers_pattern need no reading: the adapted modules are exactly
  // the ones with tensors in the file, so the layers PEFT chose are the layers we adapt.
  if (const json* v = get("target_modules")) {
    LORA_ASSIGN_OR_RETURN(c.target_modules, ParseSelector(*v, path, "target_modules"));
  }
  if (const json* v = get("exclude_modules")) {
    LORA_ASSIGN_OR_RETURN(c.exclude_modules, ParseSelector(*v, path, "exclude_modules"));
  }
  c.rank_pattern.clear();
  if (const json* v = get("rank_pattern"); v && !v->is_null()) {
    if (!v->is_object()) return ConfigError(path, "rank_pattern", "must be an object");
    for (const auto& [k, rv] : v->items()) {
      if (!rv.is_number_integer() || rv.get<int64_t>() <= 0) {
        return ConfigError(path, absl::StrCat("rank_pattern.", k), "must be an integer > 0");
      }
      c.rank_pattern.emplace_back(k, rv.get<int64_t>());
    }
  }
  if (const json* v = get("alpha_pattern"); v && !v->is_null()) {
    if (!v->is_object()) return ConfigError(path, "alpha_pattern", "must be an object");
    for (const auto& [k, av] : v->items()) {
      if (!av.is_number() || !(av.get<double>() > 0)) {
        return ConfigError(path, absl::StrCat("alpha_pattern.", k), "must be a number > 0");
      }
      c.alpha_pattern.emplace_back(k, av.get<double>());
    }
  }
  if (const json* v = get("base_model_name_or_path"); v && v->is_string()) {
    out.base_model_name_or_path = v->get<std::string>();
  }
  return out;
}

// Groups an adapter file's tensors by module: "<prefix><module>.lora_A[.<adapter name>].weight".
namespace {
absl::StatusOr<std::map<std::string, AdapterFactors>> GroupAdapterTensors(
    const SafetensorsFile* file, const std::string& weights_path) {
  std::map<std::string, AdapterFactors> by_module;
  for (const TensorInfo& t : file->tensors()) {
    auto fail = [&](const std::string& why) {
      return absl::InvalidArgumentError(
          absl::StrCat(weights_path, ": tensor '", t.name, "': ", why));
    };
    if (!absl::StartsWith(t.name, kPeftKeyPrefix))
      return fail(absl::StrCat("key does not start with '", kPeftKeyPrefix, "'"));
    std::string rest = t.name.substr(std::strlen(kPeftKeyPrefix));
    if (absl::EndsWith(rest, kMagnitudeSuffix)) {
      by_module[rest.substr(0, rest.size() - std::strlen(kMagnitudeSuffix))].magnitude = &t;
      continue;
    }
    std::vector<std::string> parts = absl::StrSplit(rest, '.');
    auto factor_at = std::find_if(parts.begin(), parts.end(), [](const std::string& p) {
      return p == "lora_A" || p == "lora_B";
    });
    if (factor_at == parts.end() || parts.back() != "weight" || factor_at == parts.begin() ||
        parts.end() - factor_at > 3) {
      if (absl::StrContains(rest, "lora_embedding"))
        return fail("embedding LoRA adapters are not supported");
      if (absl::StrContains(rest, "lora_magnitude"))
        return fail("DoRA magnitude vectors are not supported");
      return fail("not a LoRA factor (expected <module>.lora_A.weight or <module>.lora_B.weight)");
    }
    std::string module = absl::StrJoin(parts.begin(), factor_at, ".");
    AdapterFactors& f = by_module[module];
    (*factor_at == "lora_A" ? f.a : f.b) = &t;
  }
  if (by_module.empty())
    return absl::InvalidArgumentError(absl::StrCat(weights_path, ": holds no LoRA tensors"));

  return by_module;
}

// Opens adapter_model.safetensors (with a clear message for pickle-only adapters).
absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenAdapterWeights(const std::string& dir) {
  const std::string weights_path = JoinPath(dir, kPeftWeightsFile);
  if (!std::filesystem::exists(weights_path)) {
    if (std::filesystem::exists(JoinPath(dir, "adapter_model.bin"))) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir,
                       ": adapter_model.bin (pickle) is not supported; save the adapter with "
                       "safe_serialization=True to get "
                       "adapter_model.safetensors"));
    }
    return absl::NotFoundError(absl::StrCat(weights_path, ": missing"));
  }
  return SafetensorsFile::Open(weights_path);
}

}  // namespace

absl::StatusOr<std::vector<AdapterRecord>> ReadPeftAdapterRecords(const std::string& dir,
                                                                  PeftConfig* config_out) {
  LORA_ASSIGN_OR_RETURN(PeftConfig config, ReadPeftConfig(dir));
  const std::string weights_path = JoinPath(dir, kPeftWeightsFile);
  LORA_ASSIGN_OR_RETURN(auto file, OpenAdapterWeights(dir));
  LORA_ASSIGN_OR_RETURN(auto ranks,
                        PatternMap<int64_t>::Create(config.lora.rank_pattern, "rank_pattern"));
  LORA_ASSIGN_OR_RETURN(auto alphas,
                        PatternMap<double>::Create(config.lora.alpha_pattern, "alpha_pattern"));
  LORA_ASSIGN_OR_RETURN(auto by_module, GroupAdapterTensors(file.get(), weights_path));
  std::vector<AdapterRecord> out;
  for (const auto& [module, f] : by_module) {
    if (f.a == nullptr || f.b == nullptr || f.a->shape.size() != 2 || f.b->shape.size() != 2 ||
        f.b->shape[1] != f.a->shape[0]) {
      return absl::InvalidArgumentError(
          absl::StrCat(weights_path, ": module '", module, "' has no matching lora_A/lora_B pair"));
    }
    AdapterRecord r;
    r.module = module;
    r.rank = f.a->shape[0];
    if (ranks.Lookup(module).value_or(config.lora.rank) != r.rank) {
      return absl::InvalidArgumentError(absl::StrCat(weights_path, ": module '", module, "': rank ",
                                                     r.rank,
                                                     " disagrees with adapter_config.json"));
    }
    r.alpha = alphas.Lookup(module).value_or(config.lora.alpha);
    r.use_rslora = config.lora.use_rslora;
    LORA_ASSIGN_OR_RETURN(r.a, ReadTensor(*file, *f.a, torch::kFloat32));
    LORA_ASSIGN_OR_RETURN(r.b, ReadTensor(*file, *f.b, torch::kFloat32));
    if (f.magnitude != nullptr) {
      LORA_ASSIGN_OR_RETURN(r.magnitude, ReadTensor(*file, *f.magnitude, torch::kFloat32));
    }
    out.push_back(std::move(r));
  }
  if (config_out) *config_out = std::move(config);
  return out;
}

absl::StatusOr<ImportedAdapter> ImportPeftAdapter(torch::nn::Module& root, const std::string& dir,
                                                  torch::Dtype adapter_dtype) {
  LORA_ASSIGN_OR_RETURN(PeftConfig config, ReadPeftConfig(dir));
  const std::string weights_path = JoinPath(dir, kPeftWeightsFile);
  LORA_ASSIGN_OR_RETURN(auto file, OpenAdapterWeights(dir));
  LORA_ASSIGN_OR_RETURN(auto ranks,
                        PatternMap<int64_t>::Create(config.lora.rank_pattern, "rank_pattern"));
  LORA_ASSIGN_OR_RETURN(auto alphas,
                        PatternMap<double>::Create(config.lora.alpha_pattern, "alpha_pattern"));

  LORA_ASSIGN_OR_RETURN(auto by_module, GroupAdapterTensors(file.get(), weights_path));
  // Resolve and check every module before attaching anything.
  std::map<std::string, LinearImpl*> linears;
  for (const auto& item : root.named_modules("", false)) {
    if (auto* l = item.value()->as<LinearImpl>()) linears[item.key()] = l;
  }
  for (const auto& [module, f] : by_module) {
    auto where = [&](const TensorInfo* t) {
      return absl::StrCat(weights_path, ": tensor '", t->name, "': ");
    };
    if (f.a == nullptr || f.b == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(weights_path, ": module '", module,
                                                     "' has lora_",
                                                     f.a ? "A but no lora_B" : "B but no lora_A"));
    }
    auto it = linears.find(module);
    if (it == linears.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where(f.a), "the model has no Linear module '", module, "'"));
    }
    const LinearImpl& l = *it->second;
    if (f.a->shape.size() != 2 || f.b->shape.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(where(f.a), "LoRA factors must be 2-D"));
    }
    const int64_t rank = f.a->shape[0];
    if (f.a->shape[1] != l.options().in_features || rank <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where(f.a), "shape [", absl::StrJoin(f.a->shape, ", "),
                       "] does not fit in_features ", l.options().in_features));
    }
    if (f.b->shape[0] != l.options().out_features || f.b->shape[1] != rank) {
      return absl::InvalidArgumentError(
          absl::StrCat(where(f.b), "shape [", absl::StrJoin(f.b->shape, ", "), "], expected [",
                       l.options().out_features, ", ", rank, "]"));
    }
    const int64_t configured = ranks.Lookup(module).value_or(config.lora.rank);
    if (configured != rank) {
      return absl::InvalidArgumentError(absl::StrCat(where(f.a), "rank ", rank,
                                                     " disagrees with adapter_config.json (",
                                                     configured, " for this module)"));
    }
    if ((f.magnitude != nullptr) != config.lora.use_dora) {
      return absl::InvalidArgumentError(absl::StrCat(
          weights_path, ": module '", module, "': ",
          config.lora.use_dora ? "use_dora is true but it has no lora_magnitude_vector"
                               : "has a lora_magnitude_vector but use_dora is not true"));
    }
    if (f.magnitude != nullptr &&
        (f.magnitude->shape.size() != 1 || f.magnitude->shape[0] != l.options().out_features)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where(f.magnitude), "shape [", absl::StrJoin(f.magnitude->shape, ", "),
                       "], expected [", l.options().out_features, "]"));
    }
    if (l.has_adapter() && l.rank() != rank) {
      return absl::FailedPreconditionError(
          absl::StrCat("module '", module, "' already has an adapter of rank ", l.rank()));
    }
  }

  FreezeAllButAdapters(root);
  for (const auto& [module, f] : by_module) {
    LinearImpl* l = linears[module];
    if (!l->has_adapter()) {
      AdapterOptions options;
      options.rank = f.a->shape[0];
      options.alpha = alphas.Lookup(module).value_or(config.lora.alpha);
      options.dropout = config.lora.dropout;
      options.use_rslora = config.lora.use_rslora;
      options.use_dora = config.lora.use_dora;
      options.dtype = adapter_dtype;
      l->AttachAdapter(options);
    }
    LORA_RETURN_IF_ERROR(CopyIntoTensor(*file, *f.a, l->lora_a->weight));
    LORA_RETURN_IF_ERROR(CopyIntoTensor(*file, *f.b, l->lora_b->weight));
    if (f.magnitude != nullptr) {
      if (!l->use_dora()) {
        return absl::FailedPreconditionError(
            absl::StrCat("module '", module, "' already has a plain LoRA adapter"));
      }
      LORA_RETURN_IF_ERROR(CopyIntoTensor(*file, *f.magnitude, l->lora_magnitude));
    }
  }
  FreezeAllButAdapters(root);
  ImportedAdapter out;
  out.config = std::move(config);
  out.report = DescribeAdapters(root);
  return out;
}

}  // namespace lora
