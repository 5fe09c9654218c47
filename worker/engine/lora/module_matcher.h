// PEFT's rules for choosing modules by qualified name (no LibTorch here, so it is cheap to test).
//
// A list selector matches a module whose name equals an entry or ends with "." + entry; a
// string selector is a regular expression (RE2, common/user_pattern.h) that must match the
// whole name; the special string
// "all-linear" matches every Linear except the output layer (lm_head).
//
//   LORA_ASSIGN_OR_RETURN(auto m, ModuleMatcher::Create(targets, excludes));
//   if (m.Matches("model.layers.0.self_attn.q_proj")) ...
//
// rank_pattern / alpha_pattern keys use PEFT's pattern rule: key K matches name N when
// `(.*\.)?(K)$` matches N entirely; the first key that matches wins.
#ifndef LORA_WORKER_ENGINE_LORA_MODULE_MATCHER_H_
#define LORA_WORKER_ENGINE_LORA_MODULE_MATCHER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/user_pattern.h"

namespace lora {

struct ModuleSelector {
  bool is_regex = false;
  std::vector<std::string> names;  // when !is_regex
  std::string regex;               // when is_regex

  static ModuleSelector List(std::vector<std::string> names) {
    return {false, std::move(names), ""};
  }
  static ModuleSelector Regex(std::string regex) { return {true, {}, std::move(regex)}; }
  bool empty() const { return is_regex ? regex.empty() : names.empty(); }
  bool all_linear() const { return is_regex && regex == "all-linear"; }
};

class ModuleMatcher {
 public:
  // `field` names the option in error messages (e.g. "lora.target_modules").
  static absl::StatusOr<ModuleMatcher> Create(const ModuleSelector& targets,
                                              const ModuleSelector& excludes,
                                              const std::string& target_field = "target_modules",
                                              const std::string& exclude_field = "exclude_modules");
  // Whether the module named `name` is targeted and not excluded. `is_output_layer` marks
  // lm_head for "all-linear".
  bool Matches(const std::string& name, bool is_output_layer = false) const;
  // Whether `name` is selected by `targets` alone (before exclusion).
  bool MatchesTarget(const std::string& name, bool is_output_layer = false) const;

 private:
  static bool SelectorMatches(const ModuleSelector& s, const std::optional<UserPattern>& re,
                              const std::string& name, bool is_output_layer);
  ModuleSelector targets_, excludes_;
  std::optional<UserPattern> target_re_, exclude_re_;
};

template <typename T>
class PatternMap {
 public:
  static absl::StatusOr<PatternMap<T>> Create(std::vector<std::pair<std::string, T>> patterns,
                                              const std::string& field);
  // The value of the first pattern matching `name`, or nullopt.
  std::optional<T> Lookup(const std::string& name) const;
  const std::vector<std::pair<std::string, T>>& patterns() const { return patterns_; }

 private:
  std::vector<std::pair<std::string, T>> patterns_;
  std::vector<UserPattern> regexes_;
};

extern template class PatternMap<int64_t>;
extern template class PatternMap<double>;

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_LORA_MODULE_MATCHER_H_
