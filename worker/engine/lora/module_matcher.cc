#include "worker/engine/lora/module_matcher.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lora {
namespace {

absl::StatusOr<std::optional<UserPattern>> CompileSelector(const ModuleSelector& s,
                                                           const std::string& field) {
  if (!s.is_regex || s.all_linear() || s.regex.empty()) return std::optional<UserPattern>();
  LORA_ASSIGN_OR_RETURN(UserPattern re, UserPattern::Compile(s.regex, field));
  return std::optional<UserPattern>(std::move(re));
}

}  // namespace

absl::StatusOr<ModuleMatcher> ModuleMatcher::Create(const ModuleSelector& targets,
                                                    const ModuleSelector& excludes,
                                                    const std::string& target_field,
                                                    const std::string& exclude_field) {
  if (targets.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(target_field, ": must name at least one module"));
  }
  for (const auto* s : {&targets, &excludes}) {
    for (const std::string& n : s->names) {
      if (n.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(s == &targets ? target_field : exclude_field,
                                                       ": empty module name in the list"));
      }
    }
  }
  ModuleMatcher m;
  m.targets_ = targets;
  m.excludes_ = excludes;
  auto t = CompileSelector(targets, target_field);
  if (!t.ok()) return t.status();
  m.target_re_ = std::move(*t);
  auto e = CompileSelector(excludes, exclude_field);
  if (!e.ok()) return e.status();
  m.exclude_re_ = std::move(*e);
  return m;
}

bool ModuleMatcher::SelectorMatches(const ModuleSelector& s, const std::optional<UserPattern>& re,
                                    const std::string& name, bool is_output_layer) {
  if (s.empty()) return false;
  if (s.all_linear()) return !is_output_layer;
  if (s.is_regex) return re->FullMatch(name);
  for (const std::string& entry : s.names) {
    if (name == entry || absl::EndsWith(name, absl::StrCat(".", entry))) return true;
  }
  return false;
}

bool ModuleMatcher::MatchesTarget(const std::string& name, bool is_output_layer) const {
  return SelectorMatches(targets_, target_re_, name, is_output_layer);
}

bool ModuleMatcher::Matches(const std::string& name, bool is_output_layer) const {
  return MatchesTarget(name, is_output_layer) &&
         !SelectorMatches(excludes_, exclude_re_, name, /*is_output_layer=*/false);
}

template <typename T>
absl::StatusOr<PatternMap<T>> PatternMap<T>::Create(std::vector<std::pair<std::string, T>> patterns,
                                                    const std::string& field) {
  PatternMap<T> m;
  for (const auto& [key, value] : patterns) {
    if (key.size() > kMaxUserPatternBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": a key of ", key.size(), " bytes; at most ", kMaxUserPatternBytes));
    }
    auto re =
        UserPattern::Compile(absl::StrCat("(.*\\.)?(", key, ")"), absl::StrCat(field, ".", key));
    if (!re.ok()) return re.status();
    m.regexes_.push_back(std::move(*re));
  }
  m.patterns_ = std::move(patterns);
  return m;
}

template <typename T>
std::optional<T> PatternMap<T>::Lookup(const std::string& name) const {
  for (size_t i = 0; i < patterns_.size(); ++i) {
    if (regexes_[i].FullMatch(name)) return patterns_[i].second;
  }
  return std::nullopt;
}

template class PatternMap<int64_t>;
template class PatternMap<double>;

}  // namespace lora
