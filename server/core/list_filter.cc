#include "server/core/list_filter.h"

#include <algorithm>
#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lora::server {
namespace {

// Splits on " AND " outside double quotes.
absl::StatusOr<std::vector<std::string>> Terms(const std::string& filter) {
  std::vector<std::string> out;
  std::string current;
  bool quoted = false;
  for (size_t i = 0; i < filter.size(); ++i) {
    const char c = filter[i];
    if (c == '"' && (i == 0 || filter[i - 1] != '\\')) quoted = !quoted;
    if (!quoted && filter.compare(i, 5, " AND ") == 0) {
      out.push_back(current);
      current.clear();
      i += 4;
      continue;
    }
    current += c;
  }
  if (quoted) return absl::InvalidArgumentError("filter: unterminated quoted string");
  out.push_back(current);
  return out;
}

absl::StatusOr<std::string> Value(absl::string_view raw, const std::string& term) {
  raw = absl::StripAsciiWhitespace(raw);
  if (raw.empty())
    return absl::InvalidArgumentError(absl::StrCat("filter: \"", term, "\": no value"));
  if (raw.front() != '"') {
    for (char c : raw) {
      if (std::isspace(static_cast<unsigned char>(c)) || c == '"' || c == '=' || c == ':')
        return absl::InvalidArgumentError(
            absl::StrCat("filter: \"", term, "\": quote a value with spaces or symbols"));
    }
    return std::string(raw);
  }
  if (raw.size() < 2 || raw.back() != '"')
    return absl::InvalidArgumentError(absl::StrCat("filter: \"", term, "\": unterminated string"));
  std::string out;
  for (size_t i = 1; i + 1 < raw.size(); ++i) {
    if (raw[i] == '\\' && i + 2 < raw.size()) ++i;
    out += raw[i];
  }
  return out;
}

}  // namespace

bool JobFilter::Matches(const lora::v1::Job& job) const {
  if (!states.empty() && std::find(states.begin(), states.end(), job.state()) == states.end())
    return false;
  if (!kinds.empty() && std::find(kinds.begin(), kinds.end(), job.kind()) == kinds.end())
    return false;
  const auto& labels = job.spec().job().labels();
  for (const auto& [k, v] : label_equals) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  for (const std::string& k : label_present) {
    if (labels.find(k) == labels.end()) return false;
  }
  return true;
}

absl::StatusOr<JobFilter> ParseJobFilter(const std::string& filter) {
  JobFilter f;
  if (absl::StripAsciiWhitespace(filter).empty()) return f;
  if (filter.size() > kMaxFilterBytes)
    return absl::InvalidArgumentError(
        absl::StrCat("filter: longer than ", kMaxFilterBytes, " bytes"));
  auto terms = Terms(filter);
  if (!terms.ok()) return terms.status();
  if (terms->size() > kMaxFilterTerms)
    return absl::InvalidArgumentError(
        absl::StrCat("filter: more than ", kMaxFilterTerms, " terms"));
  for (const std::string& raw : *terms) {
    const std::string term(absl::StripAsciiWhitespace(raw));
    const size_t eq = term.find('=');
    const size_t has = term.find(":*");
    if (absl::StartsWith(term, "labels.") && has != std::string::npos && eq == std::string::npos &&
        absl::StripAsciiWhitespace(term.substr(has + 2)).empty()) {
      const std::string key(absl::StripAsciiWhitespace(term.substr(7, has - 7)));
      if (key.empty()) return absl::InvalidArgumentError("filter: \"" + term + "\": no label key");
      f.label_present.insert(key);
      continue;
    }
    if (eq == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("filter: \"", term,
                       "\": expected labels.KEY = VALUE, labels.KEY:*, state = STATE or "
                       "kind = KIND"));
    }
    const std::string field(absl::StripAsciiWhitespace(term.substr(0, eq)));
    auto value = Value(term.substr(eq + 1), term);
    if (!value.ok()) return value.status();
    if (absl::StartsWith(field, "labels.") && field.size() > 7) {
      f.label_equals[field.substr(7)] = *value;
    } else if (field == "state") {
      lora::v1::JobState state;
      if (!lora::v1::JobState_Parse(*value, &state) || state == lora::v1::JOB_STATE_UNSPECIFIED)
        return absl::InvalidArgumentError(absl::StrCat("filter: \"", term, "\": unknown state"));
      f.states.push_back(state);
    } else if (field == "kind") {
      lora::v1::JobKind kind;
      if (!lora::v1::JobKind_Parse(*value, &kind) &&
          !lora::v1::JobKind_Parse("JOB_KIND_" + *value, &kind)) {
        return absl::InvalidArgumentError(absl::StrCat("filter: \"", term, "\": unknown kind"));
      }
      f.kinds.push_back(kind);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("filter: \"", term, "\": can filter on labels.KEY, state and kind only"));
    }
  }
  return f;
}

absl::StatusOr<bool> ParseOrderByAscending(const std::string& order_by) {
  std::vector<std::string> words =
      absl::StrSplit(absl::StripAsciiWhitespace(order_by), ' ', absl::SkipEmpty());
  if (words.empty()) return false;
  if (words[0] != "create_time" || words.size() > 2)
    return absl::InvalidArgumentError("order_by: only \"create_time [asc|desc]\" is supported");
  if (words.size() == 1 || words[1] == "asc") return true;
  if (words[1] == "desc") return false;
  return absl::InvalidArgumentError("order_by: only \"create_time [asc|desc]\" is supported");
}

}  // namespace lora::server
